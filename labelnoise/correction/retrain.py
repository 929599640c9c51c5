"""Phase 2 of label correction: a fresh network trained on the corrected soft labels (soft-target cross-entropy,
its own lr and schedule); it is the final model. Tanaka et al. 2018's second step."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labelnoise.engine import FitResult, Task, fit, log_to_stderr, module_fingerprint
from labelnoise.runtime import derived_seed
from labelnoise.views import TrainView


def compatibility_loss(logits: Tensor, soft_labels: Tensor) -> Tensor:
    """L_c = −(1/B) Σ_i Σ_j y_ij log s_ij with s = softmax(logits).

    logits (B, C), soft_labels (B, C) (rows sum to 1) → () scalar. Equals KL(y‖s) averaged over the batch
    plus the labels' mean entropy, which does not depend on the network.
    """
    return -(soft_labels.float() * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def soft_cross_entropy(logits: Tensor, soft_labels: Tensor) -> dict[str, Tensor]:
    """Phase-2 loss: soft-target cross-entropy (= L_c, no prior or entropy term). → {"loss", "l_c"}."""
    l_c = compatibility_loss(logits, soft_labels)
    return {"loss": l_c, "l_c": l_c}


class SoftTargetTask(Task):
    """Phase 2 in the engine: soft-target cross-entropy against fixed labels ``targets`` (N, C) on the device."""

    def __init__(self, targets: Tensor) -> None:
        super().__init__()
        self.targets = targets

    def __call__(self, model: nn.Module, xb: Tensor, yb: Tensor, *, step: int,
                 idx: Tensor | None = None) -> dict[str, Tensor]:
        logits = model(xb).float()  # (B, K)
        soft = self.targets[idx]  # (B, C)
        return {"loss": compatibility_loss(logits, soft), "logits": logits, "target": soft.argmax(dim=1)}


def phase_recipe(recipe: Any, *, lr: float, schedule: str, epochs: int) -> Any:
    """The training recipe (momentum, Nesterov, weight decay, batch size, milestones, ...) with a phase's own lr,
    schedule and length. Phase 1 uses a constant lr without warm-up (official code); phase 2 keeps the recipe's
    warm-up."""
    warmup = 0.0 if schedule == "constant" else recipe.warmup_epochs
    return dataclasses.replace(recipe, lr=lr, schedule=schedule, epochs=epochs, warmup_epochs=warmup)


def _digest(t: Tensor | np.ndarray | None) -> str | None:
    if t is None:
        return None
    a = np.ascontiguousarray(t.cpu().numpy() if isinstance(t, Tensor) else t)
    return hashlib.blake2b(a.tobytes(), digest_size=8).hexdigest()


@dataclass
class RetrainResult:
    """Phase 2's outcome: ``model`` holds the last epoch's weights (the final model), in eval mode."""

    model: nn.Module
    history: list[dict[str, float]]  # epoch, loss, train_acc (vs the corrected labels), clean_acc, test_acc, lr
    best_state: dict[str, Tensor]  # the epoch with the best clean-subset accuracy (reported, not the final model)
    best_epoch: int
    best_clean_acc: float
    seconds: float
    resumed_epochs: float = 0


def _phase_history(result: FitResult) -> list[dict[str, float]]:
    """The engine's rows with this module's names: ``loss`` (the epoch's mean loss) and ``train_acc`` (agreement
    with the current labels)."""
    names = {"train_loss": "loss", "train_acc_noisy": "train_acc"}
    return [{names.get(k, k): v for k, v in row.items()} for row in result.history]


def _renamed(on_epoch: Callable[[dict[str, float]], None] | None) -> Callable[[dict[str, float]], None] | None:
    if on_epoch is None:
        return None
    names = {"train_loss": "loss", "train_acc_noisy": "train_acc"}
    return lambda row: on_epoch({names.get(k, k): v for k, v in row.items()})


def retrain(
    model: nn.Module,
    data: TrainView,
    soft_labels: Tensor,
    *,
    cfg: Any,
    recipe: Any,
    seed: int,
    device: torch.device | str = "cpu",
    checkpoint_path: str | Path | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    log: Callable[[str], None] = log_to_stderr,
) -> RetrainResult:
    """Phase 2: train the fresh network ``model`` on ``soft_labels`` (N, C) (the corrected labels of
    ``data.x_train``) with soft-target cross-entropy for ``cfg.retrain_epochs`` epochs, lr
    ``cfg.retrain_lr`` on schedule ``cfg.retrain_schedule`` (other SGD settings from the recipe).
    The best clean-subset epoch is tracked (model selection; test accuracy is monitoring only)."""
    device = torch.device(device)
    n = data.x_train.shape[0]
    if soft_labels.shape != (n, len(data.classes)):
        raise ValueError(f"soft labels of shape {tuple(soft_labels.shape)}, expected ({n}, {len(data.classes)})")
    config = {"correction": dataclasses.asdict(cfg), "recipe": dataclasses.asdict(recipe), "seed": seed,
              "init": module_fingerprint(model), "labels": _digest(soft_labels)}
    phase = phase_recipe(recipe, lr=cfg.retrain_lr, schedule=cfg.retrain_schedule, epochs=cfg.retrain_epochs)
    result = fit(model, data, SoftTargetTask(soft_labels.float().to(device)), recipe=phase,
                 seed=derived_seed(seed, "retrain"), device=device, config=config, checkpoint_path=checkpoint_path,
                 progress=False, on_epoch=_renamed(on_epoch), log=log, name="retrain",
                 purpose="label correction: retrain",
                 remedy="label correction (phase 2): lower correction.retrain_lr")
    return RetrainResult(model=result.model, history=_phase_history(result), best_state=result.best_state,
                         best_epoch=result.best_epoch, best_clean_acc=result.best_clean_acc, seconds=result.seconds,
                         resumed_epochs=result.resumed_epochs)
