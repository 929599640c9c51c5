"""Method ``clean_only``: the trusted clean subset alone, the noisy train labels thrown away.

What a practitioner with a trusted subset tries first, so every method that uses the noisy labels must beat it
(on Fashion-MNIST the 5,000 trusted examples alone reach 85–87 % test accuracy). The network and its budget are
those of :mod:`labelnoise.trusted` (params section ``trusted``: its own epochs and augmentation).

The trusted subset is the training data here, so its accuracy cannot select an epoch: the final model is the
last epoch's (and so is the "best" one). The per-example records are the final model's losses on the noisy train
labels (its weights are undefined: it never weighs them).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from labelnoise.engine import predict_logits
from labelnoise.methods.base import Method, MethodContext, MethodResult, register
from labelnoise.trusted import train_on_trusted


def final_losses(ctx: MethodContext, model: torch.nn.Module) -> dict[str, np.ndarray]:
    """Per-example records of a model that did not train on the noisy labels: its cross-entropy against them at
    the last epoch (1, n), no loss_diff or weight (NaN)."""
    logits = predict_logits(model, ctx.data.x_train, batch_size=ctx.recipe.eval_batch_size, device=ctx.device)
    loss = F.cross_entropy(logits, ctx.data.y_train, reduction="none").numpy().astype(np.float64)  # (n,)
    n = loss.shape[0]
    return {"epochs": np.array([ctx.recipe.epochs], dtype=np.int64), "loss": loss[None],
            "loss_diff": np.full((1, n), np.nan), "weight": np.full((1, n), np.nan)}


def _train(ctx: MethodContext) -> MethodResult:
    ctx.require_trusted()
    result = train_on_trusted(ctx.model, ctx.data, cfg=ctx.trusted, recipe=ctx.recipe, seed=ctx.seed,
                              device=ctx.device, checkpoint_path=ctx.checkpoint_path, on_epoch=ctx.on_epoch,
                              log=ctx.log)
    return MethodResult(fit=result, weights=final_losses(ctx, result.model))


METHOD = register(Method(
    name="clean_only", order=1, display="Clean only", uses_noisy_labels=False,
    summary="the trusted clean subset alone (the noisy labels thrown away), the budget of params `trusted`",
    train=_train,
))
