"""Stage train_student's step."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from labelnoise import runtime
from labelnoise.engine import log_to_stderr
from labelnoise.methods import MethodContext, MethodResult, get_method
from labelnoise.models import create_model, network_kwargs
from labelnoise.views import TrainView, with_trusted

OnEpoch = Callable[[dict[str, float]], None]


def student_network(cfg: Any, view: TrainView) -> tuple[TrainView, dict[str, Any], nn.Module]:
    """What stage train_student builds before it trains (so unreachable pretrained weights fail before a run
    opens): the view it trains on (with ``student.include_trusted`` the trusted subset follows the noisy examples,
    its true labels), the network's keyword arguments, and the network."""
    method = get_method(cfg.student.method)
    if cfg.student.include_trusted and view.x_clean.shape[0]:
        view = with_trusted(view)
    kwargs = network_kwargs(view.x_train, len(view.classes), members=method.networks)
    return view, kwargs, create_model(cfg.train.model, pretrained=cfg.train.pretrained, **kwargs)


def train_student(cfg: Any, view: TrainView, model: nn.Module, kwargs: dict[str, Any], *,
                  mentor: tuple[nn.Module, Any, np.ndarray | None] | None, checkpoint_path: Path | None,
                  on_epoch: OnEpoch | None = None, log: Callable[[str], None] = log_to_stderr) -> MethodResult:
    """Stage train_student's step: ``cfg.student.method`` trains ``model`` (from :func:`student_network`) on
    ``view``; ``mentor``: (the MentorNet, its settled params, its copy's channel) for a method that uses one."""
    s, t = cfg.student, cfg.train
    net, mentor_cfg, channel = mentor if mentor is not None else (None, None, None)
    ctx = MethodContext(name=s.method, params=get_method(s.method).settings(s), recipe=t, data=view, model=model,
                        new_model=lambda: create_model(t.model, pretrained=t.pretrained, **kwargs),
                        seed=cfg.base.seed, device=runtime.resolve_device(cfg.base.device), weights_at=s.weights_at,
                        mentor=net, mentor_cfg=mentor_cfg, mentor_channel=channel, trusted=cfg.trusted,
                        checkpoint_path=checkpoint_path, on_epoch=on_epoch, log=log)
    return get_method(s.method).run(ctx)
