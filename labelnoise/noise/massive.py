"""Noise model ``massive``: Rolnick et al. 2017's setting ("Deep learning is robust to massive label noise"):
``n_clean`` examples keep their labels and ``alpha`` times as many other examples of the split get uniformly random
labels; the rest of the split is unused (``NoisyLabels.index``). The added examples' images are the split's own, or
come from another source (``noise.massive.source``), as in the paper's "noise from another dataset". See
:func:`corrupt_massive`."""

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
    largest_remainder,
    other_images,
    register,
)
from labelnoise.schema import ConfigError, rng

KEY = "noise.massive.source"
TRAIN = "train"  # the source that is the split itself


@dataclass(frozen=True)
class MassiveParams:
    """Params block ``noise.massive``."""

    alpha: float = rng(0.0, 10_000.0)  # noisy (random-label) examples added per clean example
    n_clean: int = rng(0)  # clean examples kept (0: as many as the train split allows)
    source: str  # the added examples' images: train (the split's) | auto | white_noise | a registered dataset


def check(params: MassiveParams, ctx: CheckContext) -> None:
    sources = (TRAIN, *open_set_sources())
    if params.source not in sources:
        raise ConfigError(f"{KEY}: must be one of {', '.join(repr(s) for s in sources)}, got {params.source!r}")
    if ctx.chosen and params.source != TRAIN:  # another source must show none of the dataset's classes
        try:
            resolve_open_set_source(ctx.dataset, params.source, key=KEY)
        except ValueError as e:
            raise ConfigError(str(e)) from None


def massive_sizes(n: int, *, alpha: float, n_clean: int) -> tuple[int, int]:
    """(clean examples kept, random-label examples added) of ``massive`` noise on a split of ``n``:
    ``n_clean`` (0: ``floor(n / (1 + alpha))``) and ``round(alpha · n_clean)``, halves up."""
    if alpha < 0:
        raise ValueError(f"noise.massive.alpha: must be >= 0, got {alpha}")
    keep = n_clean if n_clean > 0 else int(n // (1.0 + alpha))
    extra = int(np.floor(round(alpha * keep, 9) + 0.5))
    if keep < 1 or keep + extra > n:
        raise ValueError(f"noise.massive.n_clean ({keep}) + noise.massive.alpha ({alpha:g}) x n_clean ({extra}) "
                         f"needs {keep + extra} train examples, the split has {n}: lower noise.massive.alpha or "
                         "noise.massive.n_clean")
    return keep, extra


def corrupt_massive(labels: np.ndarray, *, alpha: float, n_clean: int, num_classes: int, rng: np.random.Generator,
                    other_source: bool = False, image_shape: tuple[int, ...] = (),
                    source_images: np.ndarray | None = None) -> NoisyLabels:
    """Massive noise (Rolnick et al. 2017): ``alpha`` noisy examples per clean one.

    From the train split (``labels`` (n,), the true labels), ``n_clean`` examples keep their labels,
    stratified (per class ``largest_remainder`` of the class sizes, the first of each class's seeded
    permutation); ``m = round(alpha · n_clean)`` other examples of the split, drawn at random, get labels
    drawn uniformly from all K classes (so about 1/K of them are right by chance); the rest of the split
    is not used. ``n_clean = 0`` keeps as many as the split allows, ``floor(n / (1 + alpha))``. Returns
    NoisyLabels over the (1 + alpha) · n_clean training examples, with ``index`` their positions.

    ``other_source``: the added examples' images come from another source instead (:func:`draw_images`
    from ``source_images``, or white noise); then ``mask`` marks the added examples and ``images`` holds
    their images (the open-set convention).
    """
    y = check_labels(labels, num_classes)
    n, k = y.shape[0], int(num_classes)
    keep, extra = massive_sizes(n, alpha=alpha, n_clean=n_clean)
    perms = class_permutations(y, k, rng)
    counts = largest_remainder(np.array([p.size for p in perms], dtype=float), keep)  # (K,) stratified
    clean = np.concatenate([p[:c] for p, c in zip(perms, counts, strict=True)])
    rest = np.setdiff1d(np.arange(n), clean)
    added = rng.permutation(rest)[:extra]
    random_labels = rng.integers(0, k, size=extra)
    index = np.sort(np.concatenate([clean, added])).astype(np.int64)
    noisy = y.copy()
    noisy[added] = random_labels
    labels_out = noisy[index]
    if other_source:
        mask = np.isin(index, added)
        images = draw_images(int(mask.sum()), image_shape, rng, source_images, key=KEY)
        return NoisyLabels(labels_out, mask, images, index=index)
    return NoisyLabels(labels_out, labels_out != y[index], index=index)


def apply(inputs: NoiseInputs) -> Applied:
    params, k, n = inputs.params, inputs.num_classes, inputs.labels.size
    other = params.source != TRAIN
    source, pool = other_images(inputs, params.source, key=KEY) if other else (TRAIN, None)
    shape = inputs.dataset().images.shape[1:] if other else ()
    nl = corrupt_massive(inputs.labels, alpha=params.alpha, n_clean=params.n_clean, num_classes=k, rng=inputs.rng,
                         other_source=other, image_shape=shape, source_images=pool)
    keep, added = massive_sizes(n, alpha=params.alpha, n_clean=params.n_clean)
    a = params.alpha  # added examples over all; a random label is right 1 time in K
    return Applied(nl, requested_rate=a / (1.0 + a) * (k - 1) / k, rate_source="noise.massive.alpha",
                   report={"alpha": a, "n_clean": keep, "n_noisy_added": added, "n_train_split": int(n),
                           "massive_source": source})


MODEL = register(NoiseModel(name="massive", summary="n_clean clean examples plus alpha times as many with random "
                            "labels (Rolnick et al. 2017)", class_conditional=True, apply=apply,
                            params=MassiveParams, check=check))
