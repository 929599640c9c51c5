"""Method ``cleanlab``, the peer baseline: confident learning (Northcutt et al. 2021) with the cleanlab
package, prune and retrain.

  1. The noisy train set is cut into ``student.cleanlab_folds`` stratified folds (by noisy label, seeded).
     For each fold a fresh student (same model, epochs, schedule and budget as ``ce``) trains on the other
     folds; its softmax on the held-out fold gives out-of-sample predicted probabilities (n, K).
  2. ``cleanlab.filter.find_label_issues(noisy labels, pred_probs, filter_by=student.cleanlab_filter_by)``
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
from typing import Any

import numpy as np
import torch
from torch import nn

from labelnoise.io import read_npz, save_npz
from labelnoise.views import TrainView

_FOLD_STREAM = 41  # derived_seed stream of the fold assignment


@dataclass
class ConfidentResult:
    """What :func:`prune_and_retrain` returns."""

    fit: Any  # the final student's FitResult (trained on the kept examples)
    issues: np.ndarray  # (n,) bool: flagged by cleanlab, dropped from the final training
    quality: np.ndarray  # (n,) float in [0, 1]: cleanlab's label-quality score (low = likely wrong)
    pred_probs: np.ndarray  # (n, K) out-of-fold predicted probabilities


def subset_view(data: TrainView, idx: np.ndarray) -> TrainView:
    """``data`` with only the train examples ``idx`` (clean subset, val and test unchanged)."""
    index = torch.from_numpy(np.asarray(idx, dtype=np.int64))
    return dataclasses.replace(data, x_train=data.x_train[index], y_train=data.y_train[index])


def stratified_folds(labels: np.ndarray, k: int, *, seed: int) -> np.ndarray:
    """(n,) fold id in 0..k-1: each label's examples shuffled (seeded) and dealt round-robin."""
    if k < 2:
        raise ValueError(f"student.cleanlab_folds: must be >= 2, got {k}")
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


def prune_and_retrain(
    new_model: Callable[[], nn.Module],
    data: TrainView,
    *,
    cfg: Any,
    seed: int,
    device: torch.device,
    checkpoint_path: Path,
    log: Callable[[str], None] | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> ConfidentResult:
    """Steps 1–3 above. ``new_model()`` builds a fresh student; ``cfg`` is the StudentConfig (method
    cleanlab); every fit writes its own resume checkpoint beside ``checkpoint_path`` (the final one at it);
    ``on_epoch`` sees the final student's epochs only."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    from labelnoise.training import _stderr, checkpoint_config, derived_seed, fit, predict_logits

    log = log or _stderr

    ce = dataclasses.replace(cfg, method="ce")

    def seeded_model(stream: int) -> nn.Module:  # initial weights independent of what ran before (restored folds)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derived_seed(seed, stream))
            return new_model()

    labels = data.y_train.numpy()
    n, k = labels.shape[0], data.num_classes
    fold = stratified_folds(labels, cfg.cleanlab_folds, seed=derived_seed(seed, _FOLD_STREAM))
    pred_probs = np.zeros((n, k), dtype=np.float32)
    for f in range(cfg.cleanlab_folds):
        held, rest = np.flatnonzero(fold == f), np.flatnonzero(fold != f)
        part = subset_view(data, rest)
        key = _config_hash({**checkpoint_config(ce, seed=seed + f, data=part), "held": held.tolist()})
        done = checkpoint_path.with_name(f"{checkpoint_path.stem}.fold{f}.npz")
        saved = read_npz(done, remedy="delete it") if done.is_file() else {}
        if str(saved.get("key", "")) == key:
            pred_probs[held] = saved["probs"]
            log(f"cleanlab fold {f + 1}/{cfg.cleanlab_folds}: predictions restored from {done}")
            continue
        log(f"cleanlab fold {f + 1}/{cfg.cleanlab_folds}: training on {rest.size} examples, predicting {held.size}")
        model = seeded_model(_FOLD_STREAM + 1 + f)
        fit(model, part, cfg=ce, seed=seed + f, device=device, log=log,
            checkpoint_path=checkpoint_path.with_name(f"{checkpoint_path.stem}.fold{f}{checkpoint_path.suffix}"))
        logits = predict_logits(model, data.x_train[torch.from_numpy(held)], batch_size=cfg.eval_batch_size,
                                device=device)
        pred_probs[held] = torch.softmax(logits, dim=1).numpy()
        save_npz(done, probs=pred_probs[held], key=np.array(key))
    issues = find_label_issues(labels, pred_probs, filter_by=cfg.cleanlab_filter_by)
    quality = get_label_quality_scores(labels, pred_probs)
    kept = np.flatnonzero(~issues)
    if kept.size == 0:
        raise ValueError("cleanlab flagged every train label; nothing is left to train on")
    log(f"cleanlab: {int(issues.sum())} of {n} labels flagged ({issues.mean():.1%}); retraining on {kept.size}")
    final = fit(seeded_model(_FOLD_STREAM), subset_view(data, kept), cfg=ce, seed=seed, device=device, log=log,
                checkpoint_path=checkpoint_path, on_epoch=on_epoch)
    return ConfidentResult(fit=final, issues=np.asarray(issues, dtype=bool), quality=np.asarray(quality),
                           pred_probs=pred_probs)
