"""Method ``clean_only``: the trusted clean subset alone, the noisy train labels thrown away.

What a practitioner with a trusted subset tries first, so every method that uses the noisy labels must beat it
(issue 20: on Fashion-MNIST the 5,000 trusted examples alone reach 85–87 % test accuracy). A small set needs more
epochs than the noisy train set and benefits from augmentation, so it has its own budget (``student.clean_only``);
the rest of the recipe (model, optimiser, schedule, lr, batch size) is the shared ``train`` recipe.

The trusted subset is the training data here, so its accuracy cannot select an epoch: the final model is the
last epoch's (and so is the "best" one). The per-example records are the final model's losses on the noisy train
labels (its weights are undefined: it never weighs them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from labelnoise.engine import FitResult, Task, fit, log_to_stderr, predict_logits
from labelnoise.methods.base import Method, MethodContext, MethodResult, register
from labelnoise.schema import rng
from labelnoise.views import TrainView, trusted_only


@dataclass(frozen=True)
class CleanOnlyParams:
    epochs: int = rng(1, 100_000)  # epochs over the trusted subset (5,000 examples: 60 ≈ 2,400 steps at batch 128)
    augment: Literal["auto", "none", "crop_flip"]  # its augmentation (auto: the dataset's default)


def final_losses(ctx: MethodContext, model: torch.nn.Module) -> dict[str, np.ndarray]:
    """Per-example records of a model that did not train on the noisy labels: its cross-entropy against them at
    the last epoch (1, n), no loss_diff or weight (NaN)."""
    logits = predict_logits(model, ctx.data.x_train, batch_size=ctx.recipe.eval_batch_size, device=ctx.device)
    loss = F.cross_entropy(logits, ctx.data.y_train, reduction="none").numpy().astype(np.float64)  # (n,)
    n = loss.shape[0]
    return {"epochs": np.array([ctx.recipe.epochs], dtype=np.int64), "loss": loss[None],
            "loss_diff": np.full((1, n), np.nan), "weight": np.full((1, n), np.nan)}


def train_on_trusted(model: torch.nn.Module, data: TrainView, *, params: CleanOnlyParams, recipe: Any, seed: int,
                     device: torch.device, checkpoint_path: Path | None = None,
                     on_epoch: Callable[[dict[str, float]], None] | None = None,
                     log: Callable[[str], None] = log_to_stderr) -> FitResult:
    """Train ``model`` on the trusted subset of ``data`` alone (its true labels) with the ``student.clean_only``
    budget ``params`` (its epochs and augmentation; the rest of ``recipe`` as it is). Also the trusted teacher
    of label correction (``correction.teacher``)."""
    recipe = dataclasses.replace(recipe, epochs=params.epochs, augment=params.augment)
    log(f"clean_only: {params.epochs} epochs on the {data.x_clean.shape[0]} trusted examples alone")
    return fit(model, trusted_only(data), Task(label_smoothing=recipe.label_smoothing), recipe=recipe, seed=seed,
               device=device, config={"recipe": dataclasses.asdict(recipe), "seed": seed},
               checkpoint_path=checkpoint_path, on_epoch=on_epoch, log=log,
               remedy="lower train.lr or check the data")


def _train(ctx: MethodContext) -> MethodResult:
    ctx.require_trusted()
    result = train_on_trusted(ctx.model, ctx.data, params=ctx.params, recipe=ctx.recipe, seed=ctx.seed,
                              device=ctx.device, checkpoint_path=ctx.checkpoint_path, on_epoch=ctx.on_epoch,
                              log=ctx.log)
    return MethodResult(fit=result, weights=final_losses(ctx, result.model))


METHOD = register(Method(
    name="clean_only", order=1, display="Clean only", params=CleanOnlyParams,
    summary="the trusted clean subset alone (the noisy labels thrown away), its own epochs and augmentation",
    train=_train,
))
