"""Label-noise models: corrupt an array of labels (or images) with an exact, seeded noise.

All models but ``instance`` and ``open_set`` are class-conditional: whether and how a label changes
depends only on its class. ``rate`` is the *exact* fraction of examples corrupted, per class: in
each class ``c`` with ``n_c`` examples exactly ``round(rate * n_c)`` change (half rounds up). This differs from the
"uniform over all K classes, the true one included" convention of some papers (there a noise
level ``r`` changes only ``r (K - 1) / K`` of the labels): to match such a table, pass
``rate = r * (K - 1) / K``.

Models (``kind``):

- ``none``: nothing changes (``rate`` is ignored).
- ``symmetric``: each changed label becomes a uniformly drawn *other* class.
- ``pair``: class ``k`` becomes ``k + 1 mod K`` (pair flipping, Han et al. 2018, Co-teaching).
- ``asymmetric``: only the source classes of a class map ``{src: dst}`` change, each to its
  ``dst`` (Patrini et al. 2017); classes not in the map are untouched, so the overall realised
  rate is below ``rate``. The caller passes the map (a dataset's shipped map: ``labelnoise.datasets.class_map_for``).
- ``transition``: a row-stochastic K x K matrix ``T`` (``T[c, j]`` = P(noisy j | true c)); in
  class ``c`` exactly ``round((1 - T[c, c]) n_c)`` labels change, and their new classes are
  allotted in exact counts, by largest-remainder rounding of ``T[c, j] / (1 - T[c, c])``,
  ``j != c``. ``rate`` is ignored: the matrix says how much changes.
- ``structured``: structured noise after Rolnick et al. 2017 ("Deep learning is robust to massive
  label noise"), the skew set by ``delta`` (δ): in class ``c``, ``round(rate n_c)`` labels change and a
  changed label goes to class ``j != c`` with probability ``q_c(j) = (1 - δ) / (K - 1) + δ·[j = c + 1 mod K]``
  (exact counts, as ``transition``): δ = 0 is ``symmetric``, δ = 1 is ``pair``, in between the noisy
  labels concentrate on one confusing class per class. See ``structured_transition``.
- ``instance``: instance-dependent noise (the hardest examples of each class are flipped to the
  class they look most like), from a reference classifier's probabilities ``P`` (n, K) of the
  true examples; see ``corrupt_instance`` for the exact rule and ``labelnoise.reference`` for
  the classifier (the project's ``cnn``, trained briefly on the trusted clean subset only).
- ``massive``: Rolnick et al. 2017's setting: ``n_clean`` examples keep their labels and ``alpha`` times
  as many other examples of the split get uniformly random labels; the rest of the split is unused
  (``NoisyLabels.index``). See ``massive``.
- ``given``: the noisy labels are given in a file (``noise.file``, e.g. CIFAR-10N's human labels), one per image
  of the dataset in its own order: see :func:`read_label_file` and :func:`given`. ``rate`` is ignored.
- ``open_set``: the label stays, the *image* is replaced by one that belongs to no class of the
  dataset (web noise; Wang et al. 2018, "Iterative learning with open-set noisy labels"). See
  ``open_set``; the replacement images travel in ``NoisyLabels.images``.

Which examples change (all models but ``instance``): one seeded random permutation per class
(drawn for every class, in class order, before anything else), the first ``round(rate n_c)`` of it.
So with one seed the changed set is the same for every model of one rate, and a higher rate changes
a superset of a lower one.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from labelnoise.io import read_label_csv, read_npz, regular_file, save_npz
from labelnoise.schema import rng as _rng

NoiseKind = Literal["none", "symmetric", "pair", "asymmetric", "transition", "structured", "instance", "open_set",
                    "massive", "given"]
KINDS: tuple[str, ...] = ("none", "symmetric", "pair", "asymmetric", "transition", "structured", "instance",
                          "open_set", "massive", "given")


# ----------------------------------------------------------------------------- params section `noise`
@dataclass(frozen=True)
class NoiseConfig:
    """Params section ``noise`` (stage inject_noise). Types and ranges are checked by :mod:`labelnoise.config`,
    ``open_set_source`` against the dataset registry (``labelnoise.datasets.open_set_sources``)."""

    kind: NoiseKind
    rate: float = _rng(0.0, 1.0)
    delta: float = _rng(0.0, 1.0)  # structured: skew of the noisy labels (0 uniform, 1 all to class c + 1)
    alpha: float = _rng(0.0, 10_000.0)  # massive: noisy (random-label) examples added per clean example
    n_clean: int = _rng(0)  # massive: clean examples kept (0: as many as the train split allows)
    massive_source: Literal["train", "other"]  # massive: added images from the train split or open_set_source
    seed: int = _rng(0)
    class_map: str | dict[int, int]  # asymmetric: "auto" (the dataset's shipped map) or {src: dst}
    transition: list[list[float]]  # transition: row-stochastic K x K matrix
    # instance: the reference classifier trains with the `train` recipe, these overrides apart
    reference_model: str  # instance: its network (an architecture of labelnoise.models)
    reference_epochs: int = _rng(1, 10_000)  # instance: epochs on the clean subset
    reference_lr: float = _rng(0.0, 10.0, lo_open=True)  # instance: its peak learning rate
    reference_batch_size: int = _rng(1, 65_536)  # instance: its mini-batch size
    reference_precision: Literal["auto", "fp32", "bf16"]  # instance: fp32 keeps the labels independent of the CPU
    reference_seed: int = _rng(0)  # instance: its initial weights and batch order
    open_set_source: str  # open_set, massive other: auto | white_noise | a registered dataset
    file: str  # given: the file of noisy labels (.npy, .csv, .pt, .pkl), one per image of the dataset
    key: str  # given: the entry of a .pt / .pkl dict that holds them (e.g. worse_label)


# ----------------------------------------------------------------------------- result and files
@dataclass(frozen=True)
class NoisyLabels:
    """Corrupted labels ``(n,)`` int64 and the ``(n,)`` bool mask of the corrupted examples (evaluation only).

    ``images``: only for ``open_set`` noise, uint8 (m, C, H, W) with ``m = mask.sum()``: the images that
    replace the masked examples' images, in increasing example order (``images[j]`` replaces example
    ``np.flatnonzero(mask)[j]``). There the labels are unchanged and the mask marks replaced images; for
    every other model ``mask == (labels != true labels)`` and ``images`` is None.

    ``index``: only for ``massive`` noise, int64 (m,) increasing positions in the train split of the
    examples that make up the training set (labels and mask are theirs, (m,)); None = all of it, in order.
    """

    labels: np.ndarray
    mask: np.ndarray
    images: np.ndarray | None = None
    index: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.labels.ndim != 1 or self.mask.shape != self.labels.shape:
            raise ValueError(f"NoisyLabels: labels {self.labels.shape} and mask {self.mask.shape} must be equal 1-D")
        if self.labels.dtype != np.int64 or self.mask.dtype != np.bool_:
            raise ValueError(f"NoisyLabels: need int64 labels and a bool mask, "
                             f"got {self.labels.dtype} and {self.mask.dtype}")
        if self.images is not None and (self.images.dtype != np.uint8 or self.images.ndim != 4
                                        or len(self.images) != int(self.mask.sum())):
            raise ValueError(f"NoisyLabels: images must be uint8 (m, C, H, W) with m = {int(self.mask.sum())} "
                             f"masked examples, got {self.images.dtype} {self.images.shape}")
        if self.index is not None and (self.index.dtype != np.int64 or self.index.shape != self.labels.shape
                                       or (self.index.size and (np.diff(self.index) <= 0).any())):
            raise ValueError("NoisyLabels: index must be increasing int64 positions, one per label")

    def positions(self, n_train: int) -> np.ndarray:
        """(m,) positions in the train split of the training examples: ``index``, or all ``n_train``."""
        return self.index if self.index is not None else np.arange(n_train, dtype=np.int64)

    @property
    def n_changed(self) -> int:
        return int(self.mask.sum())


def save_noisy(path: str | Path, nl: NoisyLabels) -> Path:
    """Write ``nl`` as an npz with arrays ``labels``, ``mask`` and, for open-set noise, ``images`` (atomically)."""
    extra = {"images": nl.images} if nl.images is not None else {}
    if nl.index is not None:
        extra["index"] = nl.index
    return save_npz(path, labels=nl.labels, mask=nl.mask, **extra)


def load_noisy(path: str | Path) -> NoisyLabels:
    """Read what ``save_noisy`` wrote."""
    z = read_npz(path, remedy="run the inject_noise stage (dvc repro inject_noise)", keys=("labels", "mask"))
    return NoisyLabels(labels=z["labels"].astype(np.int64, copy=False), mask=z["mask"].astype(bool, copy=False),
                       images=z.get("images"), index=z.get("index"))


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


def _check_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``labels`` as int64 (n,), or ValueError naming what is wrong."""
    y = np.asarray(labels)
    if y.ndim != 1 or (y.size and not np.issubdtype(y.dtype, np.integer)):
        raise ValueError(f"labels: need a 1-D integer array, got shape {y.shape} dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels: values must be in 0..{num_classes - 1}, got {y.min()}..{y.max()}")
    return y


def _class_permutations(y: np.ndarray, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One seeded permutation of each class's example indices, all drawn first, in class order: so the
    changed set (the first ``round(rate n_c)`` of each) depends on seed and rate only, not on the model."""
    return [rng.permutation(np.flatnonzero(y == c)) for c in range(k)]


def corrupt(
    labels: np.ndarray,
    *,
    kind: NoiseKind,
    rate: float,
    num_classes: int,
    rng: np.random.Generator,
    class_map: Mapping[int, int] | None = None,
    transition: Any = None,
    pred_probs: np.ndarray | None = None,
    delta: float = 0.0,
) -> NoisyLabels:
    """Corrupt ``labels`` (n,) ints in [0, K) with the noise model ``kind`` (see the module docstring).
    ``delta`` is the skew of ``structured`` noise.

    ``rate`` in [0, 1] is the exact per-class fraction changed (ignored for ``none`` and
    ``transition``). ``class_map`` ({src: dst}) is for ``asymmetric``, ``transition`` (K, K)
    row-stochastic for ``transition``, ``pred_probs`` (n, K) the reference classifier's probabilities
    for ``instance`` (which draws nothing from ``rng``). ``rng`` is the only source of randomness: the
    same seed gives the same labels bit for bit. Returns ``NoisyLabels`` with ``mask == (noisy != labels)``.
    ``open_set`` changes images, not labels: call :func:`open_set`.
    """
    y = _check_labels(labels, num_classes)
    k = int(num_classes)
    if kind not in KINDS:
        raise ValueError(f"noise.kind: must be one of {', '.join(KINDS)}, got {kind!r}")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"noise.rate: must be in [0, 1], got {rate}")
    if kind in ("symmetric", "pair", "instance", "open_set") and k < 2:
        raise ValueError(f"noise.kind: {kind} noise needs at least 2 classes, got {k}")
    if kind == "open_set":
        raise ValueError("noise.kind: open_set noise replaces images, not labels: use noise.open_set")
    if kind == "instance":
        if pred_probs is None:
            raise ValueError("noise.kind: instance noise needs the reference classifier's pred_probs (n, K)")
        return corrupt_instance(y, pred_probs, rate=rate)

    noisy = y.copy()
    if kind == "none":
        return NoisyLabels(noisy, np.zeros(y.shape, dtype=bool))

    # Validate the model's own parameter before drawing anything.
    t = _check_transition(transition, k) if kind == "transition" else None
    if kind == "structured":  # a transition matrix of its own: one piece of code allots the targets
        t = structured_transition(k, rate=rate, delta=delta)
    cmap = _check_class_map(class_map, k) if kind == "asymmetric" else None
    if cmap is not None and rate > 0 and not np.isin(list(cmap), y).any():
        present = sorted(set(np.unique(y).tolist()))
        raise ValueError(f"noise.class_map: none of its source classes {sorted(cmap)} occurs in the labels "
                         f"(classes present: {present}), so noise.rate={rate} cannot be reached")

    perms = _class_permutations(y, k, rng)

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
        else:  # transition, structured
            off = t[c].copy()
            off[c] = 0.0
            m = n_to_change(1.0 - t[c, c], idx.size)
            counts = largest_remainder(off, m)  # (K,) exact number sent to each class, 0 at c
            # The permutation is random, so giving consecutive blocks to each target is too.
            noisy[idx[:m]] = np.repeat(np.arange(k), counts)
    return NoisyLabels(noisy, noisy != y)


def structured_transition(num_classes: int, *, rate: float, delta: float) -> np.ndarray:
    """The (K, K) row-stochastic matrix of ``structured`` noise: ``T = (1 - rate) I + rate Q`` with
    ``Q[c, j] = (1 - δ) / (K - 1) + δ [j = c + 1 mod K]`` for ``j != c`` and ``Q[c, c] = 0``."""
    k = int(num_classes)
    if k < 2:
        raise ValueError(f"structured noise needs at least 2 classes, got {k}")
    if not 0.0 <= delta <= 1.0:
        raise ValueError(f"noise.delta: must be in [0, 1], got {delta}")
    q = np.full((k, k), (1.0 - delta) / (k - 1))
    np.fill_diagonal(q, 0.0)
    q[np.arange(k), (np.arange(k) + 1) % k] += delta
    return (1.0 - rate) * np.eye(k) + rate * q


# ----------------------------------------------------------------------------- instance-dependent noise
def instance_scores(labels: np.ndarray, pred_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Difficulty and confusable class of each example from a reference classifier's probabilities.

    labels: (n,) int true labels y_i; pred_probs: (n, K) rows p_i. Returns ``score`` (n,) float64,
    ``s_i = p_i[y_i]`` (low = hard), and ``confusable`` (n,) int64, ``argmax_{j != y_i} p_i[j]``
    (ties: the lowest class index).
    """
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(pred_probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != y.shape[0] or p.shape[1] < 2:
        raise ValueError(f"pred_probs: need shape ({y.shape[0]}, K >= 2), got {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError("pred_probs: must be finite")
    rows = np.arange(y.size)
    score = p[rows, y]  # (n,)
    others = p.copy()
    others[rows, y] = -np.inf  # exclude the true class
    return score, others.argmax(axis=1).astype(np.int64)


def corrupt_instance(labels: np.ndarray, pred_probs: np.ndarray, *, rate: float) -> NoisyLabels:
    """Instance-dependent noise: flip the hardest examples of each class to the class they look most like.

    With ``s_i = p_i[y_i]`` and ``ĉ_i = argmax_{j != y_i} p_i[j]`` (``instance_scores``), in each class
    ``c`` with ``n_c`` examples the ``m_c = round(rate · n_c)`` examples with the smallest ``s_i`` (ties:
    lower index first) get the noisy label ``ĉ_i``; all others keep ``y_i``. Deterministic given
    ``pred_probs`` (all randomness is in the reference classifier, seeded by ``noise.reference_seed``).
    labels: (n,) int in [0, K); pred_probs: (n, K). Returns ``NoisyLabels`` with ``mask == (noisy != labels)``.
    """
    y = np.asarray(labels, dtype=np.int64)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"noise.rate: must be in [0, 1], got {rate}")
    score, confusable = instance_scores(y, pred_probs)
    k = np.asarray(pred_probs).shape[1]
    if y.size and (y.min() < 0 or y.max() >= k):
        raise ValueError(f"labels: values must be in 0..{k - 1}, got {y.min()}..{y.max()}")
    noisy = y.copy()
    for c in range(k):
        idx = np.flatnonzero(y == c)  # (n_c,) increasing, so a stable sort breaks ties by index
        hardest = idx[np.argsort(score[idx], kind="stable")[: n_to_change(rate, idx.size)]]
        noisy[hardest] = confusable[hardest]
    return NoisyLabels(noisy, noisy != y)


# ----------------------------------------------------------------------------- open-set noise
def massive_sizes(n: int, *, alpha: float, n_clean: int) -> tuple[int, int]:
    """(clean examples kept, random-label examples added) of ``massive`` noise on a split of ``n``:
    ``n_clean`` (0: ``floor(n / (1 + alpha))``) and ``round(alpha · n_clean)``, halves up."""
    if alpha < 0:
        raise ValueError(f"noise.alpha: must be >= 0, got {alpha}")
    keep = n_clean if n_clean > 0 else int(n // (1.0 + alpha))
    extra = int(np.floor(round(alpha * keep, 9) + 0.5))
    if keep < 1 or keep + extra > n:
        raise ValueError(f"noise.n_clean ({keep}) + noise.alpha ({alpha:g}) x n_clean ({extra}) needs "
                         f"{keep + extra} train examples, the split has {n}: lower noise.alpha or noise.n_clean")
    return keep, extra


def massive(labels: np.ndarray, *, alpha: float, n_clean: int, num_classes: int, rng: np.random.Generator,
            other_source: bool = False, image_shape: tuple[int, ...] = (), source_images: np.ndarray | None = None,
            ) -> NoisyLabels:
    """Massive noise (Rolnick et al. 2017): ``alpha`` noisy examples per clean one.

    From the train split (``labels`` (n,), the true labels), ``n_clean`` examples keep their labels,
    stratified (per class ``largest_remainder`` of the class sizes, the first of each class's seeded
    permutation); ``m = round(alpha · n_clean)`` other examples of the split, drawn at random, get labels
    drawn uniformly from all K classes (so about 1/K of them are right by chance); the rest of the split
    is not used. ``n_clean = 0`` keeps as many as the split allows, ``floor(n / (1 + alpha))``. Returns
    NoisyLabels over the (1 + alpha) · n_clean training examples, with ``index`` their positions.

    ``other_source``: the added examples' images come from another source instead (:func:`draw_images`
    from ``source_images``, or white noise), as in Rolnick et al.'s "noise from another dataset"; then
    ``mask`` marks the added examples and ``images`` holds their images (the open-set convention).
    """
    y = _check_labels(labels, num_classes)
    n, k = y.shape[0], int(num_classes)
    keep, extra = massive_sizes(n, alpha=alpha, n_clean=n_clean)
    perms = _class_permutations(y, k, rng)
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
        return NoisyLabels(labels_out, mask, draw_images(int(mask.sum()), image_shape, rng, source_images),
                           index=index)
    return NoisyLabels(labels_out, labels_out != y[index], index=index)


def open_set(
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
    y = _check_labels(labels, num_classes)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"noise.rate: must be in [0, 1], got {rate}")
    perms = _class_permutations(y, int(num_classes), rng)
    mask = np.zeros(y.shape, dtype=bool)
    for idx in perms:
        mask[idx[: n_to_change(rate, idx.size)]] = True
    images = draw_images(int(mask.sum()), image_shape, rng, source_images)
    return NoisyLabels(y.copy(), mask, images)


def draw_images(m: int, image_shape: tuple[int, ...], rng: np.random.Generator,
                source_images: np.ndarray | None) -> np.ndarray:
    """``m`` images from another source, uint8 (m, *image_shape): drawn from ``source_images`` (uint8
    (M, *image_shape), already fitted to the shape) without replacement, or with replacement when M < m;
    white noise (i.i.d. uniform pixels) when ``source_images`` is None."""
    shape = tuple(int(d) for d in image_shape)
    if source_images is not None and (source_images.dtype != np.uint8 or source_images.shape[1:] != shape
                                      or len(source_images) == 0):
        raise ValueError(f"noise.open_set_source: need uint8 source images (M >= 1, {', '.join(map(str, shape))}), "
                         f"got {source_images.dtype} {source_images.shape}")
    if source_images is None:
        return rng.integers(0, 256, size=(m, *shape), dtype=np.uint8)  # (m, C, H, W)
    pick = rng.choice(len(source_images), size=m, replace=m > len(source_images))  # (m,)
    return np.ascontiguousarray(source_images[pick])


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


# ----------------------------------------------------------------------------- given noisy labels
def read_label_file(path: str | Path, *, key: str = "", classes: list[str] | None = None,
                    paths: list[str] | None = None) -> np.ndarray:
    """The labels in a file, int64 (n,), nothing in it run as code:

    - ``.npy``: a 1-d integer array (no pickled objects);
    - ``.csv``: columns ``index,label`` (a header row), one row per image; a label is a class index or, with
      ``classes``, a class name; the indices must be 0..n-1 (any order); with ``paths`` (a folder dataset's image
      paths) ``path,label`` rows, one per image, work too;
    - ``.pt``: ``torch.load`` with weights only (tensors, numpy arrays, plain containers), e.g. CIFAR-10N's
      ``CIFAR-10_human.pt``; a dict needs ``key``;
    - ``.pkl``: a pickle of the same plain kinds only (an unpickler that refuses every other class); a dict
      needs ``key``.

    A file that is missing, unreadable, of another kind, without ``key``, or without a 1-d integer array is one
    ValueError line naming the file.
    """
    path = regular_file(path, what="noise.file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_label_csv(path, classes, paths)
    loaders = {".npy": lambda: np.load(path, allow_pickle=False), ".pt": lambda: _load_torch_plain(path),
               ".pkl": lambda: _load_pickle_plain(path)}
    if suffix not in loaders:
        raise ValueError(f"noise.file: {path}: unknown kind {suffix!r} (.npy, .csv, .pt or .pkl)")
    try:
        obj: Any = loaders[suffix]()
    except Exception as e:  # noqa: BLE001 - truncated, foreign or code-carrying files: one line
        raise ValueError(f"noise.file: {path} cannot be read ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
                         ) from None
    if isinstance(obj, Mapping):
        if not key:
            raise ValueError(f"noise.file: {path} holds a dict ({', '.join(map(str, obj))}): set noise.key")
        if key not in obj:
            raise ValueError(f"noise.key: {key!r} is not in {path} (it has {', '.join(map(str, obj))})")
        obj = obj[key]
    labels = np.asarray(obj.numpy() if hasattr(obj, "numpy") else obj)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"noise.file: {path}{f' [{key}]' if key else ''} holds {labels.dtype} {labels.shape}, "
                         "not a 1-d array of integer labels")
    return labels.astype(np.int64)


def _read_label_csv(path: Path, classes: list[str] | None, paths: list[str] | None) -> np.ndarray:
    key, index, labels = read_label_csv(path, param="noise.file", classes=classes, paths=paths)
    n = len(paths or []) if key == "path" else len(labels)
    if sorted(index.tolist()) != list(range(n)):
        raise ValueError(f"noise.file: {path}: the path column must list each of the dataset's {n} images once"
                         if key == "path" else f"noise.file: {path}: the index column must hold 0..{n - 1}, each once")
    out = np.empty(len(labels), dtype=np.int64)
    out[index] = labels
    return out


def _load_torch_plain(path: Path) -> Any:
    """``torch.load`` with weights only, numpy arrays of plain dtypes allowed too (how CIFAR-10N ships)."""
    import torch

    numpy_globals = [np.ndarray, np.dtype, getattr(np, "_core", np).multiarray._reconstruct,
                     *(type(np.dtype(t)) for t in ("i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f4", "f8", "?"))]
    with torch.serialization.safe_globals(numpy_globals):
        return torch.load(path, map_location="cpu", weights_only=True)


def _load_pickle_plain(path: Path) -> Any:
    with open(path, "rb") as f:
        return _PlainUnpickler(f).load()


class _PlainUnpickler(pickle.Unpickler):
    """A pickle reader that builds plain containers and numpy arrays and refuses every other class (so a pickle
    cannot run code)."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
               ("numpy.core.multiarray", "scalar"), ("collections", "OrderedDict")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused {module}.{name}: only plain data and numpy arrays are read")


def given(file_labels: np.ndarray, idx: np.ndarray, *, true: np.ndarray | None, num_classes: int) -> NoisyLabels:
    """The given noisy labels of the examples ``idx`` (n,) (positions in the dataset's order, the file's order):
    ``file_labels[idx]``, checked to lie in [0, num_classes). ``mask`` marks the labels that differ from ``true``
    (n,) where the true labels are known, and is all False where they are not (``true`` None)."""
    labels = np.asarray(file_labels, dtype=np.int64)[np.asarray(idx, dtype=np.int64)]
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0]
        raise ValueError(f"noise.file: label {bad} is outside [0, {num_classes}) (the dataset has {num_classes} "
                         "classes)")
    mask = labels != np.asarray(true, dtype=np.int64) if true is not None else np.zeros(labels.shape, dtype=bool)
    return NoisyLabels(labels, mask)
