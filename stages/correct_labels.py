"""Stage `correct_labels`: correct the train labels, then retrain a fresh network on them. With
``correction.epochs`` > 0 the labels come from joint optimization of network and labels (Tanaka et al. 2018);
with 0 (the default) from one step: the posterior of the class given the teacher's prediction and the given
label under the noise channel (``correction.noisy_label_weight``; ``auto``: the estimated transition matrix of
stage estimate_noise). The teacher (``correction.teacher``) is the student, a network trained here on the trusted
subset alone (the budget of params ``trusted``; resumable beside PATHS.correction_ckpt, ``.teacher``), or the
mean of the two softmaxes (``ensemble``, the default: docs/methods.md, "Label correction", has the measured choice). The
algorithm is in :mod:`labelnoise.correction`. With ``correction.include_trusted`` the trusted
subset follows the noisy examples in both phases with its true labels, which are never changed; the outputs are
the noisy examples' only.

Inputs: PATHS.prepared, PATHS.noisy, PATHS.student_model (phase 1 starts from it with
``correction.init: student``; its architecture and input statistics are reused either way),
PATHS.student_weights (only with ``correction.trust_mentor``).

Training sees a TrainView (noisy train labels, the trusted clean subset, test images for monitoring),
never the true train labels. Those (and the corruption mask) are read in the reporting part only, after
both phases are done (:func:`labelnoise.correction.report.correction_report`).

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
from pathlib import Path
from typing import Any

import numpy as np

from labelnoise import distributed
from labelnoise.auto import settle_stage
from labelnoise.config import Config
from labelnoise.correction.report import correction_figures, correction_report
from labelnoise.datasets import load_prepared
from labelnoise.engine import load_weights
from labelnoise.io import keep_only, read_npz, read_torch, save_json, save_npz, save_torch
from labelnoise.models import MODEL_RECORD_KEYS, load_model, model_record
from labelnoise.noise import load_noisy
from labelnoise.runtime import resolve_device
from labelnoise.steps import correct as step
from labelnoise.views import make_train_view, test_split_id, true_train_labels
from stages.common import PATHS, STAGE_PARAMS, execution, registered_name, require, setup, stage_run

# Headline numbers that also go on the pipeline's parent run (names distinct from stage evaluate's).
HEADLINE = ("recovered_label_acc", "final_test_acc")


def _trusted_probs() -> dict[str, np.ndarray] | None:
    """The noise estimate's trusted-only predictions (none: that stage ran without its misfit check, or not)."""
    if not Path(PATHS.trusted_probs).is_file():
        return None
    probs = read_npz(PATHS.trusted_probs, remedy="run the estimate_noise stage", keys=("train", "test"))
    return probs if probs["train"].size else None


def _save(result: Any, noisy_labels: np.ndarray, record: dict, recipe: Any, cfg: Config,
          classes: list[str]) -> None:
    """PATHS.corrected (the corrected labels) and PATHS.final_model (the final network, how it was trained)."""
    kept = result.kept if result.kept is not None else np.zeros(len(noisy_labels), dtype=bool)
    save_npz(PATHS.corrected, soft=result.soft, hard=result.hard, changed=result.hard != noisy_labels,
             trusted=kept, hard_history=result.labels.hard_history)
    last = result.final.history[-1]
    save_torch(PATHS.final_model, model_record(
        result.final.model, model_name=record["model_name"], model_kwargs=record["model_kwargs"],
        epoch=int(last["epoch"]), clean_acc=last["clean_acc"], classes=classes,
        config={"correction": dataclasses.asdict(cfg.correction), "train": dataclasses.asdict(recipe),
                "seed": cfg.base.seed}))


def run(cfg: Config) -> dict[str, float]:
    """Correct the train labels, retrain on them; write PATHS.corrected, final_model, correction_report/plots."""
    require(PATHS.prepared, PATHS.noisy, PATHS.student_model, *([PATHS.student_weights] if cfg.correction.trust_mentor
                                                                 else []))
    # noisy_label_weight auto: the estimated transition matrix (0 where the misfit check failed); teacher auto
    cfg, chosen, estimate = settle_stage(cfg, STAGE_PARAMS["correct_labels"], PATHS.noise_estimate,
                                         used=lambda key: not key.startswith("correction.semi_")
                                         or cfg.correction.retrain_loss == "semi")
    c = cfg.correction
    setup(cfg)
    device = resolve_device(cfg.base.device)
    prepared, noisy = load_prepared(PATHS.prepared), load_noisy(PATHS.noisy)
    view = make_train_view(prepared, noisy)  # the true train labels replaced by the noisy ones
    record = read_torch(PATHS.student_model, remedy="run the train_student stage (dvc repro train_student)",
                        keys=MODEL_RECORD_KEYS)
    name = record["model_name"]

    with stage_run("correct_labels", cfg) as tracked:
        tracked.set_tags({"correction_init": c.init, "correction_update": c.update, "model": name,
                          **{f"auto.{key}": str(value) for key, value in chosen.items()}})

        def on_epoch(phase: str):  # noqa: ANN202 - a logger of the phase's epochs
            return lambda row: tracked.log_metrics({f"{phase}_{k}": v for k, v in row.items() if k != "epoch"},
                                                   step=int(row["epoch"]))

        result = step.correct_labels(
            cfg, view, load_model(PATHS.student_model, device), name, record["model_kwargs"], estimate=estimate,
            weights=load_weights(PATHS.student_weights) if c.trust_mentor else None, trusted_probs=_trusted_probs(),
            checkpoint_path=Path(PATHS.correction_ckpt), on_epoch=on_epoch)
        if not distributed.is_main():  # torchrun: rank 0 writes the outputs
            return {}
        _save(result, noisy.labels, record, step.correction_recipe(cfg, name), cfg, list(view.classes))
        last = result.final.history[-1]

        # ---- report (evaluation path: the true train labels are read here, after training)
        report, metrics = correction_report(result, noisy.labels, true_train_labels(prepared, noisy),
                                            classes=list(view.classes), cfg=c)
        save_json(PATHS.correction_report, report)
        figures = correction_figures(result, report, Path(PATHS.correction_plots), classes=list(view.classes),
                                     dataset=view.dataset, cfg=c)
        keep_only(PATHS.correction_plots, figures)  # the folder is this stage's
        tracked.log_metrics({key: metrics[key] for key in HEADLINE if key in metrics}, on_parent=True)
        tracked.log_metrics({key: v for key, v in metrics.items() if key not in HEADLINE})
        tracked.log_artifact(PATHS.correction_report)
        for fig in figures:
            tracked.log_artifact(fig, "correction")
        dataset, method = execution(cfg).tags["dataset"], execution(cfg).tags["method"]  # names, not computation
        tracked.log_datasets({f"{dataset} corrected labels": PATHS.corrected})
        tracked.log_model(PATHS.final_model, registered=registered_name(cfg),
                          alias=cfg.base.model_alias,
                          tags={"kind": "label-corrected", "method": method, "test_acc": f"{last['test_acc']:.4f}",
                                "test_split": test_split_id(view)})
    return metrics
