"""What the engine asks of a method (timm's ``TrainingTask`` shape): one mini-batch's loss, hooks between steps and
between epochs, a summary for the history, and a state for checkpoints.

:class:`Task` is the base class with the plain behaviour (mean cross-entropy on the given labels, no hooks, no
state); a method overrides what it needs. The engine never asks which method it runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn


class Task:
    """One mini-batch's forward pass and loss, plus hooks. Subclasses override :meth:`__call__` and what else
    they need.

    ``__call__`` returns {"loss": () to minimise, "logits": (B, K)} and, optionally, (B,) detached parts:
    "per_example" (each example's loss), "loss_diff" (loss − l_pt), "weight" (what multiplied the loss),
    "mentor_weight" (the mentor's v before a sampling layer), "target" (int64 labels the train accuracy is
    measured against, default the given labels); any other 0-dim tensor is a named part of the loss, averaged
    over the epoch into the history. ``idx`` (B,) are the examples' positions in the train split.
    """

    weighted = False  # the task weights examples: the history gets mean_weight

    def __init__(self, *, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = label_smoothing

    def __call__(self, model: nn.Module, xb: Tensor, yb: Tensor, *, step: int,
                 idx: Tensor | None = None) -> dict[str, Tensor]:
        logits = model(xb)  # (B, K)
        return {"loss": F.cross_entropy(logits, yb, label_smoothing=self.label_smoothing), "logits": logits}

    def per_example(self, logits: Tensor, yb: Tensor) -> Tensor:
        """(B,) detached per-example losses, for the epochs whose records are kept (when the batch gave none)."""
        return F.cross_entropy(logits.detach().float(), yb, reduction="none", label_smoothing=self.label_smoothing)

    def after_step(self, model: nn.Module, *, step: int, lr: float, next_lr: float) -> None:
        """Between two optimiser steps (``step`` just finished, 0-based); ``model`` is the bare network."""

    def end_epoch(self, model: nn.Module, *, epoch: int) -> dict[str, float]:
        """After the last step of ``epoch`` (1-based), before evaluation: refit what depends on the whole epoch
        (a label buffer, a mixture model of the losses, ...). Returns fields for the epoch's history row."""
        return {}

    def result(self) -> dict[str, Any]:
        """What the task adds to the fit's result (``FitResult.extra``), e.g. SPADE's mentor refits."""
        return {}

    def summary(self) -> dict[str, float]:
        """Fields for every history row of a weighting task (l_pt, refits so far, ...)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass
