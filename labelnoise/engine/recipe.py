"""The training recipe: params section ``train``, shared by every network the project trains (the student, the DD
mentor's recording student, both label-correction phases, the instance-noise reference classifier, cleanlab's
folds). A use that needs other values overrides them where the use is configured (``mentor.dd_epochs``,
``correction.lr``, ``noise.reference_*``), with :func:`dataclasses.replace` on this recipe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from labelnoise.schema import ConfigError, rng


@dataclass(frozen=True)
class Recipe:
    model: str  # an architecture of labelnoise.models (models.list_models())
    pretrained: bool  # torchvision weights (resnet18 only; needs network access)
    epochs: int = rng(1, 10_000)
    epoch_size: int = rng(0)  # examples per epoch: 0 = the training set once; more = the set repeated (a fresh
    #                           order each time) up to this many, so sets of any size get the same steps per epoch
    batch_size: int = rng(1, 65_536)
    eval_batch_size: int = rng(1, 65_536)
    lr: float = rng(0.0, 10.0, lo_open=True)  # peak learning rate
    momentum: float = rng(0.0, 1.0)
    nesterov: bool
    weight_decay: float = rng(0.0, 1.0)
    schedule: Literal["constant", "multistep", "cosine", "onecycle"]
    milestones: list[float]  # multistep: fractions of training where lr *= gamma, e.g. [0.5, 0.75]
    lr_gamma: float = rng(0.0, 1.0, lo_open=True)  # multistep decay factor
    warmup_epochs: float = rng(0.0)  # linear warm-up (multistep, cosine)
    onecycle_pct_start: float = rng(0.0, 1.0, lo_open=True)
    augment: Literal["auto", "none", "crop_flip"]  # auto: the dataset's own default (crop_flip for CIFAR)
    crop_padding: int = rng(0, 64)
    precision: Literal["auto", "fp32", "bf16"]  # auto: bf16 autocast on CUDA and on CPUs with native bf16, else fp32
    channels_last: Literal["auto", "on", "off"]  # auto: on (faster on CUDA and on CPU for the CNN)
    label_smoothing: float = rng(0.0, 1.0)

    def steps_per_epoch(self, n: int) -> int:
        """Optimiser steps of one epoch over a training set of ``n`` examples."""
        return math.ceil(max(n, self.epoch_size) / self.batch_size)

    def check(self, prefix: str = "train") -> None:
        """Cross-field rules (ConfigError naming the key)."""
        if any(not 0.0 < m < 1.0 for m in self.milestones) or list(self.milestones) != sorted(self.milestones):
            raise ConfigError(f"{prefix}.milestones: must be increasing fractions of training in (0, 1)")
        if self.warmup_epochs >= self.epochs:
            raise ConfigError(f"{prefix}.warmup_epochs: must be < {prefix}.epochs ({self.epochs})")
