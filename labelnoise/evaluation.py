"""The evaluation of a pipeline's outputs: test accuracy of the student (final and best-clean checkpoints) and of the
label-corrected model, the noise summary, noise detection by the student's per-example scores, the label-issues
table, the noise estimate against the truth, and their figures. Never chooses anything on test data.

The true train labels and the corruption mask are read here only (the evaluation path); without them (a user's
own noisy data, ``data.truth: false``) everything measured against them is left out (NaN in the metrics, null in
the report) and ``notes`` says so; without a labelled test split so are the test accuracies.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from labelnoise import metrics, plots
from labelnoise.datasets import Prepared
from labelnoise.engine import predict_logits
from labelnoise.label_issues import LabelIssues, flag_quality, rank_label_issues
from labelnoise.methods import display_name, get_method, label_scores, method_names
from labelnoise.noise import NoisyLabels, realised_transition
from labelnoise.views import make_train_view, true_train_labels

# Metrics that also go on the pipeline's parent run: the headline numbers `cli.py compare` reads.
HEADLINE = ("test_acc", "test_acc_best_clean", "best_epoch", "noise_realised_rate", "noisy_label_acc",
            "detection_auroc", "corrected_test_acc", "recovered_label_acc", "estimated_rate", "estimated_rate_error")
DETECTION = ("detection_auroc", "detection_precision", "detection_recall", "detection_flagged_rate", "detection_epoch",
             "weight_mean_clean", "weight_mean_corrupted")
CORRECTION = ("label_acc_before", "recovered_label_acc")  # copied from the correction report (NaN when absent)
GRID = 24  # images in the label-issues figure
MODELS = ("final", "best_clean", "corrected")  # the student's last epoch, its best clean-subset epoch, label-corrected


@dataclass(frozen=True)
class Student:
    """What the student's record says it was (its ``config``: the method and its params, the mentor's kind, the
    recipe's epochs), for names, notes and figures."""

    method: str
    params: Mapping[str, Any]  # the method's params block as trained (empty for a method without one)
    mentor_kind: str | None
    epochs: int
    model: str

    @classmethod
    def from_record(cls, record: Mapping[str, Any], *, method: str = "") -> Student:
        """From the student's model record; ``method``: the one its per-example records name, where they do."""
        config = record.get("config") or {}
        student = config.get("student") or {}
        method = method or str(student.get("method", "?"))
        return cls(method=method, params=student.get(method) or {},
                   mentor_kind=(config.get("mentor") or {}).get("kind"),
                   epochs=int((config.get("train") or {}).get("epochs", record.get("epoch", 0))),
                   model=str(record.get("model_name", "?")))

    @property
    def variant(self) -> str:
        """The table name: "CE", "SPADE-DD", ... (a method no longer registered keeps its name)."""
        return display_name(self.method, self.mentor_kind)


@dataclass
class Evaluation:
    """What :func:`evaluate` measures: ``scalars`` (the metrics, NaN where undefined), ``report`` (metrics.json),
    the label issues and who suggested their labels, and what the figures draw."""

    scalars: dict[str, float]
    report: dict[str, Any]
    classes: list[str]
    issues: LabelIssues
    suggested_by: str
    scored: bool  # the method scores every label: detection and the scores' figure apply
    preds: dict[str, np.ndarray]  # MODELS → (N_test,) predicted classes
    per_class: dict[str, np.ndarray]  # MODELS → (K,) test accuracy per class
    epochs: dict[str, int]  # MODELS → the epoch of the checkpoint
    train_images: np.ndarray  # (n,) the noisy train examples' indices in the dataset (the label issues' rows)
    true_transition: np.ndarray | None  # (K, K) the realised channel, where the truth and an estimate exist
    estimate: dict[str, Any]
    estimate_errors: dict[str, dict[str, float]]
    label_rate: float
    what: str  # the setting in a line, for figure titles

    @property
    def logged(self) -> dict[str, float]:
        """The finite metrics, and test accuracy per class (``test_acc_class/<class>``): what MLflow logs."""
        return {**{k: v for k, v in self.scalars.items() if math.isfinite(v)},
                **{f"test_acc_class/{_metric_key(c)}": float(a) for c, a in zip(self.classes, self.per_class["final"],
                                                                                 strict=True) if math.isfinite(a)}}


def read_curves(path: str | Path) -> dict[str, np.ndarray]:
    """The training stage's per-epoch CSV as column name → (E,) float array (blank cells → NaN)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: no epochs recorded")
    return {c: np.array([float(r[c]) if r[c] not in ("", None) else math.nan for r in rows]) for c in rows[0]}


def _metric_key(name: str) -> str:
    """A class name as an MLflow metric key (letters, digits, _ - . / and spaces survive)."""
    return re.sub(r"[^\w\-./ ]", "_", name)


def detection(weights: Mapping[str, Any], mask: np.ndarray, *, threshold: float) -> dict[str, float]:
    """Noise detection by the last recorded epoch's weights (E-th row of ``weights["weight"]``, (N,)) against
    the corruption ``mask`` (N,): detection_* from :func:`labelnoise.metrics.detection_quality` (a low weight
    flags a corrupted label) over the examples seen that epoch, and the mean weight of each group."""
    v = np.asarray(weights["weight"][-1], dtype=float)  # (N,)
    if v.shape != mask.shape:
        raise ValueError(f"the student's records hold {v.size} weights for {mask.size} train examples (re-run "
                         "train_student)")
    seen = np.isfinite(v)
    q = metrics.detection_quality(v[seen], mask[seen], threshold=threshold)
    return {
        **{f"detection_{k}": float(x) for k, x in q.items()},
        "detection_epoch": float(weights["epochs"][-1]),
        "weight_mean_clean": float(v[seen & ~mask].mean()) if (seen & ~mask).any() else math.nan,
        "weight_mean_corrupted": float(v[seen & mask].mean()) if (seen & mask).any() else math.nan,
    }


def correction_summary(report: Mapping[str, Any]) -> dict[str, float]:
    """``label_acc_before`` and ``recovered_label_acc`` from the correction stage's report (NaN when null)."""
    return {key: float(report[key]) if report.get(key) is not None else math.nan for key in CORRECTION}


def _nanmean(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if np.isfinite(values).any() else math.nan


def evaluate(prepared: Prepared, noisy: NoisyLabels, *, models: Mapping[str, tuple[nn.Module, Mapping[str, Any]]],
             student: Student, weights: Mapping[str, Any], soft_labels: np.ndarray | None,
             correction: Mapping[str, Any], estimate: Mapping[str, Any] | None, noise: Mapping[str, Any],
             batch_size: int, threshold: float, device: torch.device) -> Evaluation:
    """Measure a pipeline's outputs. ``models``: MODELS → (network, its record: ``epoch``, ``clean_acc``);
    ``weights``: the student's per-example records; ``soft_labels`` (n, K): label correction's (None: the
    student's own belief suggests the labels); ``correction``, ``estimate`` (None: not run), ``noise``: the
    reports of stages correct_labels, estimate_noise and inject_noise; ``threshold``: a score below it flags a
    label (detection)."""
    classes, k = list(prepared.classes), len(prepared.classes)
    if prepared.test_idx.size == 0:
        raise ValueError("the test split is empty")
    x_test = torch.from_numpy(prepared.images[prepared.test_idx])  # (N, C, H, W) uint8
    y_test = prepared.labels[prepared.test_idx]  # (N,)
    true_train = true_train_labels(prepared, noisy)  # the evaluation path's read; None without true train labels
    truth, test_known = true_train is not None, prepared.trusted(prepared.test_idx)
    if truth and noisy.labels.shape != true_train.shape:
        raise ValueError(f"{noisy.labels.size} noisy labels for {true_train.size} train samples")
    mask = noisy.mask if truth else None  # which labels are wrong: known only with true labels
    notes = [*([] if truth else ["no true train labels (data.truth: false): the noise rate, noise detection, label "
                                 "recovery and the label-issue flags' precision and recall are not reported"]),
             *([] if test_known else ["no labelled test split (data.truth: false and none in the data): test "
                                      "accuracies are not reported"])]

    # ---- predictions on test (reported only: selection happened in training)
    preds = {name: predict_logits(model, x_test, batch_size=batch_size, device=device).argmax(dim=1).cpu().numpy()
             for name, (model, _) in models.items()}

    # ---- the student's per-example scores (the mentor's v, cleanlab's label quality) for a method that scores
    # labels; for another (ce: all ones) detection does not apply
    score = label_scores(student.method, weights)
    scored = score is not None
    found = detection(weights, mask, threshold=threshold) if scored and mask is not None else dict.fromkeys(
        DETECTION, math.nan)

    # ---- label issues: every train label ranked by how little the pipeline believes it (needs no truth)
    view = make_train_view(prepared, noisy)  # the train images as training saw them (open-set: replaced)
    if soft_labels is not None:
        probs, suggested_by = soft_labels, "label correction"
    else:
        probs = torch.softmax(predict_logits(models["final"][0], view.x_train, batch_size=batch_size,
                                             device=device), dim=1).numpy()
        suggested_by = "the student"
    issues = rank_label_issues(noisy.labels, probs, score=score)
    flags = (flag_quality(issues, mask) if mask is not None  # against the corruption mask (evaluation only)
             else {"flagged": float(issues.flagged.sum()), "precision": math.nan, "recall": math.nan})

    # ---- the noise estimate (made without the truth) against the truth, where it exists
    estimate = dict(estimate) if estimate is not None else {"use": None, "rate": math.nan, "estimates": {}}
    true_t = realised_transition(true_train, noisy.labels, k) if truth and estimate["estimates"] else None
    label_rate = float((noisy.labels != true_train).mean()) if truth and true_train.size else math.nan
    errors = {name: {"rate": est["rate"], "rate_error": est["rate"] - label_rate,
                     "transition_mae": float(np.abs(np.asarray(est["transition"]) - true_t).mean())}
              for name, est in estimate["estimates"].items()} if truth else {}
    chosen = errors.get(estimate["use"], {})

    # ---- metrics
    per_class = {n: metrics.per_class_accuracy(y_test, p, num_classes=k) if test_known else np.full(k, math.nan)
                 for n, p in preds.items()}  # (K,) each
    realised = (float(mask.mean()) if mask.size else 0.0) if mask is not None else math.nan
    test_accuracy = metrics.accuracy if test_known else lambda y, p: math.nan  # noqa: E731
    info = {name: record for name, (_, record) in models.items()}
    scalars: dict[str, float] = {
        "test_acc": test_accuracy(y_test, preds["final"]),
        "test_acc_best_clean": test_accuracy(y_test, preds["best_clean"]),
        "best_epoch": int(info["best_clean"]["epoch"]),
        "final_epoch": int(info["final"]["epoch"]),
        "clean_acc_best": float(info["best_clean"].get("clean_acc", math.nan)),
        "clean_acc_final": float(info["final"].get("clean_acc", math.nan)),
        "test_acc_class_mean": _nanmean(per_class["final"]),
        "corrected_test_acc": test_accuracy(y_test, preds["corrected"]),
        "corrected_test_acc_class_mean": _nanmean(per_class["corrected"]),
        **correction_summary(correction),
        "noise_realised_rate": realised,
        "noisy_label_acc": metrics.label_accuracy(noisy.labels, true_train) if truth else math.nan,  # 1 - rate
        "n_train": int(noisy.labels.size),
        "n_corrupted": int(mask.sum()) if mask is not None else math.nan,
        "n_test": int(y_test.size),
        **found,
        "label_issues_flagged": flags["flagged"],
        "label_issues_precision": flags["precision"],
        "label_issues_recall": flags["recall"],
        "estimated_rate": float(estimate["rate"]),
        "estimated_rate_error": chosen.get("rate_error", math.nan),  # estimate − the labels' true rate
        "estimated_transition_mae": chosen.get("transition_mae", math.nan),  # mean |T̂ − T| over K x K
    }
    report = {
        "method": student.method,
        **scalars,
        **({"notes": notes} if notes else {}),  # what is left out, and why
        "noise_estimate": {"use": estimate["use"], "label_noise_rate": label_rate, "estimators": errors,
                           "fit": estimate.get("fit")},  # the misfit check (None: not run)
        "per_class": dict(zip(classes, per_class["final"], strict=True)),
        "per_class_best_clean": dict(zip(classes, per_class["best_clean"], strict=True)),
        "per_class_corrected": dict(zip(classes, per_class["corrected"], strict=True)),
    }
    flipped = f"{realised:.0%} flipped" if truth else "noise rate unknown"
    what = f"{prepared.dataset} · {noise.get('kind', '?')} noise ({flipped}) · {student.method} / {student.model}"
    return Evaluation(scalars=scalars, report=report, classes=classes, issues=issues, suggested_by=suggested_by,
                      scored=bool(scored), preds=preds, per_class=per_class,
                      epochs={name: int(record["epoch"]) for name, record in info.items()},
                      train_images=prepared.train_idx[noisy.positions(len(prepared.train_idx))],
                      true_transition=true_t, estimate=estimate, estimate_errors=errors, label_rate=label_rate,
                      what=what)


def figures(ev: Evaluation, out: Path, *, prepared: Prepared, noisy: NoisyLabels, curves: Mapping[str, np.ndarray],
            weights: Mapping[str, Any], student: Student, threshold: float) -> list[Path]:
    """The evaluation's PNGs in the folder ``out``: the test confusion and per-class accuracy (with a labelled test
    split), the training curves, the estimated transition matrices beside the true one (with the truth), the most
    suspicious train images, and the scores against the loss (a scoring method, with the truth). Returns them."""
    classes, what, k = list(prepared.classes), ev.what, len(prepared.classes)
    y_test = prepared.labels[prepared.test_idx]
    written = [] if not prepared.trusted(prepared.test_idx) else [
        plots.plot_matrix(metrics.normalized_confusion_matrix(y_test, ev.preds["final"], num_classes=k),
                          out / "confusion.png", labels=classes, xlabel="predicted class", ylabel="true class",
                          title=f"Test confusion, final model (rows sum to 1)\n{what}"),
        plots.plot_per_class({f"student final, ep {ev.epochs['final']}": ev.per_class["final"],
                              f"student best-clean, ep {ev.epochs['best_clean']}": ev.per_class["best_clean"],
                              f"label-corrected, ep {ev.epochs['corrected']}": ev.per_class["corrected"]},
                             out / "per_class.png", labels=classes, title=f"Per-class test accuracy: {what}"),
    ]
    written.append(plots.plot_curves(curves, out / "curves.png", title=f"Training: {what}",
                                     best_epoch=ev.scalars["best_epoch"]))
    if ev.true_transition is not None:  # the estimates beside the truth
        written.append(plots.plot_matrices(
            {f"true (rate {ev.label_rate:.3f})": ev.true_transition,
             **{f"{name} (rate {e['rate']:.3f}, MAE {e['transition_mae']:.3f})": np.asarray(
                 ev.estimate["estimates"][name]["transition"]) for name, e in ev.estimate_errors.items()}},
            out / "noise_estimate.png", labels=classes, xlabel="noisy label", ylabel="true class",
            title=f"Transition matrix: true and estimated without the truth (the pipeline uses "
                  f"{ev.estimate['use']})\n{what}"))
    issues, top = ev.issues, ev.issues.index[:GRID]  # the most suspicious labels, as a person would check them
    view = make_train_view(prepared, noisy)
    written.append(plots.plot_image_grid(
        view.x_train[torch.from_numpy(top)].numpy(),
        [f"#{i}: {classes[g]} → {classes[t]} ({p:.2f})" for i, g, t, p in
         zip(top, issues.given[:GRID], issues.suggested[:GRID], issues.p_suggested[:GRID], strict=True)],
        out / "label_issues.png",
        title=f"The {len(top)} most suspicious train labels: given → suggested by {ev.suggested_by} (its "
              f"probability)\n{what}"))
    # the mask colours the points (so only with true labels); nothing feeds back into training
    mask = noisy.mask if true_train_labels(prepared, noisy) is not None else None
    if ev.scored and mask is not None and np.isfinite(weights["loss"]).any():
        n_rows = weights["epochs"].size
        rows = sorted({0, (n_rows - 1) // 2, n_rows - 1})  # an early, a middle and the last recorded epoch
        method = get_method(student.method) if student.method in method_names() else None
        written.append(plots.plot_weight_vs_loss(
            weights["loss"][rows], weights["weight"][rows], mask, out / "weights.png",
            epochs=[int(weights["epochs"][r]) for r in rows], threshold=threshold,
            notes=[method.record_note(student.params, int(weights["epochs"][r]), student.epochs)
                   if method is not None else "" for r in rows],
            title=f"Mentor weight against loss, train examples (AUROC {ev.scalars['detection_auroc']:.3f} at "
                  f"epoch {int(ev.scalars['detection_epoch'])})\n{what}"))
    return written


def model_card(ev: Evaluation, *, prepared: Prepared, student: Student, final: Mapping[str, Any]) -> str:
    """``reports/model_card.md``: what the final model (label correction's retrained network, ``final`` its record)
    is, what it was trained on, how well it does and what that does not say, in Markdown."""
    s, r = ev.scalars, ev.report
    kwargs = final.get("model_kwargs") or {}
    sizes = prepared.sizes()
    correction = (final.get("config") or {}).get("correction") or {}

    def pct(key: str) -> str:
        return f"{s[key]:.2%}" if math.isfinite(s.get(key, math.nan)) else "not measured (no true labels)"

    estimate = ev.estimate
    realised = ("unknown (no true train labels)" if not math.isfinite(ev.label_rate)
                else f"{ev.label_rate:.2%} (from the true labels, which training never saw)")
    lines = [
        "# Model card: models/final.pt",
        "",
        "## What it is",
        f"- A `{final.get('model_name', '?')}` network classifying {kwargs.get('in_channels', '?')}-channel images of "
        f"{kwargs.get('image_size', '?')}×{kwargs.get('image_size', '?')} pixels into {len(ev.classes)} classes: "
        + ", ".join(ev.classes) + ".",
        f"- Trained in two steps: the student with {student.variant} ({student.epochs} epochs) on the given labels; "
        f"then label correction relabelled the train set and this network was retrained on the corrected labels "
        f"({correction.get('retrain_epochs', '?')} epochs).",
        "- Input: uint8 images (N, C, H, W) converted as `labelnoise predict` converts an image file (grayscale or "
        "RGB, the shorter side resized, centre-cropped); the network normalises them itself. Output: logits (N, K).",
        "",
        "## Data",
        f"- Dataset `{prepared.dataset}`: {sizes['train']} train images with given labels, {sizes['clean']} trusted "
        f"ones (labels checked), {sizes['val']} validation, {sizes['test']} test.",
        f"- Wrong given labels: {realised}; estimated without the truth: {estimate.get('rate', math.nan):.2%} "
        f"(estimator `{estimate.get('use')}`).",
        "",
        "## How well it does",
        "| measure | value | what it means |",
        "|---|---|---|",
        f"| test accuracy | {pct('corrected_test_acc')} | share of the {s.get('n_test', 0):.0f} test images "
        "classified right (the test split never chose anything) |",
        f"| test accuracy, mean over classes | {pct('corrected_test_acc_class_mean')} | the same, each class counted "
        "alike |",
        f"| the student's test accuracy | {pct('test_acc')} | before label correction |",
        f"| labels recovered | {pct('recovered_label_acc')} | share of the train labels right after correction "
        f"(given: {pct('label_acc_before')}) |",
        f"| label issues flagged | {s.get('label_issues_flagged', math.nan):.0f} | train labels whose suggested label "
        "differs (`reports/label_issues.csv`) |",
        f"| flags' precision / recall | {pct('label_issues_precision')} / {pct('label_issues_recall')} | flagged "
        "labels that are wrong / wrong labels flagged |",
        "",
        "## Known limits",
        "- It always answers one of the classes above: an image of anything else still gets one (no reject option).",
        "- The accuracies hold for images like the test split's; other cameras, crops or classes' mixes may differ.",
        "- The noise estimate assumes the trusted images were drawn like the rest; the label corrections are "
        "suggestions to check, most suspicious first.",
        *[f"- {note}" for note in (r.get("notes") or [])],
        "",
    ]
    return "\n".join(lines)
