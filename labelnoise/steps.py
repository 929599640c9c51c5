"""The pipeline's training steps on data in memory. A stage reads its inputs, calls its step, writes the outputs
and records its run; :func:`labelnoise.fitting.fit` calls the same steps in a row, with no file, DVC or MLflow in
between. Every step takes the whole config (its ``auto`` params settled by :func:`labelnoise.auto.settle_stage`)
and a TrainView, never a true train label.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from labelnoise import runtime
from labelnoise.auto import NoiseEstimate
from labelnoise.datasets import Prepared
from labelnoise.engine import log_to_stderr
from labelnoise.methods import MethodContext, MethodResult, get_method
from labelnoise.models import channel_stats, create_model
from labelnoise.views import TrainView, with_trusted

OnEpoch = Callable[[dict[str, float]], None]


def network_kwargs(view: TrainView, *, members: int = 1) -> dict[str, Any]:
    """:func:`labelnoise.models.create_model`'s keyword arguments for ``view``'s images: the class count, channels,
    size and the per-channel statistics of the train images (no label is read); ``members`` > 1: an ensemble."""
    _, channels, height, width = view.x_train.shape
    mean, std = channel_stats(view.x_train)  # (C,) each
    return dict(num_classes=len(view.classes), in_channels=channels, image_size=max(height, width), mean=mean,
                std=std, **({"members": members} if members > 1 else {}))


def estimate_noise(cfg: Any, view: TrainView, *, checkpoint_path: Path,
                   log: Callable[[str], None] = log_to_stderr) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Stage estimate_noise's step: :func:`labelnoise.noise_estimate.estimate` with the recipe's networks. Returns
    (the report, the misfit check's trusted-only predictions)."""
    from labelnoise.noise_estimate import estimate

    kwargs = network_kwargs(view)
    return estimate(view, cfg=cfg.estimate, trusted=cfg.trusted, recipe=cfg.train,
                    new_model=lambda: create_model(cfg.train.model, **kwargs), seed=cfg.base.seed,
                    device=runtime.resolve_device(cfg.base.device), checkpoint_path=checkpoint_path, log=log)


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


def student_network(cfg: Any, view: TrainView) -> tuple[TrainView, dict[str, Any], nn.Module]:
    """What stage train_student builds before it trains (so unreachable pretrained weights fail before a run
    opens): the view it trains on (with ``student.include_trusted`` the trusted subset follows the noisy examples,
    its true labels), the network's keyword arguments, and the network."""
    method = get_method(cfg.student.method)
    if cfg.student.include_trusted and view.x_clean.shape[0]:
        view = with_trusted(view)
    kwargs = network_kwargs(view, members=method.networks)
    return view, kwargs, create_model(cfg.train.model, pretrained=cfg.train.pretrained, **kwargs)


def train_student(cfg: Any, view: TrainView, model: nn.Module, kwargs: dict[str, Any], *,
                  mentor: tuple[nn.Module, Any, np.ndarray | None] | None, checkpoint_path: Path | None,
                  on_epoch: OnEpoch | None = None, log: Callable[[str], None] = log_to_stderr) -> MethodResult:
    """Stage train_student's step: ``cfg.student.method`` trains ``model`` (from :func:`student_network`) on
    ``view``; ``mentor``: (the MentorNet, its settled params, its copy's channel) for a method that uses one."""
    s, t = cfg.student, cfg.train
    net, mentor_cfg, channel = mentor if mentor is not None else (None, None, None)
    ctx = MethodContext(name=s.method, params=getattr(s, s.method, None), recipe=t, data=view, model=model,
                        new_model=lambda: create_model(t.model, pretrained=t.pretrained, **kwargs),
                        seed=cfg.base.seed, device=runtime.resolve_device(cfg.base.device), weights_at=s.weights_at,
                        mentor=net, mentor_cfg=mentor_cfg, mentor_channel=channel, trusted=cfg.trusted,
                        checkpoint_path=checkpoint_path, on_epoch=on_epoch, log=log)
    return get_method(s.method).run(ctx)


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
    return correction.correct(
        view, student,
        lambda stream: runtime.seeded(lambda: create_model(model_name, **kwargs),
                                      runtime.derived_seed(cfg.base.seed, stream)),
        cfg=c, trusted=cfg.trusted, recipe=correction_recipe(cfg, model_name), seed=cfg.base.seed,
        device=runtime.resolve_device(cfg.base.device),
        transition=estimate.transition if estimate is not None and c.noisy_label_weight == "auto" else None,
        weights=weights if c.trust_mentor else None, trusted_probs=trusted_probs,
        checkpoint_path=checkpoint_path, on_epoch=on_epoch, log=log)

