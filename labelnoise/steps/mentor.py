"""Stage pretrain_mentor's step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from labelnoise import runtime
from labelnoise.auto import NoiseEstimate
from labelnoise.datasets import Prepared
from labelnoise.engine import log_to_stderr


def mentor_uses(cfg: Any) -> Callable[[str], bool]:
    """Which ``auto`` keys the mentor step reads: the mentor's, but ``dd_noise_kind`` only for a DD mentor (a PD
    mentor has no corrupted copy)."""
    return lambda key: key.startswith("mentor.") and (key != "mentor.dd_noise_kind" or cfg.mentor.kind == "dd")


def pretrain_mentor(cfg: Any, prepared: Prepared, *, estimate: NoiseEstimate | None, given: np.ndarray | None,
                    log: Callable[[str], None] = log_to_stderr) -> Any:
    """Stage pretrain_mentor's step: the mentor of ``cfg.mentor`` (settled), seeded with ``mentor.seed``; a DD
    mentor on the estimated channel (``dd_noise_kind: auto``) is corrupted with ``estimate``'s T̂, or with ``given``
    (the noisy source's own labels of the trusted examples) where known. Returns the
    :class:`labelnoise.mentornet.pretrain.Pretrained`."""
    from labelnoise.mentornet.pretrain import pretrain

    generator = runtime.seed_everything(cfg.mentor.seed, deterministic=cfg.base.deterministic)
    on_channel = cfg.mentor.kind == "dd" and cfg.mentor.dd_noise_kind == "auto"
    return pretrain(cfg.mentor, prepared, recipe=cfg.train, generator=generator,
                    device=runtime.resolve_device(cfg.base.device),
                    transition=estimate.transition if on_channel else None, given=given if on_channel else None,
                    log=log)
