"""Noise model ``asymmetric``: only the source classes of a class map ``{src: dst}`` change, each to its ``dst``
(Patrini et al. 2017). Classes not in the map are untouched, so the overall realised rate is below ``noise.rate``,
which is the rate within the mapped classes. ``auto`` is the dataset's shipped map
(:func:`labelnoise.datasets.class_map_for`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from labelnoise.datasets import class_map_for
from labelnoise.noise.base import Applied, CheckContext, NoiseInputs, NoiseModel, by_class, n_to_change, register
from labelnoise.schema import ConfigError

KEY = "noise.asymmetric.class_map"


@dataclass(frozen=True)
class AsymmetricParams:
    """Params block ``noise.asymmetric``."""

    class_map: str | dict[int, int]  # "auto" (the dataset's shipped map) or {src: dst}


def check(params: AsymmetricParams, ctx: CheckContext) -> None:
    if ctx.chosen and isinstance(params.class_map, str):  # "auto" needs a dataset that ships a map
        try:
            class_map_for(ctx.dataset, params.class_map, key=KEY)
        except ValueError as e:
            raise ConfigError(str(e)) from None


def checked_map(class_map: Mapping[int, int] | None, num_classes: int) -> dict[int, int]:
    """``class_map`` as {src: dst} ints of distinct classes in [0, K), or ValueError naming the param."""
    if not class_map:
        raise ValueError(f"{KEY}: asymmetric noise needs a non-empty class map {{src: dst}}")
    out = {int(k): int(v) for k, v in class_map.items()}
    for k, v in out.items():
        if not (0 <= k < num_classes and 0 <= v < num_classes):
            raise ValueError(f"{KEY}: {k}: {v} is not a pair of classes in 0..{num_classes - 1}")
        if k == v:
            raise ValueError(f"{KEY}: {k}: {v} maps a class onto itself")
    return out


def apply(inputs: NoiseInputs) -> Applied:
    spec = inputs.params.class_map
    raw = class_map_for(inputs.dataset().dataset, spec, key=KEY) if isinstance(spec, str) else spec
    cmap = checked_map(raw, inputs.num_classes)
    y, rate = inputs.labels, inputs.rate
    if rate > 0 and not np.isin(list(cmap), y).any():  # before anything is drawn
        present = sorted(set(np.unique(y).tolist()))
        raise ValueError(f"{KEY}: none of its source classes {sorted(cmap)} occurs in the labels "
                         f"(classes present: {present}), so noise.rate={rate} cannot be reached")

    def rule(c: int, n_c: int, rng: np.random.Generator) -> np.ndarray:
        return np.full(n_to_change(rate, n_c) if c in cmap else 0, cmap.get(c, c), dtype=np.int64)

    return Applied(by_class(inputs, rule), requested_rate=rate,
                   title="asymmetric noise (rate within the mapped classes)",
                   report={"class_map": {str(a): b for a, b in sorted(cmap.items())}})


MODEL = register(NoiseModel(name="asymmetric", summary="the classes of a class map {src: dst} change to their dst",
                            class_conditional=True, apply=apply, params=AsymmetricParams, check=check))
