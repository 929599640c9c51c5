"""Test helpers shared by several test modules: a user's Ctrl-C at a chosen training step, and a live SIGINT.

A process started in the background by a non-interactive shell (``cmd &``, ``nohup``, many CI runners)
inherits SIGINT ignored; training then leaves it ignored. Tests that press Ctrl-C therefore first give
the process the disposition a terminal gives it (:func:`live_sigint`), and restore what they found.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def live_sigint() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt inside the block (Python's default in a terminal), whatever was inherited."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def default_sigint() -> None:
    """``preexec_fn`` of a child process that should react to SIGINT as one started from a terminal does."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class SigintAt(nn.Module):
    """Wraps a model; sends SIGINT to this process at the n-th training forward (a user's Ctrl-C)."""

    def __init__(self, model: nn.Module, at: int) -> None:
        super().__init__()
        self.model, self.at, self.calls = model, at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            if self.calls == self.at:
                signal.raise_signal(signal.SIGINT)
        return self.model(x)


def nan_from(model: nn.Module, forward: int) -> nn.Module:
    """Make ``model``'s output NaN from its ``forward``-th training forward on (1-based), in place: a divergence
    at a step the test chooses, whatever the CPU's floating point does. The state dict keeps its keys."""
    calls = 0

    def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        if not module.training:
            return out
        calls += 1
        return out * float("nan") if calls >= forward else out

    model.register_forward_hook(hook)
    return model
