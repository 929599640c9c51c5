"""Noise model ``open_set``: the label stays, the *image* is replaced by one that belongs to no class of the dataset
(web noise; Wang et al. 2018, "Iterative learning with open-set noisy labels"). The replacement images travel in
``NoisyLabels.images``; see :func:`corrupt_open_set`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from labelnoise.datasets import open_set_sources, resolve_open_set_source
from labelnoise.noise.base import (
    Applied,
    CheckContext,
    NoiseInputs,
    NoiseModel,
    NoisyLabels,
    check_labels,
    class_permutations,
    draw_images,
    n_to_change,
    other_images,
    register,
)
from labelnoise.schema import ConfigError

KEY = "noise.open_set.source"


@dataclass(frozen=True)
class OpenSetParams:
    """Params block ``noise.open_set``."""

    source: str  # auto | white_noise | a registered dataset (labelnoise.datasets.open_set_sources)


def check(params: OpenSetParams, ctx: CheckContext) -> None:
    sources = open_set_sources()
    if params.source not in sources:
        raise ConfigError(f"{KEY}: must be one of {', '.join(repr(s) for s in sources)}, got {params.source!r}")
    if ctx.chosen:  # a source of the dataset's own classes is no open-set noise for it
        try:
            resolve_open_set_source(ctx.dataset, params.source, key=KEY)
        except ValueError as e:
            raise ConfigError(str(e)) from None


def corrupt_open_set(
    labels: np.ndarray,
    *,
    rate: float,
    num_classes: int,
    rng: np.random.Generator,
    image_shape: tuple[int, int, int],
    source_images: np.ndarray | None = None,
) -> NoisyLabels:
    """Open-set noise: the images of exactly ``round(rate · n_c)`` examples of each class are replaced; labels stay.

    Which examples: the same per-class seeded permutations as the label models (so at one seed and rate
    the set equals the one ``symmetric`` changes). The replacements, in increasing example order, are
    ``source_images`` (uint8 (M, *image_shape), already fitted to the dataset's shape) drawn by ``rng``
    without replacement, or with replacement when M is smaller than the number needed (digits: 1797); or,
    when ``source_images`` is None, white noise: i.i.d. uniform uint8 pixels. Returns ``NoisyLabels`` with
    the labels unchanged, ``mask`` the replaced examples and ``images`` (m, *image_shape) uint8.
    """
    y = check_labels(labels, num_classes)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"noise.rate: must be in [0, 1], got {rate}")
    mask = np.zeros(y.shape, dtype=bool)
    for idx in class_permutations(y, int(num_classes), rng):
        mask[idx[: n_to_change(rate, idx.size)]] = True
    images = draw_images(int(mask.sum()), image_shape, rng, source_images, key=KEY)
    return NoisyLabels(y.copy(), mask, images)


def apply(inputs: NoiseInputs) -> Applied:
    inputs.need_classes(2)
    source, pool = other_images(inputs, inputs.params.source, key=KEY)
    nl = corrupt_open_set(inputs.labels, rate=inputs.rate, num_classes=inputs.num_classes, rng=inputs.rng,
                          image_shape=inputs.dataset().images.shape[1:], source_images=pool)
    report = {"open_set_source": source, "open_set_source_param": inputs.params.source,
              "source_pool_size": None if pool is None else len(pool),
              "source_with_replacement": pool is not None and nl.n_changed > len(pool)}
    return Applied(nl, requested_rate=inputs.rate, title=f"open_set noise ({source} images, labels kept)",
                   report=report, tags={"open_set_source": source})


MODEL = register(NoiseModel(name="open_set", summary="images replaced by ones of no class of the dataset, labels "
                            "kept (web noise)", class_conditional=False, apply=apply, params=OpenSetParams,
                            check=check))
