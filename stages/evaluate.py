"""Stage `evaluate`: test accuracy of the student and of the label-corrected model, noise summary, noise
detection, the label-issues table, figures, the per-method table → reports/.

Reports three test numbers, never choosing anything on test data: the student's final model
(`test_acc`), the student checkpoint the training stage selected by clean-subset accuracy
(`test_acc_best_clean`), and the network stage correct_labels retrained on the corrected labels
(PATHS.final_model, `corrected_test_acc`, predicted here exactly like the student; its label recovery
`label_acc_before` / `recovered_label_acc` is copied from PATHS.correction_report). The corruption mask
and the true train labels are read here only (the evaluation path), for the noise summary and for how
well the student's per-example scores single out the corrupted labels (a method that scores labels: the last
recorded epoch's scores in PATHS.student_weights, e.g. the mentor's weights v or cleanlab's label quality; AUROC,
and precision / recall of score < `evaluate.detection_threshold`; null for a method that scores none), plus for
a scoring method with losses a figure of score against loss (plots/weights.png).

PATHS.label_issues (CSV, labelnoise.label_issues): one row per train example, the most suspicious label first: the
given label, the one label correction suggests (else the student) and its probability, the method's score, flagged
when they differ; plots/label_issues.png shows the most suspicious images. Needs no truth; where the mask exists,
`label_issues_precision` / `_recall` measure the flags against it.

Without true train labels (``data.truth: false``) everything measured against them (the noise rate, noise detection,
label recovery, the flags' precision and recall) is left out, and without a labelled test split (such data and no
test split of its own) so are the test accuracies and their figures; ``notes`` in PATHS.metrics says which.

PATHS.methods_table (markdown): every registered method's table name (CE, Cleanlab, SPADE-PD, ...), each with and
without label correction, on this run's setting (data.*, noise.*, train.model, train.epochs). This run's method
comes from the numbers computed here; the other methods from the newest FINISHED pipeline run in the MLflow store
with the same setting (:func:`labelnoise.tracking.matching_pipelines`), so the table fills in as the methods are run.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labelnoise import metrics, plots, tracking
from labelnoise.config import Config, flatten
from labelnoise.datasets import load_prepared
from labelnoise.engine import load_weights, predict_logits
from labelnoise.io import load_json, read_npz, read_torch, save_json, write_atomic
from labelnoise.label_issues import flag_quality, rank_label_issues
from labelnoise.label_issues import write_csv as write_issues_csv
from labelnoise.methods import display_name, get_method, method_names, table_names
from labelnoise.models import load_model
from labelnoise.noise import load_noisy, realised_transition
from labelnoise.runtime import resolve_device
from labelnoise.views import make_train_view, true_train_labels
from stages.common import PATHS, STAGE_PARAMS, require, setup

# Metrics that also go on the pipeline's parent run: the headline numbers `cli.py compare` reads.
HEADLINE = (
    "test_acc",
    "test_acc_best_clean",
    "best_epoch",
    "noise_realised_rate",
    "noisy_label_acc",
    "detection_auroc",
    "corrected_test_acc",
    "recovered_label_acc",
    "estimated_rate",
    "estimated_rate_error",
)
DETECTION = (
    "detection_auroc",
    "detection_precision",
    "detection_recall",
    "detection_flagged_rate",
    "detection_epoch",
    "weight_mean_clean",
    "weight_mean_corrupted",
)
# Label recovery, copied from PATHS.correction_report (NaN in metrics, null in JSON, when absent there).
CORRECTION = ("label_acc_before", "recovered_label_acc")
GRID = 24  # images in the label-issues figure
# Params that define a setting: runs of different methods are comparable only when all of these agree.
SETTING_SECTIONS = ("data", "noise")
SETTING_KEYS = ("train.model", "train.epochs")


def read_curves(path: str | Path) -> dict[str, np.ndarray]:
    """The training stage's per-epoch CSV as column name → (E,) float array (blank cells → NaN)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: no epochs recorded")
    return {c: np.array([float(r[c]) if r[c] not in ("", None) else math.nan for r in rows]) for c in rows[0]}


def _checkpoint_info(path: Path) -> dict[str, Any]:
    """Epoch and clean-subset accuracy stored in a student checkpoint (metadata only)."""
    ckpt = read_torch(path, remedy="re-run the stage that wrote it (dvc repro)")
    return {"epoch": int(ckpt["epoch"]), "clean_acc": float(ckpt.get("clean_acc", math.nan))}


def _metric_key(name: str) -> str:
    """A class name as an MLflow metric key (letters, digits, _ - . / and spaces survive)."""
    return re.sub(r"[^\w\-./ ]", "_", name)



def detection(weights: dict[str, Any], mask: np.ndarray, *, threshold: float) -> dict[str, float]:
    """Noise detection by the last recorded epoch's weights (E-th row of ``weights["weight"]``, (N,)) against
    the corruption ``mask`` (N,): detection_* from :func:`labelnoise.metrics.detection_quality` (a low weight
    flags a corrupted label) over the examples seen that epoch, and the mean weight of each group."""
    v = np.asarray(weights["weight"][-1], dtype=float)  # (N,)
    if v.shape != mask.shape:
        raise ValueError(
            f"{PATHS.student_weights}: {v.size} weights for {mask.size} train samples (re-run train_student)"
        )
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


def method_variant(method: str, mentor_kind: str | None) -> str:
    """Table name of a method: "CE", or "SPADE-PD" / "SPADE-DD" for a method that uses the mentor, by the mentor's
    kind (a method no longer registered keeps its name)."""
    return display_name(method, mentor_kind)


def setting_params(cfg: Config) -> dict[str, Any]:
    """The params that define this run's setting, flattened as on the pipeline's parent run."""
    return {k: v for k, v in flatten(cfg.to_dict()).items() if k.split(".")[0] in SETTING_SECTIONS or k in SETTING_KEYS}


def _fmt(x: Any, spec: str) -> str:
    return format(x, spec) if isinstance(x, int | float) and math.isfinite(x) else "—"


def methods_table(rows: Mapping[str, Mapping[str, Any]], *, setting: str) -> str:
    """Markdown: one row per registered method variant (methods.table_names()) and one for it + correction.

    ``rows``: variant → {"test_acc", "detection_auroc", "corrected_test_acc", "recovered_label_acc" (floats,
    NaN or missing = not available), "run_id", "date", "current" (bool)}; a variant absent from ``rows`` has
    no run yet (dashes).
    """
    lines = [
        f"{setting}",
        "",
        "| method | test accuracy | noise-detection AUROC | recovered-label accuracy | run | date |",
        "|---|---:|---:|---:|---|---|",
    ]
    for variant in table_names():
        r = rows.get(variant)
        if r is None:
            lines += [f"| {name} | — | — | — | no finished run | — |" for name in (variant, f"{variant} + correction")]
            continue
        run = f"`{r['run_id'][:8]}`" + (" (this run)" if r.get("current") else "")
        auroc = _fmt(r.get("detection_auroc", math.nan), ".3f") if variant != "CE" else "—"
        lines.append(f"| {variant} | {_fmt(r.get('test_acc', math.nan), '.2%')} | {auroc} | — | {run} | {r['date']} |")
        lines.append(
            f"| {variant} + correction | {_fmt(r.get('corrected_test_acc', math.nan), '.2%')} | — | "
            f"{_fmt(r.get('recovered_label_acc', math.nan), '.2%')} | {run} | {r['date']} |"
        )
    return "\n".join(lines) + "\n"


def _date(ms: float) -> str:
    return dt.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M")


def _method_rows(cfg: Config, current: dict[str, Any], *, variant: str, exclude: str) -> dict[str, dict[str, Any]]:
    """This run's row (``current``) plus, for every other variant, the newest finished pipeline run in the store
    with the same setting that has a test accuracy (a standalone stage's parent run has none)."""
    rows = {variant: current}
    variants = table_names()
    uri = tracking.resolve_tracking_uri(cfg.base.tracking_uri)
    for r in tracking.matching_pipelines(uri, cfg.base.experiment, setting_params(cfg), exclude={exclude}):
        name = method_variant(r["params"].get("student.method", "?"), r["params"].get("mentor.kind"))
        if name in rows or name not in variants or "test_acc" not in r["metrics"]:
            continue
        rows[name] = {
            **{
                k: r["metrics"].get(k, math.nan)
                for k in ("test_acc", "detection_auroc", "corrected_test_acc", "recovered_label_acc")
            },
            "run_id": r["run_id"],
            "date": _date(r["end"] or r["start"]),
            "current": False,
        }
        if len(rows) == len(variants):
            break
    return rows


def _nanmean(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if np.isfinite(values).any() else math.nan


def _panel_rows(n_epochs: int) -> list[int]:
    """Rows of an early, a middle and the last recorded epoch (fewer when fewer were recorded)."""
    return sorted({0, (n_epochs - 1) // 2, n_epochs - 1}) if n_epochs else []


def _burn_in_note(epoch: int, *, epochs: int, burn_in: float) -> str:
    """Panel note for an epoch that lies (partly) in SPADE's burn-in, where v is an example-dropout draw."""
    if epoch <= burn_in * epochs:
        return "burn-in: v = example dropout"
    return "partly burn-in" if epoch - 1 < burn_in * epochs else ""


def run(cfg: Config) -> dict[str, float]:
    """Evaluate the final and best-clean student and the corrected model on test; write metrics, plots, table."""
    require(
        PATHS.prepared,
        PATHS.noisy,
        PATHS.student_model,
        PATHS.student_best,
        PATHS.curves,
        PATHS.student_weights,
        PATHS.final_model,
        PATHS.correction_report,
    )
    setup(cfg)
    device = resolve_device(cfg.base.device)

    # ---- inputs
    prepared = load_prepared(PATHS.prepared)
    noisy = load_noisy(PATHS.noisy)
    classes = list(prepared.classes)
    k = len(classes)
    if prepared.test_idx.size == 0:
        raise ValueError(f"{PATHS.prepared}: the test split is empty")
    x_test = torch.from_numpy(prepared.images[prepared.test_idx])  # (N, C, H, W) uint8
    y_test = prepared.labels[prepared.test_idx]  # (N,)
    true_train = true_train_labels(prepared, noisy)  # evaluation path only; None without true train labels
    truth, test_known = true_train is not None, prepared.trusted(prepared.test_idx)
    if truth and noisy.labels.shape != true_train.shape:
        raise ValueError(f"{PATHS.noisy}: {noisy.labels.size} labels for {true_train.size} train samples")
    mask = noisy.mask if truth else None  # which labels are wrong: known only with true labels
    notes = [*([] if truth else ["no true train labels (data.truth: false): the noise rate, noise detection, label "
                                 "recovery and the label-issue flags' precision and recall are not reported"]),
             *([] if test_known else ["no labelled test split (data.truth: false and none in the data): test "
                                      "accuracies are not reported"])]

    # ---- predictions of both student checkpoints and of the corrected model on test (reported only:
    # selection happened in training)
    preds: dict[str, np.ndarray] = {}
    info: dict[str, dict[str, Any]] = {}
    for name, path in (
        ("final", PATHS.student_model),
        ("best_clean", PATHS.student_best),
        ("corrected", PATHS.final_model),
    ):
        model = load_model(path, device)
        logits = predict_logits(model, x_test, batch_size=cfg.evaluate.batch_size, device=device)  # (N, K)
        preds[name] = logits.argmax(dim=1).cpu().numpy()
        info[name] = _checkpoint_info(path)
        del model

    # ---- per-example weights of the training stage: scores of every label for a method that scores them (the
    # mentor's v, cleanlab's label quality); for another (ce: all ones) detection does not apply
    weights = load_weights(PATHS.student_weights)
    method = weights["method"] or cfg.student.method
    scored = method in method_names() and get_method(method).scores_labels and weights["epochs"].size > 0
    found = (
        detection(weights, mask, threshold=cfg.evaluate.detection_threshold)
        if scored and mask is not None
        else dict.fromkeys(DETECTION, math.nan)
    )

    # ---- label issues: every train label ranked by how little the pipeline believes it (needs no truth)
    view = make_train_view(prepared, noisy)  # the train images as training saw them (open-set: replaced)
    if Path(PATHS.corrected).is_file():  # label correction's soft labels
        probs = read_npz(PATHS.corrected, remedy="run the correct_labels stage", keys=("soft",))["soft"]
        suggested_by = "label correction"
    else:  # the student's own belief
        student = load_model(PATHS.student_model, device)
        probs = torch.softmax(predict_logits(student, view.x_train, batch_size=cfg.evaluate.batch_size,
                                             device=device), dim=1).numpy()
        suggested_by = "the student"
    issues = rank_label_issues(noisy.labels, probs, score=weights["weight"][-1] if scored else None)
    flags = (flag_quality(issues, mask) if mask is not None  # against the corruption mask (evaluation only)
             else {"flagged": float(issues.flagged.sum()), "precision": math.nan, "recall": math.nan})

    # ---- the noise estimate (stage estimate_noise, made without the truth) against the truth, where it exists
    # (a stage run on its own without that stage's output skips this part)
    estimate = (load_json(PATHS.noise_estimate) if Path(PATHS.noise_estimate).is_file()
                else {"use": None, "rate": math.nan, "estimates": {}})
    true_t = realised_transition(true_train, noisy.labels, k) if truth and estimate["estimates"] else None
    label_rate = float((noisy.labels != true_train).mean()) if truth and true_train.size else math.nan
    estimate_errors = {name: {"rate": est["rate"], "rate_error": est["rate"] - label_rate,
                              "transition_mae": float(np.abs(np.asarray(est["transition"]) - true_t).mean())}
                       for name, est in estimate["estimates"].items()} if truth else {}
    chosen_error = estimate_errors.get(estimate["use"], {})

    # ---- metrics
    per_class = {n: metrics.per_class_accuracy(y_test, p, num_classes=k) if test_known else np.full(k, math.nan)
                 for n, p in preds.items()}  # (K,) each
    realised_rate = (float(mask.mean()) if mask.size else 0.0) if mask is not None else math.nan
    test_accuracy = metrics.accuracy if test_known else lambda y, p: math.nan  # noqa: E731
    scalars: dict[str, float] = {
        "test_acc": test_accuracy(y_test, preds["final"]),
        "test_acc_best_clean": test_accuracy(y_test, preds["best_clean"]),
        "best_epoch": info["best_clean"]["epoch"],
        "final_epoch": info["final"]["epoch"],
        "clean_acc_best": info["best_clean"]["clean_acc"],
        "clean_acc_final": info["final"]["clean_acc"],
        "test_acc_class_mean": _nanmean(per_class["final"]),
        "corrected_test_acc": test_accuracy(y_test, preds["corrected"]),
        "corrected_test_acc_class_mean": _nanmean(per_class["corrected"]),
        **correction_summary(load_json(PATHS.correction_report)),
        "noise_realised_rate": realised_rate,
        "noisy_label_acc": metrics.label_accuracy(noisy.labels, true_train) if truth else math.nan,  # 1 - rate
        "n_train": int(noisy.labels.size),
        "n_corrupted": int(mask.sum()) if mask is not None else math.nan,
        "n_test": int(y_test.size),
        **found,
        "label_issues_flagged": flags["flagged"],
        "label_issues_precision": flags["precision"],
        "label_issues_recall": flags["recall"],
        "estimated_rate": float(estimate["rate"]),
        "estimated_rate_error": chosen_error.get("rate_error", math.nan),  # estimate − the labels' true rate
        "estimated_transition_mae": chosen_error.get("transition_mae", math.nan),  # mean |T̂ − T| over K x K
    }
    report = {
        "method": method,
        **{key: v for key, v in scalars.items()},
        **({"notes": notes} if notes else {}),  # what is left out, and why
        "noise_estimate": {"use": estimate["use"], "label_noise_rate": label_rate, "estimators": estimate_errors,
                           "fit": estimate.get("fit")},  # the misfit check (None: not run)
        "per_class": {c: a for c, a in zip(classes, per_class["final"], strict=True)},
        "per_class_best_clean": {c: a for c, a in zip(classes, per_class["best_clean"], strict=True)},
        "per_class_corrected": {c: a for c, a in zip(classes, per_class["corrected"], strict=True)},
    }
    curves = read_curves(PATHS.curves)  # (E,) per column; read before anything is written
    flipped = f"{realised_rate:.0%} flipped" if truth else "noise rate unknown"
    what = f"{prepared.dataset} · {cfg.noise.kind} noise ({flipped}) · {cfg.student.method} / {cfg.train.model}"
    logged = {
        **{key: v for key, v in scalars.items() if math.isfinite(v)},  # an undefined metric is left out
        **{
            f"test_acc_class/{_metric_key(c)}": float(a)
            for c, a in zip(classes, per_class["final"], strict=True)
            if math.isfinite(a)
        },
    }

    # ---- outputs and tracking: the run opens first, so an unusable store leaves no files behind
    plots_dir = Path(PATHS.plots_dir)
    variant = method_variant(method, cfg.mentor.kind)
    setting = (
        f"Setting: {cfg.data.dataset} · {cfg.noise.kind} noise, rate {cfg.noise.rate:g} · "
        f"{cfg.train.model}, {cfg.train.epochs} epochs. Test accuracy of the final-epoch model. "
        f"Rows: this run ({variant}) and, per other method, the latest finished pipeline run in the MLflow "
        f"store (experiment `{cfg.base.experiment}`) with the same `data.*`, `noise.*`, `train.model` "
        f"and `train.epochs` params."
    )
    with tracking.stage_run("evaluate", cfg, sections=STAGE_PARAMS["evaluate"]) as run_:
        # the store is read before any file is written: a failure here leaves no outputs
        method_rows = _method_rows(
            cfg,
            {**scalars, "run_id": run_.parent_id, "date": _date(time.time() * 1000), "current": True},
            variant=variant,
            exclude=run_.parent_id,
        )
        save_json(PATHS.metrics, report)
        table = methods_table(method_rows, setting=setting)
        write_atomic(PATHS.methods_table, lambda p: p.write_text(table))
        train_images = prepared.train_idx[noisy.positions(len(prepared.train_idx))]  # (n,) dataset indices
        write_issues_csv(PATHS.label_issues, issues, classes=classes, suggested_by=suggested_by,
                         dataset_index=train_images,
                         paths=None if prepared.paths is None else prepared.paths[train_images])
        figures = [] if not test_known else [
            plots.plot_matrix(
                metrics.normalized_confusion_matrix(y_test, preds["final"], num_classes=k),
                plots_dir / "confusion.png",
                labels=classes,
                xlabel="predicted class",
                ylabel="true class",
                title=f"Test confusion, final model (rows sum to 1)\n{what}",
            ),
            plots.plot_per_class(
                {
                    f"student final, ep {scalars['final_epoch']}": per_class["final"],
                    f"student best-clean, ep {scalars['best_epoch']}": per_class["best_clean"],
                    f"label-corrected, ep {info['corrected']['epoch']}": per_class["corrected"],
                },
                plots_dir / "per_class.png",
                labels=classes,
                title=f"Per-class test accuracy: {what}",
            ),
        ]
        figures.append(plots.plot_curves(curves, plots_dir / "curves.png", title=f"Training: {what}",
                                         best_epoch=scalars["best_epoch"]))
        if true_t is not None:  # the estimates beside the truth (dvc repro runs estimate_noise before)
            figures.append(plots.plot_matrices(
                {f"true (rate {label_rate:.3f})": true_t,
                 **{f"{name} (rate {e['rate']:.3f}, MAE {e['transition_mae']:.3f})": np.asarray(
                     estimate["estimates"][name]["transition"]) for name, e in estimate_errors.items()}},
                plots_dir / "noise_estimate.png", labels=classes, xlabel="noisy label", ylabel="true class",
                title=f"Transition matrix: true and estimated without the truth (the pipeline uses "
                      f"{estimate['use']})\n{what}"))
        top = issues.index[:GRID]  # the most suspicious labels, as a person would check them
        figures.append(plots.plot_image_grid(
            view.x_train[torch.from_numpy(top)].numpy(),
            [f"#{i}: {classes[g]} → {classes[t]} ({p:.2f})" for i, g, t, p in
             zip(top, issues.given[:GRID], issues.suggested[:GRID], issues.p_suggested[:GRID], strict=True)],
            plots_dir / "label_issues.png",
            title=f"The {len(top)} most suspicious train labels: given → suggested by {suggested_by} (its "
                  f"probability)\n{what}"))
        # the mask colours the points (so only with true labels); nothing feeds back into training
        if scored and mask is not None and np.isfinite(weights["loss"]).any():
            rows = _panel_rows(weights["epochs"].size)
            burn_in = getattr(getattr(cfg.student, method, None), "burn_in", 0.0)  # a method with a burn-in
            figures.append(
                plots.plot_weight_vs_loss(
                    weights["loss"][rows],
                    weights["weight"][rows],
                    mask,
                    plots_dir / "weights.png",
                    epochs=[int(weights["epochs"][r]) for r in rows],
                    threshold=cfg.evaluate.detection_threshold,
                    notes=[
                        _burn_in_note(int(weights["epochs"][r]), epochs=cfg.train.epochs, burn_in=burn_in) for r in rows
                    ],
                    title=f"Mentor weight against loss, train examples (AUROC {found['detection_auroc']:.3f} at "
                    f"epoch {int(found['detection_epoch'])})\n{what}",
                )
            )
        run_.set_tags({"method": method})
        run_.log_metrics({key: logged[key] for key in HEADLINE if key in logged}, on_parent=True)
        run_.log_metrics({key: v for key, v in logged.items() if key not in HEADLINE})
        run_.log_artifact(PATHS.metrics)
        run_.log_artifact(PATHS.methods_table)
        run_.log_artifact(PATHS.label_issues)
        for fig in figures:
            run_.log_artifact(fig)  # at the artifact root, beside metrics.json
    return logged
