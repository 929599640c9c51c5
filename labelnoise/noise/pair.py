"""Noise model ``pair``: class ``k`` becomes ``k + 1 mod K`` (pair flipping, Han et al. 2018, Co-teaching)."""

from __future__ import annotations

import numpy as np

from labelnoise.noise.base import Applied, NoiseInputs, NoiseModel, by_class, n_to_change, register


def apply(inputs: NoiseInputs) -> Applied:
    inputs.need_classes(2)
    k, rate = inputs.num_classes, inputs.rate

    def rule(c: int, n_c: int, rng: np.random.Generator) -> np.ndarray:
        return np.full(n_to_change(rate, n_c), (c + 1) % k, dtype=np.int64)

    return Applied(by_class(inputs, rule), requested_rate=rate)


MODEL = register(NoiseModel(name="pair", summary="class k becomes k + 1 mod K (pair flipping)", class_conditional=True,
                            apply=apply))
