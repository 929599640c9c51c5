"""Stage correct_labels' step."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from labelnoise import runtime
from labelnoise.auto import NoiseEstimate
from labelnoise.engine import log_to_stderr
from labelnoise.models import create_model
from labelnoise.views import TrainView

OnEpoch = Callable[[dict[str, float]], None]


def correction_recipe(cfg: Any, model_name: str) -> Any:
    """The recipe label correction trains with: the student's network (``model_name``), from scratch, for
    ``correction.retrain_epochs``."""
    return dataclasses.replace(cfg.train, model=model_name, pretrained=False, epochs=cfg.correction.retrain_epochs)


def correct_labels(cfg: Any, view: TrainView, student: nn.Module, model_name: str, model_kwargs: dict[str, Any], *,
                   estimate: NoiseEstimate | None, weights: dict[str, np.ndarray] | None,
                   trusted_probs: dict[str, np.ndarray] | None, checkpoint_path: Path | None,
                   on_epoch: Callable[[str], OnEpoch | None] = lambda phase: None,
                   log: Callable[[str], None] = log_to_stderr) -> Any:
    """Stage correct_labels' step: :func:`labelnoise.correction.correct` from the trained ``student`` (its network
    ``model_name`` built with ``model_kwargs``), fresh networks of the same kind seeded per stream; the estimated
    T̂ where ``correction.noisy_label_weight`` is ``auto``; ``weights``: the student's per-example records (for
    ``correction.trust_mentor``); ``trusted_probs``: the noise estimate's trusted-only predictions."""
    from labelnoise import correction

    c, kwargs = cfg.correction, {**model_kwargs, "pretrained": False}
    device = runtime.resolve_device(cfg.base.device)
    # its own copy of the student (the caller's network stays as it was), in the memory layout training gives it
    # (train.channels_last): one read from models/student.pt then gives the numbers of one straight from training
    layout = torch.channels_last if runtime.resolve_channels_last(cfg.train.channels_last, device) else None
    own = copy.deepcopy(student).to(memory_format=layout or torch.contiguous_format)
    return correction.correct(
        view, own,
        lambda stream: runtime.seeded(lambda: create_model(model_name, **kwargs),
                                      runtime.derived_seed(cfg.base.seed, stream)),
        cfg=c, trusted=cfg.trusted, recipe=correction_recipe(cfg, model_name), seed=cfg.base.seed,
        device=device,
        transition=estimate.transition if estimate is not None and c.noisy_label_weight == "auto" else None,
        weights=weights if c.trust_mentor else None, trusted_probs=trusted_probs,
        checkpoint_path=checkpoint_path, on_epoch=on_epoch, log=log)
