"""Method ``cleanlab``, the peer baseline: confident learning (Northcutt et al. 2021) with the cleanlab
package, prune and retrain.

  1. The noisy train set is cut into ``student.cleanlab.folds`` stratified folds (by noisy label, seeded).
     For each fold a fresh student (same model, epochs, schedule and budget as ``ce``) trains on the other
     folds; its softmax on the held-out fold gives out-of-sample predicted probabilities (n, K)
     (:func:`labelnoise.engine.folds.out_of_fold_probs`, which the noise estimate uses too).
  2. ``cleanlab.filter.find_label_issues(noisy labels, pred_probs, filter_by=student.cleanlab.filter_by)``
     flags the label issues; ``cleanlab.rank.get_label_quality_scores`` scores every label (low = likely
     wrong; the detection score compared with the mentor's weights).
  3. A fresh student trains with cross-entropy on the examples not flagged.

Only noisy labels are used (a TrainView); model selection inside every fit is by clean-subset accuracy,
as for the other methods. Each fold's predictions are kept beside the checkpoints once the fold is done,
so a killed run resumes at the fold (and, inside it, the epoch) where it stopped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from labelnoise.engine import Task, fit, log_to_stderr
from labelnoise.engine.folds import out_of_fold_probs
from labelnoise.methods.base import Method, MethodContext, MethodResult, register
from labelnoise.runtime import STREAMS, derived_seed, seeded
from labelnoise.schema import rng
from labelnoise.views import TrainView, subset_view


@dataclass
class ConfidentResult:
    """What :func:`prune_and_retrain` returns."""

    fit: Any  # the final student's FitResult (trained on the kept examples)
    issues: np.ndarray  # (n,) bool: flagged by cleanlab, dropped from the final training
    quality: np.ndarray  # (n,) float in [0, 1]: cleanlab's label-quality score (low = likely wrong)
    pred_probs: np.ndarray  # (n, K) out-of-fold predicted probabilities


def flag_issues(labels: np.ndarray, pred_probs: np.ndarray, *, filter_by: str) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab on (n,) labels and (n, K) out-of-sample probabilities: (the label issues (n,) bool, the label-quality
    scores (n,) float in [0, 1], low = likely wrong). In this process: cleanlab's default ``n_jobs`` is a
    multiprocessing pool, which forks this multi-threaded process (torch's and MLflow's threads), and a forked child
    can deadlock on a lock one of them held at that moment."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    issues = find_label_issues(labels, pred_probs, filter_by=filter_by, n_jobs=1)
    return np.asarray(issues, dtype=bool), np.asarray(get_label_quality_scores(labels, pred_probs))


def prune_and_retrain(
    new_model: Callable[[], nn.Module],
    data: TrainView,
    *,
    cfg: Any,
    recipe: Any,
    seed: int,
    device: torch.device,
    checkpoint_path: Path,
    log: Callable[[str], None] = log_to_stderr,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> ConfidentResult:
    """Steps 1–3 above. ``new_model()`` builds a fresh student; ``cfg`` is the method's params (``folds``,
    ``filter_by``), ``recipe`` the training recipe of every fit; every fit writes its own resume checkpoint
    beside ``checkpoint_path`` (the final one at it); ``on_epoch`` sees the final student's epochs only."""
    labels = data.y_train.numpy()
    n = labels.shape[0]
    pred_probs, _, _ = out_of_fold_probs(new_model, data, folds=cfg.folds, recipe=recipe, seed=seed, device=device,
                                      checkpoint_path=checkpoint_path, log=log, purpose="cleanlab: fold network")
    issues, quality = flag_issues(labels, pred_probs, filter_by=cfg.filter_by)
    issues[data.n_noisy:] = False  # trusted examples (include_trusted) are never pruned
    kept = np.flatnonzero(~issues)
    if kept.size == 0:
        raise ValueError("cleanlab flagged every train label; nothing is left to train on")
    log(f"cleanlab: {int(issues.sum())} of {n} labels flagged ({issues.mean():.1%}); retraining on {kept.size}")
    final = fit(seeded(new_model, derived_seed(seed, STREAMS["folds"])), subset_view(data, kept),
                Task(label_smoothing=recipe.label_smoothing), recipe=recipe, seed=seed, device=device,
                config={"recipe": dataclasses.asdict(recipe), "seed": seed}, checkpoint_path=checkpoint_path,
                on_epoch=on_epoch, log=log, remedy="lower train.lr or check the data")
    return ConfidentResult(fit=final, issues=np.asarray(issues, dtype=bool), quality=np.asarray(quality),
                           pred_probs=pred_probs)


@dataclass(frozen=True)
class CleanlabParams:
    folds: int = rng(2, 100)  # cross-validation folds for the out-of-sample probabilities (each fold: the ce budget)
    filter_by: Literal["prune_by_noise_rate", "prune_by_class", "both", "confident_learning",
                       "predicted_neq_given"]  # find_label_issues' rule (cleanlab's default first)


def _train(ctx: MethodContext) -> MethodResult:
    """cleanlab as the student: its label-quality score stands in for the weight (low = likely wrong)."""
    cl = prune_and_retrain(ctx.new_model, ctx.data, cfg=ctx.params, recipe=ctx.recipe, seed=ctx.seed, device=ctx.device,
                           checkpoint_path=Path(ctx.checkpoint_path), log=ctx.log, on_epoch=ctx.on_epoch)
    n = cl.quality.shape[0]
    weights = {"epochs": np.array([ctx.recipe.epochs], dtype=np.int64), "loss": np.full((1, n), np.nan),
               "loss_diff": np.full((1, n), np.nan), "weight": cl.quality[None].astype(np.float64)}
    metrics = {"cleanlab_flagged": float(cl.issues.sum()), "cleanlab_flagged_rate": float(cl.issues.mean())}
    return MethodResult(fit=cl.fit, weights=weights, metrics=metrics)


METHOD = register(Method(
    name="cleanlab", order=10, display="Cleanlab", scores_labels=True, params=CleanlabParams,
    summary="confident learning: cross-validated probabilities, prune the flagged labels, retrain",
    train=_train,
))
