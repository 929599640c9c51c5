"""Test helpers shared by several test modules: a user's Ctrl-C at a chosen training step, a live SIGINT, a NaN
at a chosen step, and the project's import graph (parsed, not imported).

A process started in the background by a non-interactive shell (``cmd &``, ``nohup``, many CI runners)
inherits SIGINT ignored; training then leaves it ignored. Tests that press Ctrl-C therefore first give
the process the disposition a terminal gives it (:func:`live_sigint`), and restore what they found.
"""

from __future__ import annotations

import ast
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


REPO = Path(__file__).resolve().parent.parent


def project_modules(*packages: str) -> dict[str, Path]:
    """Dotted name → file of every module of ``packages`` (folders at the repository root)."""
    out = {}
    for package in packages:
        for path in (REPO / package).rglob("*.py"):
            rel = path.relative_to(REPO).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            out[".".join(parts)] = path
    return out


def import_graph(*packages: str) -> dict[str, set[str]]:
    """Module → the modules of ``packages`` it imports anywhere in its file (module level, functions,
    TYPE_CHECKING). A package's ``__init__`` importing its own modules is no edge back to the package."""
    modules = project_modules(*packages)
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                base = node.module
                if node.level:
                    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [node.module])
                targets = [base, *(f"{base}.{a.name}" for a in node.names)]
            found |= {t for t in targets if t in modules and t != name}
        if path.name == "__init__.py":
            found = {t for t in found if not t.startswith(name + ".")}
        graph[name] = found
    return graph


# ----------------------------------------------------------------------------- params overlays
RECIPE_KEYS = ("model", "pretrained", "epochs", "batch_size", "eval_batch_size", "lr", "momentum", "nesterov",
               "weight_decay", "schedule", "milestones", "gamma", "warmup_epochs", "onecycle_pct_start", "augment",
               "crop_padding", "precision", "channels_last", "label_smoothing")
SPADE_KEYS = ("burn_in", "burn_in_keep", "weight_norm", "sample_weights", "mentor_update", "mentor_update_every",
              "mentor_update_steps", "mentor_update_batches", "mentor_update_lr_drop")
MIX_KEYS = ("mixup_alpha", "mix_temperature", "second_reweight")


def split_student(overlay: dict) -> dict:
    """A params overlay whose ``student`` section is written flat (recipe keys, method keys and method-block keys
    together, as a test states a run) → the params' own layout: recipe keys under ``train``, a method's keys in
    its block ``student.<method>`` (SPADE's weighting keys go to the block of the overlay's method, spade by
    default). Other sections pass through."""
    out = {k: v for k, v in overlay.items() if k != "student"}
    student = dict(overlay.get("student", {}))
    method = student.get("method", "spade")
    new: dict = {}
    for key, value in student.items():
        if key in RECIPE_KEYS:
            out.setdefault("train", {})[key] = value
        elif key in SPADE_KEYS:
            new.setdefault(method if method in ("spade", "mentormix") else "spade", {})[key] = value
        elif key in MIX_KEYS:
            new.setdefault("mentormix", {})[key] = value
        else:
            new[key] = value
    if new:
        out["student"] = new
    return out
