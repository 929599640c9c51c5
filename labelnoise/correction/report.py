"""How well label correction recovered the true labels. EVALUATION ONLY: the true train labels are read after
training, never by it."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from labelnoise.correction.correct import Corrected


def recovery_report(
    noisy: np.ndarray, corrected: np.ndarray, true: np.ndarray | None, *, num_classes: int,
    hard_history: np.ndarray | None = None,
) -> dict[str, Any]:
    """How well the corrected labels recover the true ones. EVALUATION ONLY: called after training.

    noisy, corrected, true: int (N,). hard_history: optional (E, N) labels after each phase-1 epoch.
    Returns {"acc_before", "acc_after", "residual_noise_rate", "labels_changed" (count), "changed_fraction",
    "fixed" (wrong → right), "broken" (right → wrong), "per_class_before", "per_class_after" ((C,) recall of
    each true class), "recovery_per_epoch" ((E,) when hard_history is given)}. Without true labels (``true``
    None) only the changes are counted; everything measured against the truth is NaN (None for the counts).
    """
    from labelnoise.metrics import label_accuracy, per_class_accuracy

    noisy, corrected = (np.asarray(a, dtype=np.int64) for a in (noisy, corrected))
    changed = corrected != noisy
    if true is None:
        unknown = np.full(num_classes, math.nan)
        out = {"acc_before": math.nan, "acc_after": math.nan, "residual_noise_rate": math.nan,
               "labels_changed": int(changed.sum()),
               "changed_fraction": float(changed.mean()) if changed.size else math.nan,
               "fixed": None, "broken": None, "per_class_before": unknown, "per_class_after": unknown}
        if hard_history is not None:
            out["recovery_per_epoch"] = np.full(len(hard_history), math.nan)
        return out
    true = np.asarray(true, dtype=np.int64)
    before, after = label_accuracy(noisy, true), label_accuracy(corrected, true)
    out: dict[str, Any] = {
        "acc_before": before, "acc_after": after, "residual_noise_rate": 1.0 - after,
        "labels_changed": int(changed.sum()), "changed_fraction": float(changed.mean()) if changed.size else math.nan,
        "fixed": int((changed & (corrected == true)).sum()), "broken": int((changed & (noisy == true)).sum()),
        "per_class_before": per_class_accuracy(true, noisy, num_classes=num_classes),
        "per_class_after": per_class_accuracy(true, corrected, num_classes=num_classes),
    }
    if hard_history is not None:
        out["recovery_per_epoch"] = np.asarray([label_accuracy(np.asarray(h, dtype=np.int64), true)
                                                for h in hard_history])
    return out


def history_columns(history: Sequence[Mapping[str, float]]) -> dict[str, np.ndarray]:
    """Rows of a history → one (E,) float array per key (for plots and CSV)."""
    keys = list(history[0]) if history else []
    return {key: np.asarray([row[key] for row in history], dtype=float) for key in keys}


def correction_report(result: Corrected, noisy: np.ndarray, true: np.ndarray | None, *, classes: list[str],
                      cfg: Any) -> tuple[dict[str, Any], dict[str, float]]:
    """(the report, its metrics): label recovery against the true train labels ``true`` (n,) (None without them:
    not measured), the labels changed, the final model's accuracy and the phases' timings. ``cfg``: params
    ``correction``, recorded in the report."""
    joint, final, trusted = result.labels, result.final, result.kept
    student_test_acc, teacher_test_acc = result.student_test_acc, result.teacher_test_acc
    rec = recovery_report(noisy, result.hard, true, num_classes=len(classes), hard_history=joint.hard_history)
    last, best = final.history[-1], final.history[final.best_epoch - 1]
    metrics = {
        "label_acc_before": rec["acc_before"],
        "recovered_label_acc": rec["acc_after"],
        "residual_noise_rate": rec["residual_noise_rate"],
        "labels_changed": float(rec["labels_changed"]),
        "labels_changed_fraction": rec["changed_fraction"],
        "labels_fixed": math.nan if rec["fixed"] is None else float(rec["fixed"]),
        "labels_broken": math.nan if rec["broken"] is None else float(rec["broken"]),
        "final_test_acc": last["test_acc"],  # monitoring; model selection uses the clean subset
        "final_clean_acc": last["clean_acc"],
        "best_epoch": float(final.best_epoch),
        "best_clean_acc": final.best_clean_acc,
        "best_test_acc": best["test_acc"],
        "student_test_acc": student_test_acc,
        "teacher_test_acc": teacher_test_acc,  # epochs 0: the prediction the labels come from (monitoring)
        "joint_model_test_acc": joint.history[-1]["test_acc"] if joint.history else math.nan,
        "phase1_seconds": joint.seconds,
        "phase2_seconds": final.seconds,
        "n_trusted": float(trusted.sum()) if trusted is not None else 0.0,
    }
    report = {
        "label_acc_before": rec["acc_before"],  # the headline numbers evaluate copies
        "recovered_label_acc": rec["acc_after"],
        "label_recovery": {
            "before": rec["acc_before"], "after": rec["acc_after"], "residual_noise_rate": rec["residual_noise_rate"],
            "labels_changed": rec["labels_changed"], "changed_fraction": rec["changed_fraction"],
            "fixed": rec["fixed"], "broken": rec["broken"], "n_train": int(noisy.size),
            "true_labels": true is not None,  # false: data.truth is false, recovery cannot be measured
            "n_trusted": int(trusted.sum()) if trusted is not None else None,
        },
        "per_class_recovery": {
            cls: {"before": (b), "after": (a)}
            for cls, b, a in zip(classes, rec["per_class_before"], rec["per_class_after"], strict=True)},
        "per_epoch": {
            "labels_changed": [row["labels_changed"] for row in joint.history],
            "recovery": [float(r) for r in rec["recovery_per_epoch"]],
        },
        "final_model": {"test_acc": last["test_acc"], "clean_acc": (last["clean_acc"]),
                        "epoch": int(last["epoch"]), "best_epoch": final.best_epoch,
                        "best_clean_acc": (final.best_clean_acc), "best_test_acc": best["test_acc"]},
        "student_test_acc": student_test_acc,
        "teacher": cfg.teacher, "teacher_test_acc": teacher_test_acc,
        "joint_model_test_acc": metrics["joint_model_test_acc"],
        "timings_seconds": {"phase1": joint.seconds, "phase2": final.seconds, "total": joint.seconds + final.seconds,
                            "phase1_epochs": len(joint.history), "phase2_epochs": len(final.history)},
        "resumed_epochs": {"phase1": joint.resumed_epochs, "phase2": final.resumed_epochs},
        "params": dataclasses.asdict(cfg),
    }
    return report, metrics


def correction_figures(result: Corrected, report: dict[str, Any], out: Path, *, classes: list[str], dataset: str,
                       cfg: Any) -> list[Path]:
    """PNGs in the folder ``out``: per-class recovery, phase 2's curves and, with a phase 1, the label changes over
    it and its curves. Returns their paths."""
    from labelnoise import plots

    joint, final = result.labels, result.final
    rec = report["label_recovery"]
    how = (f"joint optimization (α={cfg.prior_alpha:g}, β={cfg.entropy_beta:g}, {cfg.update} update)" if cfg.epochs
           else f"one step from the {cfg.teacher} teacher's prediction")
    what = f"{dataset} · label correction: {how}"
    if not rec.get("true_labels", True):
        what += "\nno true train labels (data.truth: false): label accuracy is not measured"
    per_class = report["per_class_recovery"]
    values = {
        f"noisy labels ({rec['before']:.1%})": np.array([v["before"] if v["before"] is not None else np.nan
                                                         for v in per_class.values()]),
        f"corrected labels ({rec['after']:.1%})": np.array([v["after"] if v["after"] is not None else np.nan
                                                            for v in per_class.values()]),
    }
    j = history_columns(joint.history)
    r = history_columns(final.history)
    figures = [plots.plot_per_class(values, out / "per_class_recovery.png", labels=classes,
                                    ylabel="train label accuracy", title=f"Label recovery per class\n{what}")]
    retrain_plot = plots.plot_curves(
        {"epoch": r["epoch"], "soft_ce_loss": r["loss"], "train_acc_vs_corrected": r["train_acc"],
         "clean_acc": r["clean_acc"], "test_acc": r["test_acc"], "lr": r["lr"]}, out / "retrain_curves.png",
        best_epoch=final.best_epoch, title=f"Phase 2 (retrain on corrected labels): {what}")
    if not joint.history:  # correction.epochs 0: no phase 1 to plot
        return [*figures, retrain_plot]
    return [
        *figures,
        plots.plot_label_changes(
            j["epoch"], {"labels changed (vs noisy)": j["labels_changed"],
                         "labels flipped this epoch": j["labels_flipped"],
                         "label accuracy (vs true, evaluation)": np.asarray(report["per_epoch"]["recovery"])},
            out / "label_changes.png", begin=cfg.begin, title=f"Phase 1: labels over epochs\n{what}"),
        plots.plot_curves({"epoch": j["epoch"], "total_loss (L)": j["loss"], "compat_loss (L_c)": j["l_c"],
                           "prior_loss (L_p)": j["l_p"], "entropy_loss (L_e)": j["l_e"],
                           "train_acc_vs_labels": j["train_acc"], "clean_acc": j["clean_acc"],
                           "test_acc": j["test_acc"]},
                          out / "joint_curves.png", title=f"Phase 1 (joint optimization): {what}"),
        retrain_plot,
    ]
