"""Datasets: a registry of dataset facts, verified fetching, and the train / clean / val / test cut (what
training may see of them is :mod:`labelnoise.views`).

A dataset is one file in this folder. It registers a :class:`Dataset` (name, image shape, classes, whether it
has an official test split, its default augmentation, its shipped asymmetric class map, its open-set noise
sources) with a ``source`` that delivers its arrays. Every module here whose name does not start with ``_`` is
imported with the package, so adding the file is enough: ``data.dataset`` accepts the new name, and
``noise.asymmetric.class_map: auto`` and ``noise.open_set.source`` use its facts. ``digits.py`` is the example to copy.

Sources (``Dataset.source``): :class:`Bundled` (a function returns the arrays), or a :class:`Cached` family that
keeps verified files under ``data.root`` and tries, in order (``load_dataset``):

1. the cache under ``data.root``, in torchvision's own layout (``<root>/FashionMNIST/raw/...``,
   ``<root>/cifar-10-batches-py/...``);
2. local mirror folders ``data.mirrors[<name>]`` (e.g. Debian's ``dataset-fashion-mnist``);
3. the network, through torchvision's own ``download=True`` (only when ``data.download``).

Every file is verified before it is used (:class:`Idx`: torchvision's md5 of the archive or the sha256 of the
decompressed payload; :class:`Cifar`: torchvision's md5s). A file that fails is reported in one line (which file,
expected vs got) and never used: downloads and extractions happen in a staging folder under the cache, and only
verified files are moved into the cache. The arrays are then read by torchvision's dataset classes.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Literal

import numpy as np

from labelnoise.datasets._cifar import Cifar
from labelnoise.datasets._fetch import Arrays, Bundled, Cached, DataUnavailable, Notes, RawData, Source
from labelnoise.datasets._idx import Idx
from labelnoise.datasets._images import fit_images
from labelnoise.datasets._splits import Prepared, Splits, data_report, load_prepared, make_splits, save_prepared
from labelnoise.schema import ConfigError
from labelnoise.schema import rng as _rng

WHITE_NOISE = "white_noise"  # the open-set source that is no dataset: i.i.d. uniform pixels
_RESERVED = ("auto", WHITE_NOISE)  # values of noise.open_set.source that no dataset may be called


# ----------------------------------------------------------------------------- the facts of one dataset
@dataclass(frozen=True, eq=False)  # one object per dataset: compared and hashed by identity
class Dataset:
    """What the project knows about one dataset; registered once, read wherever a fact is needed.

    ``class_map``: the shipped ``{true class: noisy class}`` map of asymmetric noise
    (``noise.asymmetric.class_map: auto``), by class index; None: asymmetric noise needs an explicit map.
    ``open_set_auto``: what ``noise.open_set.source: auto`` means for it (a dataset name, or ``white_noise``).
    ``same_classes``: datasets whose images show its classes (itself always counts), so they are never its open-set
    noise; the relation is read both ways, so a new dataset declares it in its own file only.
    """

    name: str  # the value of params `data.dataset`
    shape: tuple[int, int, int] | None  # (C, H, W) of every image; None: set by the data (folder)
    num_classes: int | None  # K: labels are 0..K-1; None: set by the data (folder)
    official_test: bool | None  # the source delivers an official test part; else make_splits holds out
    #   data.test_size; None: the data says (a folder with or without a test split)
    source: Source  # how the arrays are fetched and verified: Idx, Cifar, Bundled or a Source of your own
    augment: Literal["none", "crop_flip"] = "none"  # what `student.augment: auto` means for it
    class_map: Mapping[int, int] | None = None
    open_set_auto: str = WHITE_NOISE
    same_classes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or self.name in _RESERVED:
            raise ValueError(f"dataset name {self.name!r}: must be a Python identifier other than {_RESERVED}")
        if self.shape is not None and (len(self.shape) != 3
                                       or any(not isinstance(d, int) or d < 1 for d in self.shape)):
            raise ValueError(f"dataset {self.name}: shape must be (C, H, W) positive ints, got {self.shape}")
        if self.num_classes is not None and self.num_classes < 2:
            raise ValueError(f"dataset {self.name}: num_classes must be >= 2, got {self.num_classes}")
        if self.augment not in ("none", "crop_flip"):
            raise ValueError(f"dataset {self.name}: augment must be 'none' or 'crop_flip', got {self.augment!r}")
        if not isinstance(self.source, Source):
            raise ValueError(f"dataset {self.name}: source must be a labelnoise.datasets.Source, got {self.source!r}")
        if self.class_map is not None and self.num_classes is not None:
            cmap = {int(k): int(v) for k, v in self.class_map.items()}
            n = self.num_classes
            bad = [(k, v) for k, v in cmap.items() if k == v or not (0 <= k < n and 0 <= v < n)]
            if not cmap or bad:
                raise ValueError(f"dataset {self.name}: class_map must map classes 0..{self.num_classes - 1} onto "
                                 f"other classes, got {bad or 'an empty map'}")
            object.__setattr__(self, "class_map", MappingProxyType(cmap))  # read-only: callers get copies
        if self.shape is not None:
            object.__setattr__(self, "shape", tuple(self.shape))
        object.__setattr__(self, "same_classes", tuple(self.same_classes))


# ----------------------------------------------------------------------------- the registry
_REGISTRY: dict[str, Dataset] = {}
DATASETS: Mapping[str, Dataset] = MappingProxyType(_REGISTRY)  # name -> Dataset, read-only, live
DatasetSpec = Dataset  # the old name of the facts


def register_dataset(ds: Dataset) -> Dataset:
    """Add ``ds`` to the registry (a dataset file calls this once) and return it. A second dataset with the same
    name is a ValueError."""
    known = _REGISTRY.get(ds.name)
    if known is not None and known is not ds:
        raise ValueError(f"dataset {ds.name!r} is registered twice ({known.source!r} and {ds.source!r})")
    _REGISTRY[ds.name] = ds
    return ds


def dataset_names() -> tuple[str, ...]:
    """The registered dataset names, sorted."""
    return tuple(sorted(_REGISTRY))


def get_dataset(name: str) -> Dataset:
    """The registered dataset ``name``; ValueError naming the known ones otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r} (known: {', '.join(dataset_names())})") from None


# ----------------------------------------------------------------------------- params section `data`
@dataclass(frozen=True)
class DataConfig:
    """Params section ``data`` (stage download). Types and ranges are checked by :mod:`labelnoise.config`;
    ``dataset`` must be registered."""

    dataset: str  # a registered dataset (dataset_names())
    root: str  # cache of verified raw files
    mirrors: dict[str, list[str]]  # per dataset: local folders searched before the network
    download: bool  # allow the network as the last source
    trusted_size: int = _rng(0)  # trusted clean subset, stratified (MentorNet: 5000)
    val_size: int = _rng(0)  # optional noisy validation split carved from the train pool
    test_size: int = _rng(0)  # only for datasets without an official test split (digits, a folder without one)
    train_limit: int = _rng(0)  # 0: whole train pool; else a stratified subsample (quick runs)
    split_seed: int = _rng(0)
    truth: bool  # the data's labels are true ones; false: they are the (noisy) labels you have, not checked
    trusted_file: str  # a trusted subset given as a file (.csv index,label or path,label); "" = none given
    path: str  # folder: an image tree root/<class>/<image> (or root/{train,test}/<class>/...) or a manifest
    classes: list[str]  # folder: class names in label order; [] = the data's names, sorted (as numbers if integers)
    image_size: int = _rng(1, 4096)  # folder: images are resized (shorter side) and centre-cropped to this square
    channels: int = _rng(1, 3)  # folder: 1 (grayscale) or 3 (RGB)
    skip_bad_images: bool  # folder: skip (and report) an unreadable image instead of stopping at it

    def __post_init__(self) -> None:
        if self.dataset not in _REGISTRY:
            choices = ", ".join(repr(n) for n in dataset_names())
            raise ConfigError(f"data.dataset: must be one of {choices}, got {self.dataset!r}")
        if self.channels == 2:
            raise ConfigError("data.channels: must be 1 (grayscale) or 3 (RGB), got 2")
        if self.trusted_file and self.trusted_size:
            raise ConfigError(f"data.trusted_size: must be 0 with data.trusted_file (the file is the trusted subset), "
                              f"got {self.trusted_size}")
        if not self.truth and self.trusted_size:
            raise ConfigError("data.trusted_size: with data.truth: false the labels are not trusted, so no clean "
                              "subset can be drawn from them; give one as data.trusted_file, or set 0")
        if not self.truth and self.val_size:
            raise ConfigError("data.val_size: with data.truth: false the labels are not trusted, so no validation "
                              "split can be drawn from them; set 0")


# ----------------------------------------------------------------------------- fetching
def load_dataset(data: DataConfig) -> RawData:
    """Fetch ``data.dataset`` through its source (cache, mirrors, network; or bundled) and check what came back.

    Raises ``DataUnavailable`` (one line listing what was tried) when no source delivers verified data.
    """
    ds = get_dataset(data.dataset)
    notes = Notes()
    arrays, source = ds.source.fetch(ds, root=Path(data.root), mirrors=list(data.mirrors.get(ds.name, [])),
                                     download=data.download, notes=notes, data=data)
    return _checked(RawData(*arrays[:4], dataset=ds.name, source=source, rejected=notes.rejected,
                            paths=arrays.paths), ds)


def _checked(raw: RawData, ds: Dataset) -> RawData:
    """Shapes, dtypes, label range, class count and test split of what the source handed back (against the
    registered facts; a fact the data sets, None, against the data's own)."""
    shape = ds.shape or raw.images.shape[1:]
    k = ds.num_classes or len(raw.classes)
    if raw.images.dtype != np.uint8 or raw.images.ndim != 4 or raw.images.shape[1:] != shape:
        raise ValueError(f"{raw.dataset}: images are {raw.images.dtype} {raw.images.shape}, "
                         f"expected uint8 (N, *{shape})")
    if raw.labels.shape != (len(raw.images),) or raw.labels.min() < 0 or raw.labels.max() >= k:
        raise ValueError(f"{raw.dataset}: labels must be {len(raw.images)} values in [0, {k})")
    if len(raw.classes) != k or k < 2:
        raise ValueError(f"{raw.dataset}: {len(raw.classes)} class names, expected {k} (at least 2)")
    if raw.paths is not None and len(raw.paths) != len(raw.images):
        raise ValueError(f"{raw.dataset}: {len(raw.paths)} paths for {len(raw.images)} images")
    n_test = len(raw.images) - raw.n_official_train
    official = ds.official_test if ds.official_test is not None else n_test > 0
    if not 0 < raw.n_official_train <= len(raw.images) or (n_test > 0) != official:
        raise ValueError(f"{raw.dataset}: registered with official_test={ds.official_test}, but the source "
                         f"delivered {raw.n_official_train} train and {n_test} official test images")
    return raw


# ----------------------------------------------------------------------------- noise facts of a dataset
def class_map_for(dataset: str, class_map_param: str | Mapping[int, int], *,
                  key: str = "noise.asymmetric.class_map") -> dict[int, int]:
    """Resolve a class map param (``key``): ``"auto"`` → a copy of the shipped map of ``dataset``, a mapping →
    itself.

    Raises ValueError naming ``key`` for another string or a dataset without a map.
    """
    if isinstance(class_map_param, str):
        if class_map_param != "auto":
            raise ValueError(f"{key}: must be 'auto' or a mapping {{src: dst}}, got {class_map_param!r}")
        ds = _REGISTRY.get(dataset)
        if ds is None or ds.class_map is None:
            raise ValueError(f"{key}: no shipped class map for dataset {dataset!r}; "
                             "give an explicit mapping {src: dst}")
        return dict(ds.class_map)
    out: dict[int, int] = {}
    for k, v in class_map_param.items():
        if isinstance(k, bool) or isinstance(v, bool) or not isinstance(k, (int, np.integer)) \
                or not isinstance(v, (int, np.integer)):
            raise ValueError(f"{key}: keys and values must be class indices, got {k!r}: {v!r}")
        out[int(k)] = int(v)
    return out


def open_set_sources() -> tuple[str, ...]:
    """The sources of another dataset's images (``noise.open_set.source``, ``noise.massive.source``): ``auto``,
    ``white_noise`` and every registered dataset."""
    return ("auto", WHITE_NOISE, *dataset_names())


def _show_same_classes(a: str, b: str) -> bool:
    """Images of dataset ``a`` show classes of dataset ``b`` (declared by either of them, or a == b)."""
    da, db = _REGISTRY.get(a), _REGISTRY.get(b)
    return a == b or (da is not None and b in da.same_classes) or (db is not None and a in db.same_classes)


def resolve_open_set_source(dataset: str, source: str, *, key: str = "noise.open_set.source") -> str:
    """The source param ``key`` for ``dataset``: ``auto`` → the dataset's ``open_set_auto`` (white_noise for an
    unknown dataset). A source whose images show the dataset's classes is a ValueError naming the param."""
    choices = open_set_sources()
    if source not in choices:
        raise ValueError(f"{key}: must be one of {', '.join(choices)}, got {source!r}")
    ds = _REGISTRY.get(dataset)
    resolved = (ds.open_set_auto if ds is not None else WHITE_NOISE) if source == "auto" else source
    if resolved not in choices:
        raise ValueError(f"{key}: auto means {resolved!r} for the dataset {dataset}, which is not "
                         "a registered dataset; choose white_noise or another dataset")
    if resolved != WHITE_NOISE and _show_same_classes(resolved, dataset):
        raise ValueError(f"{key}: {resolved} images show classes of the dataset {dataset}, so they "
                         "are not open-set noise for it; choose white_noise or another dataset")
    return resolved


def open_set_pool(source: str, data: DataConfig, shape: tuple[int, int, int], *,
                  key: str = "noise.open_set.source") -> np.ndarray:
    """All images of the dataset ``source`` (fetched like ``data``: same cache, mirrors and network setting),
    fitted to ``shape``: uint8 (M, *shape). One clear line naming the param ``key`` (DataUnavailable) when they
    cannot be had."""
    if source not in _REGISTRY:
        raise ValueError(f"{key}: {source!r} is not a dataset")
    try:
        raw = load_dataset(dataclasses.replace(data, dataset=source))
    except DataUnavailable as e:
        raise DataUnavailable(f"{key}: {source} images are not available ({e})") from None
    return fit_images(raw.images, shape)


# ----------------------------------------------------------------------------- the dataset files
def _discover() -> None:
    """Import every module of this package whose name has no leading underscore: each registers its dataset."""
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


_discover()

# {dataset: {IDX payload stem: sha256}} of the Idx datasets: a read-only view whose inner tables are the ones
# the sources read (patch an entry of an inner table, not the outer mapping).
PAYLOAD_SHA256: Mapping[str, dict[str, str]] = MappingProxyType(
    {name: ds.source.payload_sha256 for name, ds in _REGISTRY.items() if isinstance(ds.source, Idx)})


def _load_digits() -> Arrays:
    """The arrays of ``digits`` (scikit-learn's 8x8 digits), for callers of the former single module."""
    from labelnoise.datasets import digits

    return digits.load()


__all__ = [
    "DATASETS", "PAYLOAD_SHA256", "WHITE_NOISE", "Arrays", "Bundled", "Cached", "Cifar", "DataConfig",
    "DataUnavailable", "Dataset", "DatasetSpec", "Idx", "Notes", "Prepared", "RawData", "Source", "Splits",
    "class_map_for", "data_report", "dataset_names", "fit_images", "get_dataset", "load_dataset", "load_prepared",
    "make_splits", "open_set_pool", "open_set_sources", "register_dataset", "resolve_open_set_source",
    "save_prepared",
]
