"""Noise model ``structured``, after Rolnick et al. 2017 ("Deep learning is robust to massive label noise"), the skew
set by ``delta`` (δ): in class ``c``, ``round(rate n_c)`` labels change and a changed label goes to class ``j != c``
with probability ``q_c(j) = (1 - δ) / (K - 1) + δ·[j = c + 1 mod K]`` (exact counts, as ``transition``): δ = 0 is
``symmetric``'s distribution, δ = 1 is ``pair``, in between the noisy labels concentrate on one confusing class per
class."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from labelnoise.noise.base import Applied, NoiseInputs, NoiseModel, by_class, register
from labelnoise.noise.transition import matrix_rule
from labelnoise.schema import rng


@dataclass(frozen=True)
class StructuredParams:
    """Params block ``noise.structured``."""

    delta: float = rng(0.0, 1.0)  # skew of the noisy labels: 0 uniform over the other classes, 1 all to c + 1


def structured_transition(num_classes: int, *, rate: float, delta: float) -> np.ndarray:
    """The (K, K) row-stochastic matrix of ``structured`` noise: ``T = (1 - rate) I + rate Q`` with
    ``Q[c, j] = (1 - δ) / (K - 1) + δ [j = c + 1 mod K]`` for ``j != c`` and ``Q[c, c] = 0``."""
    k = int(num_classes)
    if k < 2:
        raise ValueError(f"structured noise needs at least 2 classes, got {k}")
    if not 0.0 <= delta <= 1.0:
        raise ValueError(f"noise.structured.delta: must be in [0, 1], got {delta}")
    q = np.full((k, k), (1.0 - delta) / (k - 1))
    np.fill_diagonal(q, 0.0)
    q[np.arange(k), (np.arange(k) + 1) % k] += delta
    return (1.0 - rate) * np.eye(k) + rate * q


def apply(inputs: NoiseInputs) -> Applied:
    delta = inputs.params.delta
    t = structured_transition(inputs.num_classes, rate=inputs.rate, delta=delta)  # one code allots the targets
    return Applied(by_class(inputs, matrix_rule(t)), requested_rate=inputs.rate, report={"delta": delta})


MODEL = register(NoiseModel(name="structured", summary="changed labels skewed towards class c + 1 by delta "
                            "(Rolnick et al. 2017)", class_conditional=True, apply=apply, params=StructuredParams))
