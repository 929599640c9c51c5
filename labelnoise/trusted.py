"""Networks trained on the trusted subset alone (its true labels; the noisy labels never seen), with the budget of
params section ``trusted``: the ``clean_only`` baseline, the noise estimate's misfit check and label correction's
trusted teacher all train them.

A small set needs more epochs than the noisy train set and benefits from augmentation, so it has its own epochs
and augmentation; the rest of the recipe (network, optimiser, schedule, lr, batch size) is the shared ``train``
recipe. The trusted subset is the training data here, so its accuracy cannot select an epoch: the final model is
the last epoch's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from labelnoise.engine import FitResult, Task, fit, log_to_stderr
from labelnoise.schema import rng
from labelnoise.views import TrainView, trusted_only


@dataclass(frozen=True)
class TrustedConfig:
    """Params section ``trusted``."""

    epochs: int = rng(1, 100_000)  # epochs over the trusted subset (5,000 examples: 60 ≈ 2,400 steps at batch 128)
    augment: Literal["auto", "none", "crop_flip"]  # its augmentation (auto: the dataset's default)


def trusted_recipe(recipe: Any, cfg: TrustedConfig) -> Any:
    """``recipe`` with the trusted budget's epochs and augmentation."""
    return dataclasses.replace(recipe, epochs=cfg.epochs, augment=cfg.augment)


def train_on_trusted(model: torch.nn.Module, data: TrainView, *, cfg: TrustedConfig, recipe: Any, seed: int,
                     device: torch.device, checkpoint_path: Path | None = None,
                     on_epoch: Callable[[dict[str, float]], None] | None = None,
                     log: Callable[[str], None] = log_to_stderr) -> FitResult:
    """Train ``model`` on the trusted subset of ``data`` alone with the budget ``cfg`` (plain cross-entropy;
    resumable at ``checkpoint_path``)."""
    recipe = trusted_recipe(recipe, cfg)
    log(f"{cfg.epochs} epochs on the {data.x_clean.shape[0]} trusted examples alone")
    return fit(model, trusted_only(data), Task(label_smoothing=recipe.label_smoothing), recipe=recipe, seed=seed,
               device=device, config={"recipe": dataclasses.asdict(recipe), "seed": seed},
               checkpoint_path=checkpoint_path, on_epoch=on_epoch, log=log, purpose="trusted-only network",
               remedy="lower train.lr or check the data")
