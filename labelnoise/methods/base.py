"""The method registry and what a method is given and gives back.

A method is one file in this package that calls :func:`register` with a :class:`Method`: its facts (display
name, whether it uses the MentorNet, whether it scores every train label) and either a ``task`` builder (the
usual case: one fit of the engine with the method's :class:`~labelnoise.engine.Task`) or a ``train`` function
(a method that is more than one fit, such as cleanlab's folds). Code outside the method's file asks the
registry for these facts; it never tests a method's name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from labelnoise.engine import FitResult, Task, fit, log_to_stderr, weight_epochs
from labelnoise.engine.checkpoint import module_fingerprint
from labelnoise.views import TrainView


@dataclass
class MethodContext:
    """Everything a method may use to train the student: never the true train labels (``data`` is a TrainView)."""

    name: str  # the method (student.method)
    params: Any  # its settings (Method.settings: its block student.<name>, with a shared one), None without
    recipe: Any  # the training recipe (params `train`: optimiser, schedule, epochs, batch sizes, precision, ...)
    data: TrainView
    model: nn.Module  # the student network, freshly initialised
    new_model: Callable[[], nn.Module]  # another fresh network of the same kind (global RNG; seed it as needed)
    seed: int
    device: torch.device
    weights_at: Sequence[float] = (1.0,)  # fractions of training whose per-example records are kept
    mentor: nn.Module | None = None  # the pretrained MentorNet (methods that use one)
    mentor_cfg: Any = None  # the mentor params (as its record has them: settled)
    mentor_channel: np.ndarray | None = None  # (K, K) the channel of the DD mentor's corrupted copy (its record's)
    trusted: Any = None  # the budget of a network trained on the trusted subset alone (params `trusted`)
    checkpoint_path: Path | None = None
    on_epoch: Callable[[dict[str, float]], None] | None = None
    log: Callable[[str], None] = log_to_stderr

    def phase_checkpoint(self, phase: str) -> Path | None:
        """The resume checkpoint of one phase of a method that fits more than once: beside ``checkpoint_path``."""
        path = self.checkpoint_path
        return None if path is None else path.with_name(f"{path.stem}.{phase}{path.suffix}")

    def require_trusted(self) -> None:
        """A method that trains on the trusted clean subset: one clear line when there is none."""
        if self.data.x_clean.shape[0] == 0:
            raise ValueError(f"student.method {self.name} needs a trusted clean subset (data.trusted_size > 0 or "
                             "data.trusted_file)")

    @property
    def steps_per_epoch(self) -> int:
        return self.recipe.steps_per_epoch(self.data.x_train.shape[0])

    @property
    def total_steps(self) -> int:
        return self.recipe.epochs * self.steps_per_epoch


@dataclass
class MethodResult:
    """What training the student with a method gives: the final fit (its model, history and best epoch), the
    per-example records of the train examples (``epochs`` (E,), ``loss`` / ``loss_diff`` / ``weight`` (E, n):
    for a method that scores labels, ``weight`` is the score, low = likely wrong), and metrics of its own."""

    fit: FitResult
    weights: dict[str, np.ndarray]
    metrics: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        """What a trained student reports: its last and best epochs (test accuracy: monitoring), its optimiser steps
        (on the trusted set for a method that trains there), the weighting's last mean weight and mentor updates
        where it has them, and the method's own metrics."""
        result, last = self.fit, self.fit.history[-1]
        return {
            "final_clean_acc": last["clean_acc"],
            "final_test_acc": last["test_acc"],  # monitoring; stage evaluate reports the official number
            "final_train_acc_noisy": last["train_acc_noisy"],
            "best_clean_acc": result.best_clean_acc,
            "best_epoch": float(result.best_epoch),
            "epochs": float(len(result.history)),
            "train_steps": float(result.steps),
            **({"final_mean_weight": last["mean_weight"]} if "mean_weight" in last else {}),
            **({"mentor_updates": float(len(result.extra["mentor_updates"]))} if "mentor_updates" in result.extra
               else {}),
            **self.metrics,
        }


@dataclass(frozen=True)
class Method:
    """A training method's facts and entry point."""

    name: str  # the value of student.method
    display: str  # its name in tables and reports ("SPADE"; methods that use the mentor get "-PD" / "-DD")
    summary: str  # one line for the CLI help and the README
    uses_mentor: bool = False  # needs the MentorNet of stage pretrain_mentor
    scores_labels: bool = False  # its records score every train label (noise detection, label issues)
    uses_noisy_labels: bool = True  # False: it trains on the trusted subset alone (its steps count trusted batches)
    order: int = 100  # position in tables and reports (baselines first)
    networks: int = 1  # its model is an Ensemble of this many networks (create_model(..., members=N)): DivideMix's 2
    params: type | None = None  # the dataclass of its params block (student.<name> in params.yaml), if it has one
    shares: tuple[str, type] | None = None  # (another method, the joined dataclass): that method's block holds
    #   settings this one uses too, in one place (mentormix: spade's weighting); settings() joins the two blocks
    note: Callable[[Mapping[str, Any], int, int], str] | None = None  # (its params as trained, a 1-based epoch,
    #   the epochs) → a note on that epoch's records (SPADE's burn-in: its weights are example dropout)
    task: Callable[[MethodContext], Task] | None = None  # one fit of the engine with this task
    train: Callable[[MethodContext], MethodResult] | None = None  # or a training procedure of its own

    def settings(self, student: Any) -> Any:
        """Its settings from the ``student`` params section: its block (None without one), joined to the block it
        shares (``shares``)."""
        own = getattr(student, self.name) if self.params is not None else None
        if self.shares is None:
            return own
        other, joined = self.shares
        return joined(**dataclasses.asdict(getattr(student, other)), **dataclasses.asdict(own))

    def run(self, ctx: MethodContext) -> MethodResult:
        """Train the student: the method's own procedure, or one fit of the engine with its task."""
        if self.train is not None:
            return self.train(ctx)
        assert self.task is not None, f"method {self.name} registers neither a task nor a train function"
        config = self.checkpoint_config(ctx.params, ctx.recipe, seed=ctx.seed, weights_at=ctx.weights_at,
                                        mentor=ctx.mentor, mentor_cfg=ctx.mentor_cfg)
        result = fit(ctx.model, ctx.data, self.task(ctx), recipe=ctx.recipe, seed=ctx.seed, device=ctx.device,
                     config=config, checkpoint_path=ctx.checkpoint_path,
                     record_epochs=weight_epochs(ctx.weights_at, ctx.recipe.epochs), on_epoch=ctx.on_epoch,
                     log=ctx.log, purpose="student", remedy="lower train.lr or check the data")
        return MethodResult(fit=result, weights=result.weights)

    def checkpoint_config(self, params: Any, recipe: Any, *, seed: int, weights_at: Sequence[float] = (),
                          mentor: nn.Module | None = None, mentor_cfg: Any = None) -> dict[str, Any]:
        """What must match for a student checkpoint to be resumed (besides the data, which the engine adds), keyed
        as the params are: the recipe, the method and its block, the seed; for a method that uses the mentor also
        the mentor params and the weights it started from (another mentor.pt is refused)."""
        student = {"method": self.name, "weights_at": list(weights_at),
                   **({self.name: dataclasses.asdict(params)} if params is not None else {})}
        out: dict[str, Any] = {"train": dataclasses.asdict(recipe), "student": student, "seed": seed}
        if self.uses_mentor:
            out["mentor"] = dataclasses.asdict(mentor_cfg) if mentor_cfg is not None else {}
            if mentor is not None:
                out["mentor"]["weights"] = module_fingerprint(mentor)
        return out

    def record_note(self, params: Mapping[str, Any], epoch: int, epochs: int) -> str:
        """A note on the records of ``epoch`` (1-based) of a run of ``epochs`` with the method's ``params``."""
        return self.note(params, epoch, epochs) if self.note is not None else ""

    def display_name(self, mentor_kind: str | None = None) -> str:
        """The table name: "CE", or "SPADE-DD" for a method that uses a DD mentor."""
        return f"{self.display}-{(mentor_kind or '?').upper()}" if self.uses_mentor else self.display


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to the registry (a method file calls this at import); a second one of the same name is an
    error."""
    if method.name in _REGISTRY and _REGISTRY[method.name] is not method:
        raise ValueError(f"method {method.name!r} is registered twice")
    if (method.task is None) == (method.train is None):
        raise ValueError(f"method {method.name!r}: give exactly one of task and train")
    _REGISTRY[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove a method (tests register throw-away ones)."""
    _REGISTRY.pop(name, None)


def get_method(name: str) -> Method:
    """The registered method ``name``; an unknown one is a ValueError naming the known ones."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r} (known: {', '.join(method_names())})")
    return _REGISTRY[name]


def registered() -> list[Method]:
    """Every registered method, in table order."""
    return sorted(_REGISTRY.values(), key=lambda m: (m.order, m.name))


def method_names() -> list[str]:
    return [m.name for m in registered()]


def label_scores(method: Any, weights: Mapping[str, Any]) -> np.ndarray | None:
    """The per-example scores (n,) of the last recorded epoch in a student's ``weights`` (the mentor's v,
    cleanlab's label quality; NaN for an example not seen), or None where they say nothing: ``method`` (its name)
    scores no labels (ce: all ones), is not registered, or no epoch was recorded."""
    if method not in _REGISTRY or not _REGISTRY[method].scores_labels:
        return None
    w = np.asarray(weights.get("weight", ()), dtype=np.float64)
    return w[-1] if w.ndim == 2 and w.shape[0] else None


def display_name(method: str, mentor_kind: str | None = None) -> str:
    """The table name of the method called ``method`` ("CE", "SPADE-DD"); a name no method is registered under
    (a run of an older version in the store) stays as it is."""
    return _REGISTRY[method].display_name(mentor_kind) if method in _REGISTRY else method


def table_names() -> list[str]:
    """The table name of every registered method, in table order (methods that use the mentor: -PD, then -DD)."""
    return [name for m in registered() for name in ([m.display_name("pd"), m.display_name("dd")] if m.uses_mentor
                                                     else [m.display_name()])]
