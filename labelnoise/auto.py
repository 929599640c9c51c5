"""Settings from the noise estimate, not from the user: the params whose value may be ``auto``, and the machinery that
turns stage estimate_noise's estimate (reports/noise_estimate.json) into each. A user does not know the noise rate;
the papers' settings are per noise level (their tables), so ``auto`` reads the level off the estimate.

Each rule lives with the code whose param it settles and registers itself here (:func:`rule`): the MentorNet's
(``mentor.percentile``, ``mentor.dd_noise_kind``) in :mod:`labelnoise.mentornet`, a method's in its file
(``student.mentormix.*``), label correction's (``correction.teacher``, ``correction.noisy_label_weight``) in
:mod:`labelnoise.correction`. :data:`RULES` lists them all, each with its one-line rule and source.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from labelnoise.io import load_json

AUTO = "auto"

@dataclass(frozen=True)
class NoiseEstimate:
    """What the auto rules read of stage estimate_noise's report: the estimated noise rate r̂ and transition
    matrix T̂ (K, K), and the estimator that gave them."""

    rate: float
    transition: np.ndarray
    use: str
    n_trusted: int = 0
    class_conditional: bool = True  # the misfit check passed, or there was none (nothing speaks against it)

    @property
    def num_classes(self) -> int:
        return int(self.transition.shape[0])

    @property
    def structured(self) -> bool:
        """The estimated noise is structured ("asymmetric" in the papers' tables: each class's wrong labels mostly go
        to one other class), not spread over the other classes: on average over the classes, the largest
        off-diagonal entry of T̂'s row holds more than half of the row's off-diagonal mass (symmetric noise: 1/(K−1)
        of it; pair flips: all of it). An estimated rate under 2 % is not structured."""
        t = np.asarray(self.transition, dtype=np.float64)
        off = t * (1.0 - np.eye(t.shape[0]))
        mass = off.sum(axis=1)
        rows = mass > 1e-9
        if self.rate < 0.02 or not rows.any():
            return False
        return bool((off.max(axis=1)[rows] / mass[rows]).mean() > 0.5)

    @classmethod
    def from_report(cls, report: dict[str, Any]) -> NoiseEstimate:
        t = np.asarray(report["transition"], dtype=np.float64)
        fit = report.get("fit") or {}
        return cls(rate=float(report["rate"]), transition=t, use=str(report["use"]),
                   n_trusted=int(report.get("n_trusted", 0)),
                   class_conditional=bool(fit.get("class_conditional", True)))


def auto_keys(cfg: Any, entries: Iterable[str]) -> list[str]:
    """The dotted keys under ``entries`` (params sections, blocks or keys) whose value is ``auto`` and that a rule
    settles (no other key is read)."""
    entries = tuple(entries)
    keys = []
    for key in sorted(RULES):
        if not any(key == e or key.startswith(e + ".") for e in entries):
            continue
        value = cfg
        for name in key.split("."):
            value = getattr(value, name)
        if value == AUTO:
            keys.append(key)
    return keys


def settle(cfg: Any, estimate: NoiseEstimate, keys: list[str]) -> tuple[Any, dict[str, Any]]:
    """``cfg`` with the ``auto`` params in ``keys`` replaced by their rule's value, and {key: value} of every key
    settled (for the run's records). A rule that answers :data:`KEEP` leaves ``auto`` in place (the stage that
    reads it takes T̂ from ``estimate``) and records its note."""
    chosen: dict[str, Any] = {}
    for key in keys:
        r = RULES[key]
        value = r.value(estimate, cfg)
        chosen[key] = r.note(estimate) if r.note is not None else value
        if value is not KEEP:
            cfg = replace_at(cfg, key, value)
    return cfg, chosen


def replace_at(cfg: Any, key: str, value: Any) -> Any:
    """``cfg`` (nested frozen dataclasses) with the dotted ``key`` set to ``value``."""
    head, _, rest = key.partition(".")
    inner = value if not rest else replace_at(getattr(cfg, head), rest, value)
    return dataclasses.replace(cfg, **{head: inner})


def settle_stage(cfg: Any, params: Iterable[str], estimate: str | Path | NoiseEstimate, *,
                 used: Callable[[str], bool] = lambda key: True) -> tuple[Any, dict[str, Any], NoiseEstimate | None]:
    """A stage's ``auto`` params settled from the noise estimate: ``estimate``, or the report at that path (stage
    estimate_noise's). Those under ``params`` (the stage's entries: sections, blocks or keys) that this run
    ``used`` (e.g. a method's own block's only). Returns (the config with values in their place, {key: value
    chosen}, the estimate, or None when nothing the run uses is auto). A missing report is one line naming the
    params that need it."""
    keys = [key for key in auto_keys(cfg, [k for k in RULES if used(k) and any(
        k == p or k.startswith(p + ".") for p in params)])]  # only keys under the stage's entries, that it uses
    if not keys:
        return cfg, {}, None
    if not isinstance(estimate, NoiseEstimate):
        if not Path(estimate).is_file():
            raise FileNotFoundError(f"{estimate} does not exist: {', '.join(keys)} = auto read the noise estimate; "
                                    "run stage estimate_noise first (dvc repro), or set them to values")
        estimate = NoiseEstimate.from_report(load_json(estimate))
    settled, chosen = settle(cfg, estimate, keys)
    return settled, chosen, estimate


def refuse_unsettled(params: Any, block: str, keys: Iterable[str], stage: str = "train_student") -> None:
    """A task built with a param of ``keys`` still ``auto`` (``auto`` is truthy: it must never reach the arithmetic):
    one ValueError naming the first, ``block.key``, and the stage that settles it."""
    unsettled = [key for key in keys if getattr(params, key) == AUTO]
    if unsettled:
        raise ValueError(f"{block}.{unsettled[0]}: auto is settled from the noise estimate by stage {stage} "
                         "(labelnoise.auto.settle_stage); give a value to train the task directly")


KEEP = object()  # a rule's value that leaves ``auto`` in the config (the reader takes T̂ from the estimate)


@dataclass(frozen=True)
class Rule:
    """How ``key`` is set when its value is ``auto``: ``value(estimate, cfg)`` (or KEEP), ``doc`` the rule in one
    line (the run's records), ``note(estimate)`` what the run records it chose (default: the value)."""

    key: str
    doc: str
    value: Callable[[NoiseEstimate, Any], Any]
    note: Callable[[NoiseEstimate], str] | None = None


RULES: dict[str, Rule] = {}  # key -> its rule, registered by the module that owns the param


def rule(key: str, doc: str, value: Callable[[NoiseEstimate, Any], Any],
         note: Callable[[NoiseEstimate], str] | None = None) -> Rule:
    """Register the ``auto`` rule of the param ``key`` (called at import by the module that owns it)."""
    if key in RULES and RULES[key].value is not value:
        raise ValueError(f"auto rule {key!r} is registered twice")
    RULES[key] = Rule(key, doc, value, note)
    return RULES[key]


def estimated_channel(estimate: NoiseEstimate) -> str:
    """The note of a rule that hands the estimated transition matrix to the stage."""
    return f"the estimated transition matrix ({estimate.use}, rate {estimate.rate:.3f})"
