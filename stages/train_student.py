"""Stage `train_student`: train the student network on the noisy labels with the method `student.method` names
(a plug-in of labelnoise.methods: `ce` the baseline, `spade` MentorNet, `mentormix`, `cleanlab`, ...). The stage
asks the method registry what it needs (a mentor or not) and never which method it runs.

Inputs: PATHS.prepared, PATHS.noisy, and for a method that uses the mentor PATHS.mentor_model (stage
pretrain_mentor; the mentor's params come from its record, so the stage reads none itself). The student sees a
TrainView (noisy train labels, the trusted clean subset, test images for monitoring), never the true train labels;
the corruption mask is not read here.
Outputs: PATHS.student_model (last epoch), PATHS.student_best (best clean-subset accuracy; test accuracy is
never used to choose), PATHS.curves (one CSV row per epoch; a weighting method adds mean_weight and its own
columns, e.g. l_pt, mentor_updates), PATHS.student_weights (npz: epochs (E,), loss / loss_diff / weight
(E, n_train) of every train example in the epochs chosen by `student.weights_at`, NaN where not seen, and the
method; for a method that scores labels the weight is its score, low = likely wrong: the mentor's v, or
cleanlab's label quality; otherwise 1).

Resume checkpoint: PATHS.student_ckpt, written after every epoch and on Ctrl-C (not a DVC out). An unfinished
checkpoint with the same student params, seed and data is resumed and the run ends with the same numbers as an
uninterrupted one; a different config is not resumed (the differing keys are printed) and training starts fresh; a
corrupt checkpoint stops the stage with one line (delete it to start over). A finished checkpoint of the same
config is the result: a stage that failed after training trains nothing again.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from labelnoise import distributed
from labelnoise.auto import settle_stage
from labelnoise.config import Config, ConfigError
from labelnoise.datasets import load_prepared
from labelnoise.engine import save_weights
from labelnoise.io import atomic_path, save_torch
from labelnoise.methods import get_method
from labelnoise.models import create_model, model_record
from labelnoise.noise import load_noisy
from labelnoise.runtime import resolve_device
from labelnoise.steps import student as step
from labelnoise.views import make_train_view, test_split_id
from stages.common import (
    PATHS,
    STAGE_PARAMS,
    registered_name,
    require,
    setup,
    stage_run,
    training_data,
)

CURVE_COLUMNS = ("epoch", "train_loss", "train_acc_noisy", "clean_acc", "test_acc", "lr")
# Metrics that go on the pipeline's parent run instead: a study's table shows each run's budget and how far the
# student fitted its noisy labels (the memorisation report).
HEADLINE = ("train_steps", "final_train_acc_noisy")


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



def _save(trained: Any, n: int, kwargs: dict[str, Any], config: dict[str, Any], cfg: Config,
          classes: list[str]) -> None:
    """The student's outputs: its last and its best-on-the-trusted-subset model (with ``config``, how it trained,
    and the ``classes``' names), its curves, and the per-example records of the ``n`` noisy examples."""
    result, last, model = trained.fit, trained.fit.history[-1], cfg.train.model
    best = create_model(model, **kwargs)
    best.load_state_dict(result.best_state)
    for path, net, epoch, clean_acc in ((PATHS.student_model, result.model, last["epoch"], last["clean_acc"]),
                                        (PATHS.student_best, best, result.best_epoch, result.best_clean_acc)):
        save_torch(path, model_record(net, model_name=model, model_kwargs=kwargs, epoch=int(epoch),
                                      clean_acc=clean_acc, config=config, classes=classes))
    write_curves(PATHS.curves, result.history)
    save_weights(PATHS.student_weights, {key: value[:, :n] if value.ndim == 2 else value  # the noisy examples'
                                         for key, value in trained.weights.items()}, method=cfg.student.method)


def run(cfg: Config) -> dict[str, float]:
    """Train the student; write PATHS.student_model, PATHS.student_best, PATHS.curves, PATHS.student_weights."""
    method = get_method(cfg.student.method)
    require(PATHS.prepared, PATHS.noisy, *([PATHS.mentor_model] if method.uses_mentor else []))
    # auto settings of the method's own block from the noise estimate (the mentor's are in its record)
    cfg, chosen, _ = settle_stage(cfg, STAGE_PARAMS["train_student"], PATHS.noise_estimate,
                                  used=lambda key: key.startswith(f"student.{cfg.student.method}."))
    s, t = cfg.student, cfg.train
    setup(cfg)
    if method.train is not None and distributed.active():
        raise ConfigError(f"student.method {s.method} runs in one process: start it without torchrun")
    # The view replaces the true train labels by the noisy ones (and, for open-set noise, the replaced images)
    view = make_train_view(load_prepared(PATHS.prepared), load_noisy(PATHS.noisy))
    n = view.x_train.shape[0]  # the noisy train examples: the records and outputs are theirs
    # Built before the run opens (unreachable pretrained weights fail in one line, with no run left behind), and
    # first after the seeding, as labelnoise.fit builds it: reading the mentor draws random numbers too
    view, kwargs, model = step.student_network(cfg, view)
    mentor = None
    if method.uses_mentor:  # other methods never read the mentor
        from labelnoise.mentornet import student_mentor

        mentor = student_mentor(PATHS.mentor_model, resolve_device(cfg.base.device))
    mentor_cfg = mentor[1] if mentor is not None else None

    with stage_run("train_student", cfg) as tracked:
        tracked.set_tags({"method": s.method, "model": t.model, **({"mentor": mentor_cfg.kind} if mentor_cfg else {}),
                          **{f"auto.{key}": str(value) for key, value in chosen.items()}})
        trained = step.train_student(cfg, view, model, kwargs, mentor=mentor, checkpoint_path=Path(PATHS.student_ckpt),
                                      on_epoch=lambda row: tracked.log_metrics(
                                          {k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"])))
        last = trained.fit.history[-1]
        if not distributed.is_main():  # torchrun: rank 0 writes the outputs
            return {}
        _save(trained, n, kwargs, method.checkpoint_config(method.settings(s), t, seed=cfg.base.seed,
                                                          weights_at=s.weights_at, mentor_cfg=mentor_cfg), cfg,
              list(view.classes))
        metrics = trained.summary()
        tracked.log_metrics({key: metrics[key] for key in HEADLINE}, on_parent=True)
        tracked.log_metrics({key: v for key, v in metrics.items() if key not in HEADLINE})
        tracked.log_artifact(PATHS.curves)
        tracked.log_datasets(training_data(cfg))
        tracked.log_model(PATHS.student_model, registered=registered_name(cfg),
                          tags={"kind": "student", "method": s.method, "test_acc": f"{last['test_acc']:.4f}",
                                "test_split": test_split_id(view)})
    return metrics
