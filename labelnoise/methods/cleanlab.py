"""Method ``cleanlab``, the peer baseline: confident learning (Northcutt et al. 2021) with the cleanlab
package, prune and retrain.

  1. The noisy train set is cut into ``student.cleanlab.folds`` stratified folds (by noisy label, seeded).
     For each fold a fresh student (same model, epochs, schedule and budget as ``ce``) trains on the other
     folds; its softmax on the held-out fold gives out-of-sample predicted probabilities (n, K)
     (:func:`out_of_fold_probs`, which stage estimate_noise uses too).
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
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from labelnoise.engine import Task, data_fingerprint, fit, log_to_stderr, predict_logits
from labelnoise.io import read_npz, save_npz
from labelnoise.methods.base import Method, MethodContext, MethodResult, register
from labelnoise.models import seeded
from labelnoise.runtime import STREAMS, derived_seed
from labelnoise.schema import rng
from labelnoise.views import TrainView, subset_view


@dataclass
class ConfidentResult:
    """What :func:`prune_and_retrain` returns."""

    fit: Any  # the final student's FitResult (trained on the kept examples)
    issues: np.ndarray  # (n,) bool: flagged by cleanlab, dropped from the final training
    quality: np.ndarray  # (n,) float in [0, 1]: cleanlab's label-quality score (low = likely wrong)
    pred_probs: np.ndarray  # (n, K) out-of-fold predicted probabilities


def stratified_folds(labels: np.ndarray, k: int, *, seed: int) -> np.ndarray:
    """(n,) fold id in 0..k-1: each label's examples shuffled (seeded) and dealt round-robin."""
    if k < 2:
        raise ValueError(f"student.cleanlab.folds: must be >= 2, got {k}")
    rng = np.random.default_rng(seed)
    fold = np.empty(labels.shape[0], dtype=np.int64)
    offset = 0
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        fold[members] = (offset + np.arange(members.size)) % k
        offset += members.size
    return fold


def _config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _softmax(model: nn.Module, x: torch.Tensor, *, recipe: Any, device: torch.device) -> np.ndarray:
    """(m, K) predicted probabilities of ``model`` for the uint8 images ``x``."""
    return torch.softmax(predict_logits(model, x, batch_size=recipe.eval_batch_size, device=device), dim=1).numpy()


def out_of_fold_probs(
    new_model: Callable[[], nn.Module],
    data: TrainView,
    *,
    folds: int,
    recipe: Any,
    seed: int,
    device: torch.device,
    checkpoint_path: Path,
    log: Callable[[str], None] = log_to_stderr,
    also: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Cross-validated predicted probabilities of the noisy train set, (n, K) float32: the train examples are cut
    into ``folds`` stratified folds (by noisy label, seeded), and a fresh network (``new_model()``, seeded per fold,
    plain cross-entropy with ``recipe``) trained on the other folds predicts each. ``also`` (m, C, H, W) uint8:
    images every fold's network predicts too; their probabilities come back second, one (m, K) array per fold,
    (folds, m, K) (else None). Third: the fold of each train example, (n,) int. Each fold's predictions are kept
    beside ``checkpoint_path`` once the fold is done (and each fold's
    training checkpoints there), so a killed run resumes at the fold, and inside it at the epoch, where it
    stopped."""
    task = Task(label_smoothing=recipe.label_smoothing)
    fold_stream = STREAMS["cleanlab_folds"]
    labels = data.y_train.numpy()
    n, k = labels.shape[0], len(data.classes)
    fold = stratified_folds(labels, folds, seed=derived_seed(seed, fold_stream))
    pred_probs = np.zeros((n, k), dtype=np.float32)
    also_probs = None if also is None else np.zeros((folds, also.shape[0], k), dtype=np.float32)
    extra = {} if also is None else {"also": hashlib.sha256(also.numpy().tobytes()).hexdigest()[:16]}
    for f in range(folds):
        held, rest = np.flatnonzero(fold == f), np.flatnonzero(fold != f)
        part = subset_view(data, rest)
        config = {"recipe": dataclasses.asdict(recipe), "seed": seed + f}
        key = _config_hash({**config, "data": data_fingerprint(part), "held": held.tolist(), **extra})
        done = checkpoint_path.with_name(f"{checkpoint_path.stem}.fold{f}.npz")
        saved = read_npz(done, remedy="delete it") if done.is_file() else {}
        if str(saved.get("key", "")) == key:
            pred_probs[held] = saved["probs"]
            if also_probs is not None:
                also_probs[f] = saved["also"]
            log(f"cross-validation fold {f + 1}/{folds}: predictions restored from {done}")
            continue
        log(f"cross-validation fold {f + 1}/{folds}: training on {rest.size} examples, predicting {held.size}")
        model = seeded(new_model, derived_seed(seed, fold_stream + 1 + f))  # independent of restored folds
        fit(model, part, task, recipe=recipe, seed=seed + f, device=device, config=config, log=log,
            checkpoint_path=checkpoint_path.with_name(f"{checkpoint_path.stem}.fold{f}{checkpoint_path.suffix}"),
            remedy="lower train.lr or check the data")

        pred_probs[held] = _softmax(model, data.x_train[torch.from_numpy(held)], recipe=recipe, device=device)
        fold_also = _softmax(model, also, recipe=recipe, device=device) if also is not None else None
        if also_probs is not None:
            also_probs[f] = fold_also
        save_npz(done, probs=pred_probs[held], key=np.array(key), **({"also": fold_also} if also is not None else {}))
    return pred_probs, also_probs, fold


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
                                      checkpoint_path=checkpoint_path, log=log)
    issues, quality = flag_issues(labels, pred_probs, filter_by=cfg.filter_by)
    issues[data.n_noisy:] = False  # trusted examples (include_trusted) are never pruned
    kept = np.flatnonzero(~issues)
    if kept.size == 0:
        raise ValueError("cleanlab flagged every train label; nothing is left to train on")
    log(f"cleanlab: {int(issues.sum())} of {n} labels flagged ({issues.mean():.1%}); retraining on {kept.size}")
    final = fit(seeded(new_model, derived_seed(seed, STREAMS["cleanlab_folds"])), subset_view(data, kept),
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
