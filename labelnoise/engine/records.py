"""Per-example records of chosen epochs (loss, loss − l_pt, weight of every train example) and their file format."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from labelnoise import distributed
from labelnoise.io import read_npz, save_npz


def weight_epochs(fractions: Sequence[float], epochs: int) -> list[int]:
    """``student.weights_at`` fractions → the 1-based epochs round(f·epochs) (at least 1), sorted, unique."""
    return sorted({min(epochs, max(1, round(f * epochs))) for f in fractions})


@dataclass
class WeightLog:
    """Per-example loss, loss − l_pt and weight of every train example during chosen epochs.

    Rows follow ``epochs``; columns are positions in the train pool (``TrainView.x_train``); NaN where an
    example was not seen in that epoch. Tensors live on the training device, written without host syncs.
    ``weight`` is the mentor's v before the sampling layer (after burn-in), the example-dropout draw during
    burn-in, and 1 for ``ce``; ``loss_diff`` is NaN for ``ce`` (no l_pt).
    """

    epochs: list[int]  # (E,) 1-based
    loss: Tensor  # (E, N) float32
    loss_diff: Tensor  # (E, N) float32
    weight: Tensor  # (E, N) float32

    @classmethod
    def create(cls, epochs: Sequence[int], n: int, *, device: torch.device) -> WeightLog:
        def nan() -> Tensor:
            return torch.full((len(epochs), n), math.nan, device=device)

        return cls(epochs=list(epochs), loss=nan(), loss_diff=nan(), weight=nan())

    def row(self, epoch: int) -> int | None:
        """Row of the 1-based ``epoch``, None when that epoch is not recorded."""
        return self.epochs.index(epoch) if epoch in self.epochs else None

    def write(self, row: int, idx: Tensor, *, loss: Tensor, loss_diff: Tensor | None, weight: Tensor | None) -> None:
        """Store the (B,) values of the examples at train positions ``idx`` (B,)."""
        self.loss[row, idx] = loss.float()
        if loss_diff is not None:
            self.loss_diff[row, idx] = loss_diff.float()
        self.weight[row, idx] = weight.float() if weight is not None else 1.0

    def merge(self, row: int) -> None:
        """Under torchrun: combine every rank's entries of ``row`` (each example was seen by one rank)."""
        for t in (self.loss, self.loss_diff, self.weight):
            t[row] = distributed.merge_seen(t[row])

    def arrays(self) -> dict[str, np.ndarray]:
        """{"epochs" (E,) int64, "loss", "loss_diff", "weight" (E, N) float32}: what PATHS.student_weights holds."""
        return {"epochs": np.asarray(self.epochs, dtype=np.int64), "loss": self.loss.cpu().numpy(),
                "loss_diff": self.loss_diff.cpu().numpy(), "weight": self.weight.cpu().numpy()}

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": list(self.epochs), "loss": self.loss.cpu(), "loss_diff": self.loss_diff.cpu(),
                "weight": self.weight.cpu()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if list(state["epochs"]) != self.epochs:
            raise ValueError(f"weight log epochs differ: {state['epochs']} saved, {self.epochs} now")
        for name in ("loss", "loss_diff", "weight"):
            getattr(self, name).copy_(state[name])


def save_weights(path: str | Path, weights: Mapping[str, np.ndarray], *, method: str) -> Path:
    """Write a :class:`WeightLog`'s arrays (``FitResult.weights``) plus the method name as npz, atomically."""
    return save_npz(path, **weights, method=np.array(method))


def load_weights(path: str | Path) -> dict[str, Any]:
    """Read :func:`save_weights`' file: {"epochs" (E,), "loss", "loss_diff", "weight" (E, N), "method" str}."""
    out: dict[str, Any] = read_npz(path, remedy="run the train_student stage (dvc repro train_student)",
                                   keys=("epochs", "loss", "weight"))
    out["method"] = str(out["method"]) if "method" in out else ""
    return out


