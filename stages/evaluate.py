"""Stage `evaluate`: test accuracy of the student, noise summary, noise detection, figures → reports/.

Reports two test numbers, never choosing anything on test data: the final model
(`test_acc`) and the checkpoint the training stage selected by clean-subset accuracy
(`test_acc_best_clean`). The corruption mask and the true train labels are read here only
(the evaluation path), for the noise summary and for how well the student's per-example weights
single out the corrupted labels (spade: the last recorded epoch's mentor weights v in
PATHS.student_weights; AUROC, and precision / recall of v < `evaluate.detection_threshold`;
null for ce, whose weights are all 1), plus a figure of weight against loss (plots/weights.png).
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labelnoise import metrics, plots, tracking
from labelnoise.config import Config
from labelnoise.datasets import load_prepared
from labelnoise.io import save_json
from labelnoise.models import load_model
from labelnoise.noise import load_noisy
from labelnoise.runtime import resolve_device
from labelnoise.training import load_weights, predict_logits
from stages.common import PATHS, require, setup

# Metrics that also go on the pipeline's parent run: the headline numbers `cli.py compare` reads.
HEADLINE = ("test_acc", "test_acc_best_clean", "best_epoch", "noise_realised_rate", "noisy_label_acc",
            "detection_auroc")
DETECTION = ("detection_auroc", "detection_precision", "detection_recall", "detection_flagged_rate",
             "detection_epoch", "weight_mean_clean", "weight_mean_corrupted")


def read_curves(path: str | Path) -> dict[str, np.ndarray]:
    """The training stage's per-epoch CSV as column name → (E,) float array (blank cells → NaN)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: no epochs recorded")
    return {c: np.array([float(r[c]) if r[c] not in ("", None) else math.nan for r in rows]) for c in rows[0]}


def _checkpoint_info(path: Path) -> dict[str, Any]:
    """Epoch and clean-subset accuracy stored in a student checkpoint (metadata only)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return {"epoch": int(ckpt["epoch"]), "clean_acc": float(ckpt.get("clean_acc", math.nan))}


def _metric_key(name: str) -> str:
    """A class name as an MLflow metric key (letters, digits, _ - . / and spaces survive)."""
    return re.sub(r"[^\w\-./ ]", "_", name)


def _finite_or_none(x: float) -> float | None:
    """JSON has no NaN: an undefined value (e.g. a class absent from test) becomes null."""
    return float(x) if math.isfinite(x) else None


def detection(weights: dict[str, Any], mask: np.ndarray, *, threshold: float) -> dict[str, float]:
    """Noise detection by the last recorded epoch's weights (E-th row of ``weights["weight"]``, (N,)) against
    the corruption ``mask`` (N,): detection_* from :func:`labelnoise.metrics.detection_quality` (a low weight
    flags a corrupted label) over the examples seen that epoch, and the mean weight of each group."""
    v = np.asarray(weights["weight"][-1], dtype=float)  # (N,)
    if v.shape != mask.shape:
        raise ValueError(f"{PATHS.student_weights}: {v.size} weights for {mask.size} train samples "
                         "(re-run train_student)")
    seen = np.isfinite(v)
    q = metrics.detection_quality(v[seen], mask[seen], threshold=threshold)
    return {
        **{f"detection_{k}": float(x) for k, x in q.items()},
        "detection_epoch": float(weights["epochs"][-1]),
        "weight_mean_clean": float(v[seen & ~mask].mean()) if (seen & ~mask).any() else math.nan,
        "weight_mean_corrupted": float(v[seen & mask].mean()) if (seen & mask).any() else math.nan,
    }


def _panel_rows(n_epochs: int) -> list[int]:
    """Rows of an early, a middle and the last recorded epoch (fewer when fewer were recorded)."""
    return sorted({0, (n_epochs - 1) // 2, n_epochs - 1}) if n_epochs else []


def _burn_in_note(epoch: int, *, epochs: int, burn_in: float) -> str:
    """Panel note for an epoch that lies (partly) in SPADE's burn-in, where v is an example-dropout draw."""
    if epoch <= burn_in * epochs:
        return "burn-in: v = example dropout"
    return "partly burn-in" if epoch - 1 < burn_in * epochs else ""


def run(cfg: Config) -> dict[str, float]:
    """Evaluate the final and the best-clean student on the test split; write metrics and plots."""
    require(PATHS.prepared, PATHS.noisy, PATHS.student_model, PATHS.student_best, PATHS.curves,
            PATHS.student_weights)
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
    true_train = prepared.labels[prepared.train_idx]  # evaluation path only
    if noisy.labels.shape != true_train.shape:
        raise ValueError(f"{PATHS.noisy}: {noisy.labels.size} labels for {true_train.size} train samples")

    # ---- predictions of both checkpoints on test (reported only: selection happened in training)
    preds: dict[str, np.ndarray] = {}
    info: dict[str, dict[str, Any]] = {}
    for name, path in (("final", PATHS.student_model), ("best_clean", PATHS.student_best)):
        model = load_model(path, device)
        logits = predict_logits(model, x_test, batch_size=cfg.evaluate.batch_size, device=device)  # (N, K)
        preds[name] = logits.argmax(dim=1).cpu().numpy()
        info[name] = _checkpoint_info(path)
        del model

    # ---- per-example weights of the training stage (ce: all ones, so detection does not apply)
    weights = load_weights(PATHS.student_weights)
    method = weights["method"] or cfg.student.method
    spade = method == "spade" and weights["epochs"].size > 0
    found = (detection(weights, noisy.mask, threshold=cfg.evaluate.detection_threshold) if spade
             else dict.fromkeys(DETECTION, math.nan))

    # ---- metrics
    per_class = {n: metrics.per_class_accuracy(y_test, p, num_classes=k) for n, p in preds.items()}  # (K,) each
    realised_rate = float(noisy.mask.mean()) if noisy.mask.size else 0.0
    scalars: dict[str, float] = {
        "test_acc": metrics.accuracy(y_test, preds["final"]),
        "test_acc_best_clean": metrics.accuracy(y_test, preds["best_clean"]),
        "best_epoch": info["best_clean"]["epoch"],
        "final_epoch": info["final"]["epoch"],
        "clean_acc_best": info["best_clean"]["clean_acc"],
        "clean_acc_final": info["final"]["clean_acc"],
        "test_acc_class_mean": float(np.nanmean(per_class["final"])),
        "noise_realised_rate": realised_rate,
        "noisy_label_acc": metrics.label_accuracy(noisy.labels, true_train),  # = 1 - realised rate
        "n_train": int(true_train.size),
        "n_corrupted": int(noisy.mask.sum()),
        "n_test": int(y_test.size),
        **found,
    }
    report = {
        "method": method,
        **{key: _finite_or_none(v) if isinstance(v, float) else v for key, v in scalars.items()},
        "per_class": {c: _finite_or_none(a) for c, a in zip(classes, per_class["final"], strict=True)},
        "per_class_best_clean": {c: _finite_or_none(a) for c, a in zip(classes, per_class["best_clean"], strict=True)},
    }
    curves = read_curves(PATHS.curves)  # (E,) per column; read before anything is written
    what = (f"{prepared.dataset} · {cfg.noise.kind} noise ({realised_rate:.0%} flipped)"
            f" · {cfg.student.method} / {cfg.student.model}")
    logged = {**{key: v for key, v in scalars.items() if key not in DETECTION or math.isfinite(v)},
              **{f"test_acc_class/{_metric_key(c)}": float(a)
                 for c, a in zip(classes, per_class["final"], strict=True) if math.isfinite(a)}}

    # ---- outputs and tracking: the run opens first, so an unusable store leaves no files behind
    plots_dir = Path(PATHS.plots_dir)
    with tracking.stage_run("evaluate", cfg, sections=("evaluate",)) as run_:
        save_json(PATHS.metrics, report)
        figures = [
            plots.plot_matrix(
                metrics.normalized_confusion_matrix(y_test, preds["final"], num_classes=k),
                plots_dir / "confusion.png", labels=classes, xlabel="predicted class", ylabel="true class",
                title=f"Test confusion, final model (rows sum to 1)\n{what}"),
            plots.plot_curves(curves, plots_dir / "curves.png", title=f"Training: {what}",
                              best_epoch=scalars["best_epoch"]),
            plots.plot_per_class(
                {f"final, epoch {scalars['final_epoch']}": per_class["final"],
                 f"best on clean subset, epoch {scalars['best_epoch']}": per_class["best_clean"]},
                plots_dir / "per_class.png", labels=classes, title=f"Per-class test accuracy: {what}"),
        ]
        if spade:  # the mask colours the points; nothing here feeds back into training
            rows = _panel_rows(weights["epochs"].size)
            figures.append(plots.plot_weight_vs_loss(
                weights["loss"][rows], weights["weight"][rows], noisy.mask, plots_dir / "weights.png",
                epochs=[int(weights["epochs"][r]) for r in rows], threshold=cfg.evaluate.detection_threshold,
                notes=[_burn_in_note(int(weights["epochs"][r]), epochs=cfg.student.epochs, burn_in=cfg.student.burn_in)
                       for r in rows],
                title=f"Mentor weight against loss, train examples (AUROC {found['detection_auroc']:.3f} at "
                      f"epoch {int(found['detection_epoch'])})\n{what}"))
        run_.set_tags({"method": method})
        run_.log_metrics({key: logged[key] for key in HEADLINE if key in logged}, on_parent=True)
        run_.log_metrics({key: v for key, v in logged.items() if key not in HEADLINE})
        run_.log_artifact(PATHS.metrics)
        for fig in figures:
            run_.log_artifact(fig)  # at the artifact root, beside metrics.json
    return logged
