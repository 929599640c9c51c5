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
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from labelnoise.engine import Task, fit, predict_logits
from labelnoise.methods.base import Method, MethodContext, MethodResult, register
from labelnoise.schema import rng
from labelnoise.views import trusted_only


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


def _train(ctx: MethodContext) -> MethodResult:
    p = ctx.params
    ctx.require_trusted()
    recipe = dataclasses.replace(ctx.recipe, epochs=p.epochs, augment=p.augment)
    ctx.log(f"clean_only: {p.epochs} epochs on the {ctx.data.x_clean.shape[0]} trusted examples alone")
    result = fit(ctx.model, trusted_only(ctx.data), Task(label_smoothing=recipe.label_smoothing), recipe=recipe,
                 seed=ctx.seed, device=ctx.device, config={"recipe": dataclasses.asdict(recipe), "seed": ctx.seed},
                 checkpoint_path=ctx.checkpoint_path, on_epoch=ctx.on_epoch, log=ctx.log,
                 remedy="lower train.lr or check the data")
    return MethodResult(fit=result, weights=final_losses(ctx, result.model))


METHOD = register(Method(
    name="clean_only", order=1, display="Clean only", params=CleanOnlyParams,
    summary="the trusted clean subset alone (the noisy labels thrown away), its own epochs and augmentation",
    train=_train,
))
