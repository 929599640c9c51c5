"""Noise model ``symmetric``: each changed label becomes a uniformly drawn *other* class."""

from __future__ import annotations

import numpy as np

from labelnoise.noise.base import Applied, NoiseInputs, NoiseModel, by_class, n_to_change, register


def apply(inputs: NoiseInputs) -> Applied:
    inputs.need_classes(2)
    k, rate = inputs.num_classes, inputs.rate

    def rule(c: int, n_c: int, rng: np.random.Generator) -> np.ndarray:
        # A uniform offset in 1..K-1 gives a uniform class other than c; drawn for all n_c so the targets of the
        # first m do not depend on the rate (a higher rate keeps a lower one's targets).
        offsets = rng.integers(1, k, size=n_c)
        return (c + offsets[: n_to_change(rate, n_c)]) % k

    return Applied(by_class(inputs, rule), requested_rate=rate)


MODEL = register(NoiseModel(name="symmetric", summary="each changed label becomes a uniformly drawn other class",
                            class_conditional=True, apply=apply))
