"""Stage estimate_noise's step."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from labelnoise import runtime
from labelnoise.engine import log_to_stderr
from labelnoise.models import create_model, network_kwargs
from labelnoise.views import TrainView


def estimate_noise(cfg: Any, view: TrainView, *, checkpoint_path: Path,
                   log: Callable[[str], None] = log_to_stderr) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Stage estimate_noise's step: :func:`labelnoise.noise_estimate.estimate` with the recipe's networks. Returns
    (the report, the misfit check's trusted-only predictions)."""
    from labelnoise.noise_estimate import estimate

    kwargs = network_kwargs(view.x_train, len(view.classes))
    return estimate(view, cfg=cfg.estimate, trusted=cfg.trusted, recipe=cfg.train,
                    new_model=lambda: create_model(cfg.train.model, **kwargs), seed=cfg.base.seed,
                    device=runtime.resolve_device(cfg.base.device), checkpoint_path=checkpoint_path, log=log)
