"""Noise model ``transition``: a row-stochastic K x K matrix ``T`` (``T[c, j]`` = P(noisy j | true c)). In class ``c``
exactly ``round((1 - T[c, c]) n_c)`` labels change, and their new classes are allotted in exact counts, by
largest-remainder rounding of ``T[c, j] / (1 - T[c, c])``, ``j != c``. ``noise.rate`` is ignored: the matrix says how
much changes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from labelnoise.noise.base import (
    Applied,
    CheckContext,
    NoiseInputs,
    NoiseModel,
    Rule,
    by_class,
    largest_remainder,
    n_to_change,
    register,
)
from labelnoise.schema import ConfigError

KEY = "noise.transition.matrix"


@dataclass(frozen=True)
class TransitionParams:
    """Params block ``noise.transition``."""

    matrix: list[list[float]]  # row-stochastic K x K, [[...], ...]


def check(params: TransitionParams, ctx: CheckContext) -> None:
    if not ctx.chosen:  # K is the data's: only its shape and rows can be checked here
        return
    rows = params.matrix
    if not rows or any(len(r) != len(rows) for r in rows):
        raise ConfigError(f"{KEY}: must be a square K x K matrix")
    for i, r in enumerate(rows):
        if any(p < 0 for p in r) or abs(sum(r) - 1.0) > 1e-6:
            raise ConfigError(f"{KEY}[{i}]: row must be non-negative and sum to 1, sums to {sum(r):.6g}")


def checked_matrix(matrix: Any, num_classes: int) -> np.ndarray:
    """``matrix`` as a (K, K) row-stochastic float array, or ValueError naming the param."""
    t = np.asarray(matrix, dtype=float)
    if t.shape != (num_classes, num_classes):
        raise ValueError(f"{KEY}: must be a {num_classes} x {num_classes} matrix (one row per class), "
                         f"got shape {t.shape}")
    if (t < 0).any() or not np.allclose(t.sum(axis=1), 1.0, atol=1e-6):
        raise ValueError(f"{KEY}: rows must be non-negative and sum to 1")
    return t


def matrix_rule(t: np.ndarray) -> Rule:
    """The rule of a (K, K) row-stochastic ``t``: in class c, round((1 - t[c, c]) n_c) change, sent to the other
    classes in the exact counts of t's off-diagonal row (largest remainders)."""
    k = len(t)

    def rule(c: int, n_c: int, rng: np.random.Generator) -> np.ndarray:
        off = t[c].copy()
        off[c] = 0.0
        counts = largest_remainder(off, n_to_change(1.0 - t[c, c], n_c))  # (K,) exact number to each class, 0 at c
        # The permutation is random, so giving consecutive blocks to each target is too.
        return np.repeat(np.arange(k), counts)

    return rule


def apply(inputs: NoiseInputs) -> Applied:
    t = checked_matrix(inputs.params.matrix, inputs.num_classes)
    prior = np.bincount(inputs.labels, minlength=inputs.num_classes) / max(inputs.labels.size, 1)  # (K,)
    return Applied(by_class(inputs, matrix_rule(t)), requested_rate=float(prior @ (1.0 - np.diag(t))),
                   rate_source=KEY)


MODEL = register(NoiseModel(name="transition", summary="any row-stochastic K x K matrix, in exact counts per class",
                            class_conditional=True, apply=apply, params=TransitionParams, check=check))
