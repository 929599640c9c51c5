"""Label-noise models: corrupt an array of labels with an exact, seeded, class-conditional noise.

Every model here is class-conditional: whether and how a label changes depends only on its class.
``rate`` is the *exact* fraction of labels changed, per class: in each class ``c`` with ``n_c``
examples exactly ``round(rate * n_c)`` labels change (half rounds up). This differs from the
"uniform over all K classes, the true one included" convention of some papers (there a noise
level ``r`` changes only ``r (K - 1) / K`` of the labels): to match such a table, pass
``rate = r * (K - 1) / K``.

Models (``kind``):

- ``none``: nothing changes (``rate`` is ignored).
- ``symmetric``: each changed label becomes a uniformly drawn *other* class.
- ``pair``: class ``k`` becomes ``k + 1 mod K`` (pair flipping, Han et al. 2018, Co-teaching).
- ``asymmetric``: only the source classes of a class map ``{src: dst}`` change, each to its
  ``dst`` (Patrini et al. 2017); classes not in the map are untouched, so the overall realised
  rate is below ``rate``. See ``SHIPPED_CLASS_MAPS`` and ``class_map_for``.
- ``transition``: a row-stochastic K x K matrix ``T`` (``T[c, j]`` = P(noisy j | true c)); in
  class ``c`` exactly ``round((1 - T[c, c]) n_c)`` labels change, and their new classes are
  allotted in exact counts, by largest-remainder rounding of ``T[c, j] / (1 - T[c, c])``,
  ``j != c``. ``rate`` is ignored: the matrix says how much changes.

Which examples change: one seeded random permutation per class (drawn for every class, in class
order, before anything else), the first ``round(rate n_c)`` of it. So with one seed the changed
set is the same for every model of one rate, and a higher rate changes a superset of a lower one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from labelnoise.io import save_npz

NoiseKind = Literal["none", "symmetric", "pair", "asymmetric", "transition"]
KINDS: tuple[str, ...] = ("none", "symmetric", "pair", "asymmetric", "transition")

# ----------------------------------------------------------------------------- class maps
# Asymmetric ("class-dependent") noise maps {true class: noisy class}, by class index in the
# dataset's own class order. They mimic confusions between visually similar classes.
CIFAR10_MAP: dict[int, int] = {
    9: 1,  # truck -> automobile
    2: 0,  # bird -> airplane
    4: 7,  # deer -> horse
    3: 5,  # cat -> dog
    5: 3,  # dog -> cat
}  # Patrini et al. 2017 (loss correction), also Co-teaching, Joint Optimization (Tanaka et al. 2018)

MNIST_MAP: dict[int, int] = {
    2: 7,
    3: 8,
    5: 6,
    6: 5,
    7: 1,
}  # 2 -> 7, 3 -> 8, 5 <-> 6, 7 -> 1: Patrini et al. 2017, Han et al. 2018

FASHION_MNIST_MAP: dict[int, int] = {
    6: 0,  # shirt -> T-shirt/top
    0: 6,  # T-shirt/top -> shirt
    2: 4,  # pullover -> coat
    4: 2,  # coat -> pullover
    5: 7,  # sandal -> sneaker
    7: 5,  # sneaker -> sandal
}  # our analogue of the CIFAR-10 map: pairs of look-alike garments and shoes

# CIFAR-100 superclass (coarse label, 0..19) of each fine label 0..99, as in the dataset's own
# `coarse_labels` field; fine labels are in the order of `fine_label_names` (alphabetical).
CIFAR100_COARSE: tuple[int, ...] = (
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3,
    3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15,
    0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10,
    16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19,
    2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19,
    18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
)


def cifar100_superclass_map() -> dict[int, int]:
    """Each CIFAR-100 class → the next class of its superclass (circularly, by fine label index).

    This is the true superclass structure. Note: Patrini et al.'s and Co-teaching's reference code
    flip within blocks of 5 *consecutive* fine indices instead, which are not superclasses.
    """
    coarse = np.asarray(CIFAR100_COARSE)
    out: dict[int, int] = {}
    for s in range(int(coarse.max()) + 1):
        members = np.flatnonzero(coarse == s).tolist()  # 5 fine labels, increasing
        out.update({a: b for a, b in zip(members, members[1:] + members[:1], strict=True)})
    return out


# The MNIST map for sklearn's 8x8 digits too: the same ten digit classes, the same confusions.
SHIPPED_CLASS_MAPS: dict[str, dict[int, int]] = {
    "cifar10": CIFAR10_MAP,
    "mnist": MNIST_MAP,
    "digits": MNIST_MAP,
    "fashion_mnist": FASHION_MNIST_MAP,
    "cifar100": cifar100_superclass_map(),
}


def class_map_for(dataset: str, class_map_param: str | Mapping[int, int]) -> dict[int, int]:
    """Resolve ``noise.class_map``: ``"auto"`` → the shipped map of ``dataset``, a mapping → itself.

    Raises ValueError naming ``noise.class_map`` for another string or a dataset without a map.
    """
    if isinstance(class_map_param, str):
        if class_map_param != "auto":
            raise ValueError(f"noise.class_map: must be 'auto' or a mapping {{src: dst}}, got {class_map_param!r}")
        if dataset not in SHIPPED_CLASS_MAPS:
            raise ValueError(f"noise.class_map: no shipped class map for dataset {dataset!r}; "
                             "give an explicit mapping {src: dst}")
        return dict(SHIPPED_CLASS_MAPS[dataset])
    out: dict[int, int] = {}
    for k, v in class_map_param.items():
        if isinstance(k, bool) or isinstance(v, bool) or not isinstance(k, (int, np.integer)) \
                or not isinstance(v, (int, np.integer)):
            raise ValueError(f"noise.class_map: keys and values must be class indices, got {k!r}: {v!r}")
        out[int(k)] = int(v)
    return out


# ----------------------------------------------------------------------------- result and files
@dataclass(frozen=True)
class NoisyLabels:
    """Corrupted labels ``(n,)`` int64 and the ``(n,)`` bool mask of those changed (evaluation only)."""

    labels: np.ndarray
    mask: np.ndarray

    def __post_init__(self) -> None:
        if self.labels.ndim != 1 or self.mask.shape != self.labels.shape:
            raise ValueError(f"NoisyLabels: labels {self.labels.shape} and mask {self.mask.shape} must be equal 1-D")
        if self.labels.dtype != np.int64 or self.mask.dtype != np.bool_:
            raise ValueError(f"NoisyLabels: need int64 labels and a bool mask, "
                             f"got {self.labels.dtype} and {self.mask.dtype}")

    @property
    def n_changed(self) -> int:
        return int(self.mask.sum())


def save_noisy(path: str | Path, nl: NoisyLabels) -> Path:
    """Write ``nl`` as an npz with arrays ``labels`` and ``mask`` (atomically)."""
    return save_npz(path, labels=nl.labels, mask=nl.mask)


def load_noisy(path: str | Path) -> NoisyLabels:
    """Read what ``save_noisy`` wrote."""
    with np.load(path, allow_pickle=False) as z:
        missing = {"labels", "mask"} - set(z.files)
        if missing:
            raise ValueError(f"{path}: not a noisy-labels file (missing {', '.join(sorted(missing))})")
        return NoisyLabels(labels=z["labels"].astype(np.int64, copy=False), mask=z["mask"].astype(bool, copy=False))


# ----------------------------------------------------------------------------- corruption
def n_to_change(rate: float, n: int) -> int:
    """``round(rate * n)`` with halves rounded up (not to even), clipped to [0, n].

    ``rate * n`` is first rounded to 9 decimals so that float noise cannot move a tie: a rate
    given as ``1 - 0.55`` (0.44999999999999996) changes as many labels as ``0.45``.
    """
    return int(min(max(np.floor(round(rate * n, 9) + 0.5), 0), n))


def largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
    """Split the integer ``total`` in proportion to ``weights`` (K,) into counts (K,) summing to ``total``.

    Hamilton's method: floors first, then one more to the largest remainders (ties: lower index).
    """
    w = np.asarray(weights, dtype=float)
    if total == 0 or w.sum() <= 0:
        return np.zeros(w.shape, dtype=np.int64)
    quota = w / w.sum() * total
    counts = np.floor(quota).astype(np.int64)
    short = total - int(counts.sum())
    order = np.argsort(-(quota - counts), kind="stable")
    counts[order[:short]] += 1
    return counts


def _check_transition(transition: Any, num_classes: int) -> np.ndarray:
    t = np.asarray(transition, dtype=float)
    if t.shape != (num_classes, num_classes):
        raise ValueError(f"noise.transition: must be a {num_classes} x {num_classes} matrix "
                         f"(one row per class), got shape {t.shape}")
    if (t < 0).any() or not np.allclose(t.sum(axis=1), 1.0, atol=1e-6):
        raise ValueError("noise.transition: rows must be non-negative and sum to 1")
    return t


def _check_class_map(class_map: Mapping[int, int] | None, num_classes: int) -> dict[int, int]:
    if not class_map:
        raise ValueError("noise.class_map: asymmetric noise needs a non-empty class map {src: dst}")
    out = {int(k): int(v) for k, v in class_map.items()}
    for k, v in out.items():
        if not (0 <= k < num_classes and 0 <= v < num_classes):
            raise ValueError(f"noise.class_map: {k}: {v} is not a pair of classes in 0..{num_classes - 1}")
        if k == v:
            raise ValueError(f"noise.class_map: {k}: {v} maps a class onto itself")
    return out


def corrupt(
    labels: np.ndarray,
    *,
    kind: NoiseKind,
    rate: float,
    num_classes: int,
    rng: np.random.Generator,
    class_map: Mapping[int, int] | None = None,
    transition: Any = None,
) -> NoisyLabels:
    """Corrupt ``labels`` (n,) ints in [0, K) with the noise model ``kind`` (see the module docstring).

    ``rate`` in [0, 1] is the exact per-class fraction changed (ignored for ``none`` and
    ``transition``). ``class_map`` ({src: dst}) is for ``asymmetric``, ``transition`` (K, K)
    row-stochastic for ``transition``. ``rng`` is the only source of randomness: the same seed
    gives the same labels bit for bit. Returns ``NoisyLabels`` with ``mask == (noisy != labels)``.
    """
    y = np.asarray(labels)
    if y.ndim != 1 or (y.size and not np.issubdtype(y.dtype, np.integer)):
        raise ValueError(f"labels: need a 1-D integer array, got shape {y.shape} dtype {y.dtype}")
    y = y.astype(np.int64)
    k = int(num_classes)
    if y.size and (y.min() < 0 or y.max() >= k):
        raise ValueError(f"labels: values must be in 0..{k - 1}, got {y.min()}..{y.max()}")
    if kind not in KINDS:
        raise ValueError(f"noise.kind: must be one of {', '.join(KINDS)}, got {kind!r}")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"noise.rate: must be in [0, 1], got {rate}")
    if kind in ("symmetric", "pair") and k < 2:
        raise ValueError(f"noise.kind: {kind} noise needs at least 2 classes, got {k}")

    noisy = y.copy()
    if kind == "none":
        return NoisyLabels(noisy, np.zeros(y.shape, dtype=bool))

    # Validate the model's own parameter before drawing anything.
    t = _check_transition(transition, k) if kind == "transition" else None
    cmap = _check_class_map(class_map, k) if kind == "asymmetric" else None
    if cmap is not None and rate > 0 and not np.isin(list(cmap), y).any():
        present = sorted(set(np.unique(y).tolist()))
        raise ValueError(f"noise.class_map: none of its source classes {sorted(cmap)} occurs in the labels "
                         f"(classes present: {present}), so noise.rate={rate} cannot be reached")

    # One permutation per class, all drawn first: the changed set depends on seed and rate only.
    perms = [rng.permutation(np.flatnonzero(y == c)) for c in range(k)]

    for c in range(k):
        idx = perms[c]  # (n_c,) this class's examples in random order
        if kind == "symmetric":
            # A uniform offset in 1..K-1 gives a uniform class other than c; drawn for all n_c
            # so the targets of the first m examples do not depend on the rate.
            offsets = rng.integers(1, k, size=idx.size)
            m = n_to_change(rate, idx.size)
            noisy[idx[:m]] = (c + offsets[:m]) % k
        elif kind == "pair":
            m = n_to_change(rate, idx.size)
            noisy[idx[:m]] = (c + 1) % k
        elif kind == "asymmetric":
            if c in cmap:
                m = n_to_change(rate, idx.size)
                noisy[idx[:m]] = cmap[c]
        else:  # transition
            off = t[c].copy()
            off[c] = 0.0
            m = n_to_change(1.0 - t[c, c], idx.size)
            counts = largest_remainder(off, m)  # (K,) exact number sent to each class, 0 at c
            # The permutation is random, so giving consecutive blocks to each target is too.
            noisy[idx[:m]] = np.repeat(np.arange(k), counts)
    return NoisyLabels(noisy, noisy != y)


# ----------------------------------------------------------------------------- diagnostics
def realised_transition(true: np.ndarray, noisy: np.ndarray, num_classes: int) -> np.ndarray:
    """Row-normalised (K, K) matrix: entry [c, j] = fraction of true-class-c labels now j.

    Rows always sum to 1: a class with no examples gets an identity row (nothing of it changed).
    """
    true = np.asarray(true, dtype=np.int64)
    noisy = np.asarray(noisy, dtype=np.int64)
    if true.shape != noisy.shape:
        raise ValueError(f"true {true.shape} and noisy {noisy.shape} labels must have the same shape")
    k = int(num_classes)
    counts = np.zeros((k, k), dtype=np.float64)
    np.add.at(counts, (true, noisy), 1.0)
    n = counts.sum(axis=1, keepdims=True)  # (K, 1)
    eye = np.eye(k)
    return np.where(n > 0, counts / np.maximum(n, 1.0), eye)


def per_class_rate(true: np.ndarray, noisy: np.ndarray, num_classes: int) -> np.ndarray:
    """(K,) fraction of each true class whose label changed (0 for an absent class)."""
    true = np.asarray(true, dtype=np.int64)
    changed = np.bincount(true[np.asarray(noisy) != true], minlength=num_classes).astype(float)
    n = np.bincount(true, minlength=num_classes).astype(float)
    return np.divide(changed, n, out=np.zeros(num_classes), where=n > 0)
