"""Cross-fitting: out-of-fold predicted probabilities of a train set, each example predicted by a network that never
saw it (the noise estimate's fold networks, cleanlab's ranking, the misfit check's trusted networks).

Each fold's predictions are kept beside the checkpoints once the fold is done, so a killed run resumes at the fold
(and, inside it, at the epoch) where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from labelnoise.engine.checkpoint import data_fingerprint
from labelnoise.engine.loop import fit, log_to_stderr
from labelnoise.engine.predict import predict_logits
from labelnoise.engine.task import Task
from labelnoise.io import read_npz, save_npz
from labelnoise.runtime import STREAMS, derived_seed, seeded
from labelnoise.views import TrainView, subset_view, without_evaluation


def stratified_folds(labels: np.ndarray, k: int, *, seed: int) -> np.ndarray:
    """(n,) fold id in 0..k-1: each label's examples shuffled (seeded) and dealt round-robin."""
    if k < 2:
        raise ValueError(f"folds: must be >= 2, got {k}")
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
    purpose: str = "fold network",
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
    fold_stream = STREAMS["folds"]
    labels = data.y_train.numpy()
    n, k = labels.shape[0], len(data.classes)
    fold = stratified_folds(labels, folds, seed=derived_seed(seed, fold_stream))
    pred_probs = np.zeros((n, k), dtype=np.float32)
    also_probs = None if also is None else np.zeros((folds, also.shape[0], k), dtype=np.float32)
    extra = {} if also is None else {"also": hashlib.sha256(also.numpy().tobytes()).hexdigest()[:16]}
    for f in range(folds):
        held, rest = np.flatnonzero(fold == f), np.flatnonzero(fold != f)
        part = without_evaluation(subset_view(data, rest))  # its last epoch predicts: nothing to evaluate or select
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
            purpose=purpose, remedy="lower train.lr or check the data")

        pred_probs[held] = _softmax(model, data.x_train[torch.from_numpy(held)], recipe=recipe, device=device)
        fold_also = _softmax(model, also, recipe=recipe, device=device) if also is not None else None
        if also_probs is not None:
            also_probs[f] = fold_also
        save_npz(done, probs=pred_probs[held], key=np.array(key), **({"also": fold_also} if also is not None else {}))
    return pred_probs, also_probs, fold
