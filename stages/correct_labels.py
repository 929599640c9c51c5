"""Stage `correct_labels`: correct the train labels, then retrain a fresh network on them. With
``correction.epochs`` > 0 the labels come from joint optimization of network and labels (Tanaka et al. 2018);
with 0 (the default) from one step: the posterior of the class given the teacher's prediction and the given
label under the noise channel (``correction.noisy_label_weight``; ``auto``: the estimated transition matrix of
stage estimate_noise). The teacher (``correction.teacher``) is the student, a network trained here on the trusted
subset alone (the budget of ``student.clean_only``; resumable beside PATHS.correction_ckpt, ``.teacher``), or the
mean of the two softmaxes (``ensemble``, the default: README "Label correction" has the measured choice). The
algorithm is in :mod:`labelnoise.methods.joint_optimization`. With ``correction.include_trusted`` the trusted
subset follows the noisy examples in both phases with its true labels, which are never changed; the outputs are
the noisy examples' only.

Inputs: PATHS.prepared, PATHS.noisy, PATHS.student_model (phase 1 starts from it with
``correction.init: student``; its architecture and input statistics are reused either way),
PATHS.student_weights (only with ``correction.trust_mentor``).

Training sees a TrainView (noisy train labels, the trusted clean subset, test images for monitoring),
never the true train labels. Those (and the corruption mask) are read in the reporting part only, after
both phases are done (:func:`_report`).

``correction.trust_mentor`` (off by default): an example whose mentor weight in the last epoch the student
saved (PATHS.student_weights) is above ``correction.trust_threshold`` keeps its noisy label through phase 1
(its label is never updated; it still trains the network). A student whose method scores no label (``ce``:
every weight is 1, so every label would be kept): the stage refuses the combination, naming
``correction.trust_mentor``.

Outputs:
- PATHS.corrected (npz): ``soft`` (n, C) float32 corrected labels (phase 2's targets), ``hard`` (n,) int64
  their argmax, ``changed`` (n,) bool (hard != noisy label), ``trusted`` (n,) bool, ``hard_history`` (E, n)
  int64 the argmax labels after each phase-1 epoch;
- PATHS.final_model: the phase-2 network after its last epoch, in the student's record format
  (labelnoise.models.model_record / load_model); the best clean-subset epoch is reported, not saved;
- PATHS.correction_report (json): label recovery before / after, residual noise, labels changed,
  per-class recovery, final model accuracy, phase timings;
- PATHS.correction_plots: per_class_recovery.png, retrain_curves.png, and with a phase 1 label_changes.png and
  joint_curves.png.

Resume checkpoints (after every epoch; not DVC outs): phase 1 beside PATHS.correction_ckpt (``.joint`` before the
suffix), phase 2 at PATHS.correction_ckpt. A checkpoint of another config (params, seed, data, starting weights,
phase 1's labels for phase 2) is refused, the differing keys printed; a finished phase 1 is reused.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from labelnoise import distributed, plots, tracking
from labelnoise.auto import settle_stage
from labelnoise.config import Config
from labelnoise.datasets import load_prepared
from labelnoise.engine import evaluate_accuracy, load_weights
from labelnoise.io import read_torch, save_json, save_npz, save_torch
from labelnoise.methods import joint_optimization as jo
from labelnoise.methods.clean_only import train_on_trusted
from labelnoise.models import MODEL_RECORD_KEYS, create_model, load_model, model_record, seeded
from labelnoise.noise import load_noisy
from labelnoise.runtime import derived_seed, resolve_device, resolve_precision
from labelnoise.views import TrainView, make_train_view, true_train_labels, with_trusted, without_test
from stages.common import PATHS, STAGE_PARAMS, registered_name, require, setup

# Headline numbers that also go on the pipeline's parent run (names distinct from stage evaluate's).
HEADLINE = ("recovered_label_acc", "final_test_acc")




def run(cfg: Config) -> dict[str, float]:
    """Correct the train labels, retrain on them; write PATHS.corrected, final_model, correction_report/plots."""
    require(PATHS.prepared, PATHS.noisy, PATHS.student_model)
    if cfg.correction.trust_mentor:
        require(PATHS.student_weights)
    # noisy_label_weight auto: the estimated transition matrix (0 where the misfit check failed); teacher auto
    cfg, chosen, estimate = settle_stage(cfg, STAGE_PARAMS["correct_labels"], PATHS.noise_estimate)
    c, t = cfg.correction, cfg.train
    if c.teacher != "student" and c.epochs:
        raise ValueError(f"correction.teacher: {c.teacher} needs correction.epochs: 0 (phase 1 starts from the "
                         "student); set correction.teacher: student or correction.epochs: 0")
    setup(cfg)
    device = resolve_device(cfg.base.device)

    # ---- inputs. The view replaces the true train labels by the noisy ones (and, for open-set noise, the
    # replaced images); `prepared` is dropped here.
    noisy_labels = load_noisy(PATHS.noisy)
    noisy = noisy_labels.labels  # (n,) int64
    view = make_train_view(load_prepared(PATHS.prepared), noisy_labels)
    n = view.x_train.shape[0]
    record = read_torch(PATHS.student_model, remedy="run the train_student stage (dvc repro train_student)",
                        keys=MODEL_RECORD_KEYS)
    name, kwargs = record["model_name"], dict(record["model_kwargs"])
    trusted = (jo.mentor_trust(load_weights(PATHS.student_weights), threshold=c.trust_threshold, n=n)
               if c.trust_mentor else None)  # (n,) bool

    student_model = load_model(PATHS.student_model, device)
    student_test_acc = evaluate_accuracy(student_model, view.x_test, view.y_test, batch_size=t.eval_batch_size,
                                         device=device, autocast_dtype=resolve_precision(t.precision, device))["acc"]

    def fresh(stream: str) -> nn.Module:  # initial weights from base.seed's stream only
        build = lambda: create_model(name, **{**kwargs, "pretrained": False})  # noqa: E731
        return seeded(build, derived_seed(cfg.base.seed, stream))

    if c.teacher != "student" and view.x_clean.shape[0] == 0:
        raise ValueError(f"correction.teacher: {c.teacher} needs a trusted clean subset (data.clean_size > 0 or "
                         "data.clean_file); use correction.teacher: student")
    joint_model = student_model if c.init == "student" else fresh("joint_init")
    final_model = fresh("retrain_init")
    ckpt = Path(PATHS.correction_ckpt)

    with tracking.stage_run("correct_labels", cfg, sections=STAGE_PARAMS["correct_labels"]) as tracked:
        tracked.set_tags({"correction_init": c.init, "correction_update": c.update, "model": name,
                          **{f"auto.{key}": str(value) for key, value in chosen.items()}})

        def log_rows(prefix: str) -> Any:
            return lambda row: tracked.log_metrics(
                {f"{prefix}_{key}": v for key, v in row.items() if key != "epoch"}, step=int(row["epoch"]))

        # ---- phase 1: network and labels in turn; phase 2: a fresh network on the corrected soft labels. With
        # correction.include_trusted the trusted subset follows the n noisy examples in both, its true labels kept.
        teachers = [student_model]
        if c.teacher != "student":  # a network trained on the trusted subset alone (the clean_only method's fit)
            trusted_fit = train_on_trusted(fresh("teacher_init"), without_test(view),  # its test accuracy: below
                                           params=cfg.student.clean_only, recipe=t,
                                           seed=derived_seed(cfg.base.seed, "teacher"), device=device,
                                           checkpoint_path=ckpt.with_name(f"{ckpt.stem}.teacher{ckpt.suffix}"),
                                           on_epoch=log_rows("teacher"))
            teachers = [trusted_fit.model] if c.teacher == "trusted" else [student_model, trusted_fit.model]
        teacher_test_acc = student_test_acc if c.teacher == "student" else float(  # monitoring only
            (jo.mean_softmax(teachers, view.x_test, batch_size=t.eval_batch_size, device=device).argmax(dim=1)
             == view.y_test.cpu()).float().mean())
        train_view = with_trusted(view) if c.include_trusted and view.x_clean.shape[0] else view
        extra = train_view.trusted_in_train
        keep = (None if trusted is None and not extra else
                np.concatenate([trusted if trusted is not None else np.zeros(n, dtype=bool), np.ones(extra, bool)]))
        channel = estimate.transition if estimate is not None and c.noisy_label_weight == "auto" else None
        joint = jo.joint_optimize(joint_model, train_view, cfg=c, recipe=t, seed=cfg.base.seed, device=device,
                                  trusted=keep, transition=channel,
                                  checkpoint_path=ckpt.with_name(f"{ckpt.stem}.joint{ckpt.suffix}"),
                                  on_epoch=log_rows("joint"), teachers=teachers)
        final = jo.retrain(final_model, train_view, joint.soft_labels, cfg=c, recipe=t, seed=cfg.base.seed,
                           device=device, checkpoint_path=ckpt, on_epoch=log_rows("retrain"))
        joint = dataclasses.replace(joint, soft_labels=joint.soft_labels[:n], hard_history=joint.hard_history[:, :n])

        # ---- outputs of training (nothing above has seen a true train label); torchrun: rank 0 writes them
        if not distributed.is_main():
            return {}
        soft = joint.soft_labels.numpy().astype(np.float32)  # (n, C)
        hard = soft.argmax(axis=1).astype(np.int64)  # (n,)
        save_npz(PATHS.corrected, soft=soft, hard=hard, changed=hard != noisy,
                 trusted=trusted if trusted is not None else np.zeros(n, dtype=bool), hard_history=joint.hard_history)
        last = final.history[-1]
        config = {"correction": dataclasses.asdict(c), "train": dataclasses.asdict(t), "seed": cfg.base.seed}
        save_torch(PATHS.final_model, model_record(final.model, model_name=name, model_kwargs=kwargs,
                                                   epoch=int(last["epoch"]), clean_acc=last["clean_acc"],
                                                   config=config))

        # ---- report (evaluation path: the true train labels are read here, after training)
        report, metrics = _report(cfg, view, noisy, hard, joint, final, trusted=trusted,
                                  student_test_acc=student_test_acc, teacher_test_acc=teacher_test_acc)
        save_json(PATHS.correction_report, report)
        figures = _plots(cfg, view, report, joint, final)
        for stale in Path(PATHS.correction_plots).glob("[!.]*.png"):  # the folder is this stage's
            if stale not in figures:
                stale.unlink()
        tracked.log_metrics({key: metrics[key] for key in HEADLINE if key in metrics}, on_parent=True)
        tracked.log_metrics({key: v for key, v in metrics.items() if key not in HEADLINE})
        tracked.log_artifact(PATHS.correction_report)
        for fig in figures:
            tracked.log_artifact(fig, "correction")
        tracked.log_datasets({f"{cfg.data.dataset} corrected labels": PATHS.corrected})
        tracked.log_model(final.model, example=view.x_test[:4].numpy(), registered=registered_name(cfg),
                          alias=cfg.base.model_alias, tags={"kind": "label-corrected", "method": cfg.student.method,
                                                             "test_acc": f"{last['test_acc']:.4f}"})
    return metrics


def _report(
    cfg: Config, view: TrainView, noisy: np.ndarray, hard: np.ndarray, joint: jo.JointResult,
    final: jo.RetrainResult, *, trusted: np.ndarray | None, student_test_acc: float, teacher_test_acc: float,
) -> tuple[dict[str, Any], dict[str, float]]:
    """Label recovery against the true train labels, and the final model's accuracy (evaluation only)."""
    prepared = load_prepared(PATHS.prepared)
    true = true_train_labels(prepared, load_noisy(PATHS.noisy))  # (n,) the only read of the true train labels;
    # None without true train labels (data.truth: false): then recovery is not measured
    k = view.num_classes
    rec = jo.recovery_report(noisy, hard, true, num_classes=k, hard_history=joint.hard_history)
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
            for cls, b, a in zip(view.classes, rec["per_class_before"], rec["per_class_after"], strict=True)},
        "per_epoch": {
            "labels_changed": [row["labels_changed"] for row in joint.history],
            "recovery": [float(r) for r in rec["recovery_per_epoch"]],
        },
        "final_model": {"test_acc": last["test_acc"], "clean_acc": (last["clean_acc"]),
                        "epoch": int(last["epoch"]), "best_epoch": final.best_epoch,
                        "best_clean_acc": (final.best_clean_acc), "best_test_acc": best["test_acc"]},
        "student_test_acc": student_test_acc,
        "teacher": cfg.correction.teacher, "teacher_test_acc": teacher_test_acc,
        "joint_model_test_acc": metrics["joint_model_test_acc"],
        "timings_seconds": {"phase1": joint.seconds, "phase2": final.seconds, "total": joint.seconds + final.seconds,
                            "phase1_epochs": len(joint.history), "phase2_epochs": len(final.history)},
        "resumed_epochs": {"phase1": joint.resumed_epochs, "phase2": final.resumed_epochs},
        "params": dataclasses.asdict(cfg.correction),
    }
    return report, metrics


def _plots(cfg: Config, view: TrainView, report: dict[str, Any], joint: jo.JointResult,
           final: jo.RetrainResult) -> list[Path]:
    """PNGs in PATHS.correction_plots: per-class recovery, label changes over phase 1, both phases' curves."""
    out = Path(PATHS.correction_plots)
    rec = report["label_recovery"]
    what = (f"{view.dataset} · {cfg.noise.kind} noise · joint optimization "
            f"(α={cfg.correction.alpha:g}, β={cfg.correction.beta:g}, {cfg.correction.update} update)")
    if not rec.get("true_labels", True):
        what += "\nno true train labels (data.truth: false): label accuracy is not measured"
    per_class = report["per_class_recovery"]
    values = {
        f"noisy labels ({rec['before']:.1%})": np.array([v["before"] if v["before"] is not None else np.nan
                                                         for v in per_class.values()]),
        f"corrected labels ({rec['after']:.1%})": np.array([v["after"] if v["after"] is not None else np.nan
                                                            for v in per_class.values()]),
    }
    j = jo.history_columns(joint.history)
    r = jo.history_columns(final.history)
    figures = [plots.plot_per_class(values, out / "per_class_recovery.png", labels=view.classes,
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
            out / "label_changes.png", begin=cfg.correction.begin, title=f"Phase 1: labels over epochs\n{what}"),
        plots.plot_curves({"epoch": j["epoch"], "total_loss (L)": j["loss"], "compat_loss (L_c)": j["l_c"],
                           "prior_loss (L_p)": j["l_p"], "entropy_loss (L_e)": j["l_e"],
                           "train_acc_vs_labels": j["train_acc"], "clean_acc": j["clean_acc"],
                           "test_acc": j["test_acc"]},
                          out / "joint_curves.png", title=f"Phase 1 (joint optimization): {what}"),
        retrain_plot,
    ]
