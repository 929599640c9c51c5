"""Noise model ``given``: the noisy labels are given in a file (``noise.given.file``, e.g. CIFAR-10N's human labels),
one per image of the dataset in its own order (its train part, or all its images): see :func:`read_label_file` and
:func:`given_labels`. ``noise.rate`` is ignored: the file says how many are wrong, and without true labels nobody
knows."""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from labelnoise.datasets import Prepared
from labelnoise.io import load_problem, read_label_csv, regular_file, repo_path
from labelnoise.noise.base import Applied, CheckContext, NoiseInputs, NoiseModel, NoisyLabels, register
from labelnoise.schema import ConfigError

FILE, KEY = "noise.given.file", "noise.given.key"


@dataclass(frozen=True)
class GivenParams:
    """Params block ``noise.given``; a relative path is the repository's."""

    file: str  # the file of noisy labels (.npy, .csv, .pt, .pkl), one per image of the dataset
    key: str  # the entry of a .pt / .pkl dict that holds them (e.g. worse_label)


def check(params: GivenParams, ctx: CheckContext) -> None:
    if ctx.chosen and not params.file:
        raise ConfigError(f"{FILE}: a file of noisy labels is required with noise.kind: given")


def apply(inputs: NoiseInputs) -> Applied:
    p, params = inputs.dataset(), inputs.params
    path = repo_path(params.file)
    file_labels = read_label_file(path, key=params.key, classes=list(p.classes),
                                  paths=None if p.paths is None else p.paths.tolist())
    sizes = sorted({len(p.images), train_part_size(p)})
    if file_labels.size not in sizes:
        raise ValueError(f"{FILE}: {path} holds {file_labels.size} labels; {p.dataset} has "
                         f"{' or '.join(map(str, sizes))} (its train part, or all its images): give one label "
                         "per image, in the dataset's own order")
    nl = given_labels(file_labels, p.train_idx, true=inputs.labels if inputs.truth else None,
                      num_classes=inputs.num_classes)
    # the file labels the trusted images too: their labels there, beside their verified ones, show the noise itself
    trusted = given_labels(file_labels, p.clean_idx, true=None, num_classes=inputs.num_classes).labels
    nl = dataclasses.replace(nl, trusted=trusted)
    report = {"file": str(path), "key": params.key or None,
              "file_sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "n_file_labels": int(file_labels.size),
              "n_trusted_labelled": int(trusted.size)}
    # the file says how much is wrong: nothing is requested; without true labels, how much is unknown
    return Applied(nl, requested_rate=float("nan"), rate_source=FILE, rate_known=inputs.truth,
                   title=f"given noise ({Path(params.file).name})", report=report)


def train_part_size(p: Prepared) -> int:
    """How many images precede the dataset's official test part (all of them when it has none): the length of a
    file of labels for its train part."""
    n, test = len(p.images), p.test_idx
    tail = test.size and test.min() == n - test.size and test.max() == n - 1
    return n - test.size if tail else n


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
    path = regular_file(path, what=FILE)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_label_csv(path, classes, paths)
    loaders = {".npy": lambda: np.load(path, allow_pickle=False), ".pt": lambda: _load_torch_plain(path),
               ".pkl": lambda: _load_pickle_plain(path)}
    if suffix not in loaders:
        raise ValueError(f"{FILE}: {path}: unknown kind {suffix!r} (.npy, .csv, .pt or .pkl)")
    try:
        obj: Any = loaders[suffix]()
    except Exception as e:  # noqa: BLE001 - truncated, foreign or code-carrying files: one line
        raise ValueError(f"{FILE}: {path} cannot be read ({load_problem(e)})") from None
    if isinstance(obj, Mapping):
        if not key:
            raise ValueError(f"{FILE}: {path} holds a dict ({', '.join(map(str, obj))}): set {KEY}")
        if key not in obj:
            raise ValueError(f"{KEY}: {key!r} is not in {path} (it has {', '.join(map(str, obj))})")
        obj = obj[key]
    labels = np.asarray(obj.numpy() if hasattr(obj, "numpy") else obj)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"{FILE}: {path}{f' [{key}]' if key else ''} holds {labels.dtype} {labels.shape}, "
                         "not a 1-d array of integer labels")
    return labels.astype(np.int64)


def _read_label_csv(path: Path, classes: list[str] | None, paths: list[str] | None) -> np.ndarray:
    key, index, labels = read_label_csv(path, param=FILE, classes=classes, paths=paths)
    n = len(paths or []) if key == "path" else len(labels)
    if sorted(index.tolist()) != list(range(n)):
        raise ValueError(f"{FILE}: {path}: the path column must list each of the dataset's {n} images once"
                         if key == "path" else f"{FILE}: {path}: the index column must hold 0..{n - 1}, each once")
    out = np.empty(len(labels), dtype=np.int64)
    out[index] = labels
    return out


def _load_torch_plain(path: Path) -> Any:
    """``torch.load`` with weights only, numpy arrays of plain dtypes allowed too (how CIFAR-10N ships)."""
    import torch

    reconstruct = getattr(np, "_core", np).multiarray._reconstruct
    numpy_globals = [np.ndarray, np.dtype, reconstruct,
                     (reconstruct, "numpy.core.multiarray._reconstruct"),  # its name before numpy 2 (CIFAR-10N's file)
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


def given_labels(file_labels: np.ndarray, idx: np.ndarray, *, true: np.ndarray | None, num_classes: int) -> NoisyLabels:
    """The given noisy labels of the examples ``idx`` (n,) (positions in the dataset's order, the file's order):
    ``file_labels[idx]``, checked to lie in [0, num_classes). ``mask`` marks the labels that differ from ``true``
    (n,) where the true labels are known, and is all False where they are not (``true`` None)."""
    labels = np.asarray(file_labels, dtype=np.int64)[np.asarray(idx, dtype=np.int64)]
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0]
        raise ValueError(f"{FILE}: label {bad} is outside [0, {num_classes}) (the dataset has {num_classes} "
                         "classes)")
    mask = labels != np.asarray(true, dtype=np.int64) if true is not None else np.zeros(labels.shape, dtype=bool)
    return NoisyLabels(labels, mask)


def level(params: dict[str, Any]) -> str:
    """'given worse': the file's key, or the file's name (no param says the rate of a file of labels)."""
    key = str(params.get("noise.given.key") or "")
    return f"given {key or PurePath(str(params.get('noise.given.file', ''))).stem}".strip()


MODEL = register(NoiseModel(name="given", summary="the noisy labels of a file (e.g. CIFAR-10N's human labels)",
                            class_conditional=False, apply=apply, params=GivenParams, check=check, level=level))
