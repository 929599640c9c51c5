"""Cut a fetched dataset into train / clean / val / test, and the file stage ``download`` writes (``Prepared``).

Pure numpy: which dataset the labels came from does not matter here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from labelnoise.datasets._fetch import sha256
from labelnoise.io import read_npz, save_npz


@dataclass(frozen=True)
class Splits:
    """Disjoint, sorted int64 index arrays into the fetched images."""

    train_idx: np.ndarray
    clean_idx: np.ndarray
    val_idx: np.ndarray
    test_idx: np.ndarray


def _quota_balanced(avail: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Per-class counts summing to ``n``, as equal as the class sizes ``avail`` allow (water-filling)."""
    quota = np.zeros_like(avail)
    left = n
    while left > 0:
        open_ = np.flatnonzero(quota < avail)
        share = left // len(open_)
        if share == 0:  # fewer left than open classes: a random subset of them gets one more
            quota[rng.choice(open_, size=left, replace=False)] += 1
            break
        add = np.minimum(share, avail[open_] - quota[open_])
        quota[open_] += add
        left -= int(add.sum())
    return quota


def _quota_proportional(avail: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Per-class counts summing to ``n``, proportional to ``avail`` (largest remainder, random ties)."""
    total = int(avail.sum())
    quota, remainder = np.divmod(n * avail, total)  # exact integer arithmetic
    left = n - int(quota.sum())
    order = np.lexsort((rng.random(len(avail)), -remainder))  # largest remainder first
    quota[order[:left]] += 1
    return quota


def _take(pool: np.ndarray, labels: np.ndarray, quota: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``quota[c]`` random members of class c from ``pool``; sorted."""
    chosen = [rng.permutation(pool[labels[pool] == c])[:q] for c, q in enumerate(quota)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def _stratified(pool: np.ndarray, labels: np.ndarray, n: int, num_classes: int, rng: np.random.Generator,
                *, balanced: bool) -> np.ndarray:
    avail = np.bincount(labels[pool], minlength=num_classes).astype(np.int64)
    quota = (_quota_balanced if balanced else _quota_proportional)(avail, n, rng)
    return _take(pool, labels, quota, rng)


def make_splits(labels: np.ndarray, *, n_official_train: int, trusted_size: int, val_size: int, test_size: int,
                train_limit: int, seed: int, clean_idx: np.ndarray | None = None) -> Splits:
    """Cut the fetched dataset into disjoint train / clean / val / test index sets.

    labels: int64 (N,); ``labels[:n_official_train]`` is the official train part, the rest the
    official test part. ``test`` is the official test part; a dataset without one (digits) holds out
    a stratified ``test_size`` instead (``test_size`` is ignored otherwise). From the train part:
    ``clean`` (the trusted subset, as equal per class as possible, exactly ``trusted_size``), then
    ``val`` (stratified, ``val_size``), then ``train`` = the rest, or a stratified ``train_limit``
    of it. Pure numpy on ``np.random.default_rng(seed)``: same seed, same split.

    ``clean_idx``: a trusted subset given (``data.trusted_file``): it is the clean split (``trusted_size`` must be 0),
    taken out of the train part before anything is drawn; an index in the official test part is a ValueError.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if not 0 < n_official_train <= n or labels.min() < 0:
        raise ValueError(f"make_splits: need non-negative labels and 0 < n_official_train <= {n}, "
                         f"got {n_official_train}")
    num_classes = int(labels.max()) + 1 if n else 0
    rng = np.random.default_rng(seed)
    pool = np.arange(n_official_train, dtype=np.int64)
    given = None if clean_idx is None else np.unique(np.asarray(clean_idx, dtype=np.int64))
    if given is not None:
        if trusted_size:
            raise ValueError(f"data.trusted_size: must be 0 with a given clean subset, got {trusted_size}")
        outside = given[(given < 0) | (given >= n_official_train)]
        if outside.size:
            where = "the test split" if 0 <= outside[0] < n else "no image"
            raise ValueError(f"data.trusted_file: index {outside[0]} is {where} ({outside.size} of its "
                             f"{given.size} indices are outside the train part 0..{n_official_train - 1})")
        pool = np.setdiff1d(pool, given)

    if n_official_train < n:
        test = np.arange(n_official_train, n, dtype=np.int64)
    else:
        if not 0 < test_size < n:
            raise ValueError(f"data.test_size: must be in [1, {n - 1}] for a dataset without an official test split, "
                             f"got {test_size}")
        test = _stratified(pool, labels, test_size, num_classes, rng, balanced=False)
        pool = np.setdiff1d(pool, test)

    if (0 if given is not None else trusted_size) + val_size >= len(pool):
        raise ValueError(f"data.trusted_size ({trusted_size}) + data.val_size ({val_size}) must be smaller than the "
                         f"{len(pool)} training examples available, to leave a train split")
    clean = given if given is not None else _stratified(pool, labels, trusted_size, num_classes, rng, balanced=True)
    pool = np.setdiff1d(pool, clean)
    val = _stratified(pool, labels, val_size, num_classes, rng, balanced=False)
    pool = np.setdiff1d(pool, val)
    if train_limit > len(pool):
        raise ValueError(f"data.train_limit ({train_limit}) exceeds the {len(pool)} training examples left "
                         "after data.trusted_size and data.val_size")
    train = _stratified(pool, labels, train_limit, num_classes, rng, balanced=False) if train_limit else pool
    return Splits(train_idx=train, clean_idx=clean, val_idx=val, test_idx=test)


_INDEX_FIELDS = ("train_idx", "clean_idx", "val_idx", "test_idx")
_OPTIONAL = ("known", "paths", "clean_given")


@dataclass(frozen=True)
class Prepared:
    """The output of stage ``download``: all images once, labels, and the four disjoint index sets."""

    images: np.ndarray  # uint8 (N, C, H, W)
    labels: np.ndarray  # int64 (N,) true labels (evaluation path only for train_idx)
    train_idx: np.ndarray  # int64 (n_train,)
    clean_idx: np.ndarray  # int64 (n_clean,) trusted clean subset
    val_idx: np.ndarray  # int64 (n_val,) may be empty
    test_idx: np.ndarray  # int64 (n_test,)
    classes: list[str]
    dataset: str
    known: np.ndarray | None = None  # bool (N,): labels[i] is a true label; None: all are (a built-in dataset)
    paths: np.ndarray | None = None  # str (N,): each image's file (a folder dataset), else None
    clean_given: np.ndarray | None = None  # int64 (n_clean,): the data's own labels of the trusted subset where a
    #   trusted file replaced labels that are not true ones (data.truth: false): the noisy source's labels of the
    #   trusted examples, which beside their checked ones show the noise itself; None: not known

    def __post_init__(self) -> None:
        n = len(self.images)
        for name, kind in (("known", "b"), ("paths", "U")):
            arr = getattr(self, name)
            if arr is not None and (arr.shape != (n,) or arr.dtype.kind != kind):
                raise ValueError(f"Prepared.{name} must be ({n},) {'bool' if kind == 'b' else 'str'}, "
                                 f"got {arr.dtype} {arr.shape}")
        given = self.clean_given
        if given is not None and (given.dtype != np.int64 or given.shape != self.clean_idx.shape
                                  or (given.size and (given.min() < 0 or given.max() >= len(self.classes)))):
            raise ValueError(f"Prepared.clean_given must be int64 {self.clean_idx.shape} in [0, {len(self.classes)}), "
                             f"got {given.dtype} {given.shape}")
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(f"Prepared.images must be uint8 (N, C, H, W), got {self.images.dtype} {self.images.shape}")
        if self.labels.dtype != np.int64 or self.labels.shape != (n,):
            raise ValueError(f"Prepared.labels must be int64 ({n},), got {self.labels.dtype} {self.labels.shape}")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise ValueError(f"Prepared.labels must lie in [0, {len(self.classes)})")
        seen = np.zeros(n, dtype=bool)
        for name in _INDEX_FIELDS:
            idx = getattr(self, name)
            if idx.dtype != np.int64 or idx.ndim != 1:
                raise ValueError(f"Prepared.{name} must be a 1-d int64 array, got {idx.dtype} {idx.shape}")
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise ValueError(f"Prepared.{name} has indices outside [0, {n})")
            if seen[idx].any() or len(np.unique(idx)) != len(idx):
                raise ValueError(f"Prepared.{name} overlaps another split or repeats an index")
            seen[idx] = True

    def trusted(self, idx: np.ndarray) -> bool:
        """Every label at ``idx`` is a true label (False for an empty ``idx``: nothing to trust)."""
        return bool(idx.size) and (self.known is None or bool(self.known[idx].all()))

    def sizes(self) -> dict[str, int]:
        return {name.removesuffix("_idx"): len(getattr(self, name)) for name in _INDEX_FIELDS}


def save_prepared(path: str | Path, p: Prepared) -> Path:
    """Write ``p`` atomically as an uncompressed npz (class names as a string array, no pickle)."""
    optional = {k: getattr(p, k) for k in _OPTIONAL if getattr(p, k) is not None}  # absent: built-in data
    return save_npz(path, images=p.images, labels=p.labels, **{k: getattr(p, k) for k in _INDEX_FIELDS},
                    classes=np.array(p.classes, dtype=np.str_), dataset=np.array(p.dataset, dtype=np.str_),
                    **optional)


def load_prepared(path: str | Path) -> Prepared:
    """Read a file written by ``save_prepared``; one clear line when it is missing or corrupt."""
    arrays = read_npz(path, remedy="run the download stage (dvc repro download)",
                      keys=("images", "labels", *_INDEX_FIELDS, "classes", "dataset"))
    return Prepared(images=arrays["images"], labels=arrays["labels"], **{k: arrays[k] for k in _INDEX_FIELDS},
                    classes=[str(c) for c in arrays["classes"]], dataset=str(arrays["dataset"]),
                    **{k: arrays.get(k) for k in _OPTIONAL})


def data_report(p: Prepared, *, source: str, rejected: list[str]) -> dict[str, Any]:
    """What the download stage records: source, split sizes, clean per-class counts, array digests."""
    clean_counts = np.bincount(p.labels[p.clean_idx], minlength=len(p.classes))
    return {
        "dataset": p.dataset,
        "source": source,
        "sizes": p.sizes(),
        "image_shape": list(p.images.shape[1:]),
        "num_classes": len(p.classes),
        "clean_per_class": {c: int(k) for c, k in zip(p.classes, clean_counts, strict=True)},
        "classes": list(p.classes),
        "true_labels": {split: p.known is None or bool(p.known[getattr(p, f"{split}_idx")].all())
                        for split in ("train", "clean", "val", "test")},
        "sha256": {k: sha256(np.ascontiguousarray(getattr(p, k)).tobytes())
                   for k in ("images", "labels", *_INDEX_FIELDS)},
        "rejected": list(rejected),
    }


