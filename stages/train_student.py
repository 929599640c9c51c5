"""Stage `train_student`: train the student network on the noisy labels, with plain cross-entropy
(`student.method: ce`, the baseline), MentorNet weighting (`spade`: burn-in, then every mini-batch's
examples weighted by the mentor, which may be refitted during training; see labelnoise.training.SpadeTask)
or MentorMix (`mentormix`: the mentor's weights pick mixup partners and ratios; see
labelnoise.training.MentorMixTask), or the confident-learning baseline (`cleanlab`: cross-validated
probabilities, cleanlab flags label issues, a fresh student retrains on the rest; see labelnoise.confident).

Inputs: PATHS.prepared, PATHS.noisy, and for spade / mentormix PATHS.mentor_model (stage pretrain_mentor). The student
sees a TrainView (noisy train labels, the trusted clean subset, test images for monitoring), never the true
train labels; the corruption mask is not read here.
Outputs: PATHS.student_model (last epoch), PATHS.student_best (best clean-subset accuracy; test accuracy is
never used to choose), PATHS.curves (one CSV row per epoch; spade and mentormix add mean_weight, l_pt,
mentor_updates, and mentormix with second_reweight l_pt_mix),
PATHS.student_weights (npz: epochs (E,), loss / loss_diff / weight (E, n_train) of every train example in the
epochs chosen by `student.weights_at`, NaN where not seen, and the method; for ce the weights are 1; for
mentormix the first weighting's v, the one that steers the mixing; for cleanlab one row of cleanlab's
label-quality scores, losses NaN).

Resume checkpoint: PATHS.student_ckpt, written after every epoch and on Ctrl-C (not a DVC out).
An unfinished checkpoint with the same student params, seed and data is resumed and the run ends
with the same numbers as an uninterrupted one; a different config is not resumed (the differing keys are
printed) and training starts fresh; a corrupt checkpoint stops the stage with one line (delete it to
start over). After a successful run the checkpoint is kept, marked finished, for inspection (history,
RNG states); a finished checkpoint is never resumed: the next run starts from scratch and overwrites it.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np

from labelnoise import distributed, tracking
from labelnoise.config import Config, ConfigError
from labelnoise.datasets import load_prepared
from labelnoise.io import atomic_path, save_torch
from labelnoise.models import channel_stats, create_model, model_record
from labelnoise.noise import load_noisy
from labelnoise.runtime import resolve_device
from labelnoise.training import MENTOR_METHODS, checkpoint_config, fit, save_weights
from labelnoise.views import make_train_view
from stages.common import PATHS, require, setup

CURVE_COLUMNS = ("epoch", "train_loss", "train_acc_noisy", "clean_acc", "test_acc", "lr")


def write_curves(path: Any, history: list[dict[str, float]]) -> None:
    """Per-epoch CSV: ``CURVE_COLUMNS``, then any method-specific columns of the history (spade, mentormix:
    mean_weight, l_pt, mentor_updates, ...); an undefined value (no clean subset) is an empty cell."""
    extra = [c for c in (history[0] if history else {}) if c not in CURVE_COLUMNS]
    columns = [*CURVE_COLUMNS, *extra]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in history:
            values = (row.get(c, math.nan) for c in columns)
            writer.writerow(["" if isinstance(v, float) and math.isnan(v) else v for v in values])


def _finite(metrics: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if math.isfinite(v)}


def run(cfg: Config) -> dict[str, float]:
    """Train the student; write PATHS.student_model, PATHS.student_best, PATHS.curves, PATHS.student_weights."""
    s = cfg.student
    uses_mentor = s.method in MENTOR_METHODS
    require(PATHS.prepared, PATHS.noisy, *([PATHS.mentor_model] if uses_mentor else []))
    setup(cfg)
    if s.method == "cleanlab" and distributed.active():
        raise ConfigError("student.method cleanlab runs in one process: start it without torchrun")
    device = resolve_device(cfg.base.device)
    mentor = None
    if uses_mentor:  # ce never reads the mentor
        from labelnoise.mentornet import load_mentor

        mentor = load_mentor(PATHS.mentor_model, device)

    # The view replaces the true train labels by the noisy ones (and, for open-set noise, the replaced
    # images); `prepared` is dropped right after.
    view = make_train_view(load_prepared(PATHS.prepared), load_noisy(PATHS.noisy))
    _, channels, height, width = view.x_train.shape
    mean, std = channel_stats(view.x_train)  # (C,) each, from train images only (no labels)
    model_kwargs: dict[str, Any] = dict(num_classes=len(view.classes), in_channels=channels,
                                        image_size=max(height, width), mean=mean, std=std)
    # Built before the run opens: unreachable pretrained weights fail in one line, with no run left behind.
    model = create_model(s.model, pretrained=s.pretrained, **model_kwargs)

    with tracking.stage_run("train_student", cfg, sections=("student",)) as tracked:
        tracked.set_tags({"method": s.method, "model": s.model,
                          **({"mentor": cfg.mentor.kind} if uses_mentor else {})})
        def on_epoch(row: dict[str, float]) -> None:
            tracked.log_metrics(_finite({k: v for k, v in row.items() if k != "epoch"}), step=int(row["epoch"]))

        extra: dict[str, float] = {}
        if s.method == "cleanlab":  # cross-validated probabilities, prune the flagged labels, retrain
            from labelnoise.confident import prune_and_retrain

            cl = prune_and_retrain(lambda: create_model(s.model, pretrained=s.pretrained, **model_kwargs), view,
                                   cfg=s, seed=cfg.base.seed, device=device, checkpoint_path=Path(PATHS.student_ckpt),
                                   on_epoch=on_epoch)
            result = cl.fit
            n = cl.quality.shape[0]  # the label-quality score stands in for the weight (low = likely wrong)
            weights = {"epochs": np.array([s.epochs], dtype=np.int64), "loss": np.full((1, n), np.nan),
                       "loss_diff": np.full((1, n), np.nan), "weight": cl.quality[None].astype(np.float64)}
            extra = {"cleanlab_flagged": float(cl.issues.sum()), "cleanlab_flagged_rate": float(cl.issues.mean())}
        else:
            result = fit(model, view, cfg=s, seed=cfg.base.seed, device=device, checkpoint_path=PATHS.student_ckpt,
                         on_epoch=on_epoch, mentor=mentor, mentor_cfg=cfg.mentor)
            weights = result.weights
        last = result.history[-1]
        if not distributed.is_main():  # torchrun: rank 0 writes the outputs
            return {}
        config = checkpoint_config(s, seed=cfg.base.seed, mentor_cfg=cfg.mentor)
        save_torch(PATHS.student_model, model_record(result.model, model_name=s.model, model_kwargs=model_kwargs,
                                               epoch=int(last["epoch"]), clean_acc=last["clean_acc"], config=config))
        best = create_model(s.model, **model_kwargs)
        best.load_state_dict(result.best_state)
        save_torch(PATHS.student_best, model_record(best, model_name=s.model, model_kwargs=model_kwargs,
                                                    epoch=result.best_epoch, clean_acc=result.best_clean_acc,
                                                    config=config))
        write_curves(PATHS.curves, result.history)
        save_weights(PATHS.student_weights, weights, method=s.method)

        metrics = {
            "final_clean_acc": last["clean_acc"],
            "final_test_acc": last["test_acc"],  # monitoring; stage evaluate reports the official number
            "final_train_acc_noisy": last["train_acc_noisy"],
            "best_clean_acc": result.best_clean_acc,
            "best_epoch": float(result.best_epoch),
            "epochs": float(len(result.history)),
        }
        if uses_mentor:
            metrics["final_mean_weight"] = last["mean_weight"]  # fraction of the data the last epoch used
            metrics["mentor_updates"] = float(len(result.extra["mentor_updates"]))
        metrics |= extra
        tracked.log_metrics(_finite(metrics))
        tracked.log_artifact(PATHS.curves)
    return metrics
