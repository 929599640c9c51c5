"""The optimiser and the learning-rate schedules every network of the project trains with.

``recipe`` is any object with the training recipe's fields (``lr``, ``momentum``, ``nesterov``, ``weight_decay``,
``epochs``, ``schedule``, ``milestones``, ``lr_gamma``, ``warmup_epochs``, ``onecycle_pct_start``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def make_optimizer(model: nn.Module, recipe: Any) -> torch.optim.SGD:
    """SGD with (Nesterov) momentum and L2 weight decay on all parameters."""
    # Nesterov with zero momentum is plain SGD; torch refuses the combination, so drop the flag then.
    return torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov and recipe.momentum > 0,
        weight_decay=recipe.weight_decay,
    )


def lr_factor(
    step: int, *, schedule: str, total_steps: int, warmup_steps: int, milestones: list[float], gamma: float,
    pct_start: float,
) -> float:
    """Multiplier of the base lr at optimiser step ``step`` (0-based) of ``total_steps``.

    - ``constant`` / ``multistep`` / ``cosine``: optional linear warm-up over ``warmup_steps``
      ((step+1)/warmup, so the first step already moves), then 1 / ``gamma`` ** (milestones passed,
      milestones being fractions of all steps) / half a cosine from 1 to 0.
    - ``onecycle`` (Smith & Topin 2019): linear ramp to the peak over ``pct_start`` of training, then
      half a cosine down to 0. Momentum is not cycled, so ``student.momentum`` means what it says.
    """
    if schedule == "onecycle":
        peak = max(1, round(pct_start * total_steps))
        if step < peak:
            return (step + 1) / peak
        return 0.5 * (1.0 + math.cos(math.pi * (step - peak) / max(1, total_steps - peak)))
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "multistep":
        return gamma ** sum(step >= round(m * total_steps) for m in milestones)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / max(1, total_steps - warmup_steps)))
    raise ValueError(f"unknown lr schedule {schedule!r}")


def make_scheduler(
    optimizer: torch.optim.Optimizer, recipe: Any, *, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration LambdaLR following :func:`lr_factor` (call ``.step()`` after every optimiser step)."""
    total = recipe.epochs * steps_per_epoch
    warmup = round(recipe.warmup_epochs * steps_per_epoch) if recipe.schedule != "onecycle" else 0

    def factor(step: int) -> float:
        return lr_factor(step, schedule=recipe.schedule, total_steps=total, warmup_steps=warmup,
                         milestones=list(recipe.milestones), gamma=recipe.lr_gamma, pct_start=recipe.onecycle_pct_start)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


