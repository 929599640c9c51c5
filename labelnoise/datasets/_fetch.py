"""What every dataset source shares: the arrays it returns, the notes of what was tried, and the cache → mirrors →
network order of sources that keep verified files in the cache (:class:`Cached`, done by ``_idx`` and ``_cifar``).

A source is an object with ``fetch(ds, *, root, mirrors, download, notes, data) -> (Arrays, label)``; ``label`` is
what the data report records as the source (``cache``, ``mirror:<path>``, ``network``, ``bundled``, ``folder:<path>``).
"""

from __future__ import annotations

import hashlib
import logging
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from labelnoise.datasets import Dataset

log = logging.getLogger("labelnoise.datasets")  # one logger for the package: its rejected files are one stream

# What a torchvision download or an archive extraction may raise (network, file, format errors).
FETCH_ERRORS = (RuntimeError, OSError, EOFError, ValueError, tarfile.TarError, zlib.error)


class DataUnavailable(RuntimeError):
    """No source (cache, mirrors, network) delivered verified data; the message lists what was tried."""


class Arrays(NamedTuple):
    """A whole dataset as one source delivers it: the official train part first, then the official test part."""

    images: np.ndarray  # uint8 (N, C, H, W)
    labels: np.ndarray  # int64 (N,) in [0, K)
    n_official_train: int  # images[:n] are the official train part, images[n:] the official test part (may be empty)
    classes: list[str]  # K class names, in label order
    paths: list[str] | None = None  # one per image: where it was read from (a folder dataset), else None


@dataclass(frozen=True)
class RawData:
    """A whole dataset in memory, as fetched: the official train part first, then the official test part."""

    images: np.ndarray  # uint8 (N, C, H, W)
    labels: np.ndarray  # int64 (N,)
    n_official_train: int  # images[:n] are the official train part; images[n:] the official test (may be empty)
    classes: list[str]
    dataset: str
    source: str  # "cache" | "mirror:<path>" | "network" | "bundled"
    rejected: list[str] = field(default_factory=list)  # one line per file that failed verification (or was skipped)
    paths: list[str] | None = None  # one per image where the source reads image files (folder)


class Notes:
    """What was tried (for the DataUnavailable line) and what was rejected (logged, reported)."""

    def __init__(self) -> None:
        self.tried: list[str] = []
        self.rejected: list[str] = []

    def reject(self, line: str) -> None:
        log.warning("rejected %s", line)
        self.rejected.append(line)


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def staging(root: Path) -> Path:
    """A fresh folder inside the cache root (same filesystem, so installing is a rename)."""
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".staging-", dir=root))


class Source:
    """How a dataset's arrays are obtained. Subclasses implement :meth:`fetch`."""

    def fetch(self, ds: Dataset, *, root: Path, mirrors: list[str], download: bool, notes: Notes,
              data: Any = None) -> tuple[Arrays, str]:
        """(the arrays, where they came from). ``root``: the cache folder (``data.root``); ``mirrors``: local
        folders to try (``data.mirrors[ds.name]``); ``download``: the network is allowed; ``data``: the whole params
        section ``data`` (a source with params of its own reads them there). Raises DataUnavailable."""
        raise NotImplementedError


@dataclass(frozen=True)
class Bundled(Source):
    """Arrays from a function: data shipped with a library (scikit-learn's digits) or made in memory.

    Nothing to verify or cache: ``load()`` is called each time and returns :class:`Arrays`.
    """

    load: Callable[[], Arrays]
    label: str = "bundled"  # the data report's `source`

    def fetch(self, ds: Dataset, *, root: Path, mirrors: list[str], download: bool, notes: Notes,
              data: Any = None) -> tuple[Arrays, str]:
        return Arrays(*self.load()), self.label


class Cached(Source):
    """Files verified into the cache under ``root``: tried from the cache, each mirror in order, then the network.

    ``cache``, ``mirror`` and ``network`` return None when the cache now holds verified files, else a short reason
    (files that failed verification are reported through ``notes``); ``read`` then reads the cache.
    """

    def cache(self, ds: Dataset, root: Path, notes: Notes) -> str | None:
        raise NotImplementedError

    def mirror(self, ds: Dataset, root: Path, mirror: Path, notes: Notes) -> str | None:
        raise NotImplementedError

    def network(self, ds: Dataset, root: Path, notes: Notes) -> str | None:
        raise NotImplementedError

    def read(self, ds: Dataset, root: Path) -> Arrays:
        raise NotImplementedError

    def fetch(self, ds: Dataset, *, root: Path, mirrors: list[str], download: bool, notes: Notes,
              data: Any = None) -> tuple[Arrays, str]:
        source: str | None = None
        why = self.cache(ds, root, notes)
        if why is None:
            source = "cache"
        else:
            notes.tried.append(f"cache {root}: {why}")
        for mirror in mirrors if source is None else []:
            why = self.mirror(ds, root, Path(mirror), notes)
            if why is None:
                source = f"mirror:{mirror}"
                break
            notes.tried.append(f"mirror {mirror}: {why}")
        if source is None and not download:
            notes.tried.append("network: disabled (data.download is false)")
        elif source is None:
            why = self.network(ds, root, notes)
            if why is None:
                source = "network"
            else:
                notes.tried.append(f"network: {why}")
        if source is None:
            raise DataUnavailable(f"{ds.name}: no source delivered verified data; tried " + "; ".join(notes.tried))
        return self.read(ds, root), source


def torchvision_class(name: str) -> type:
    """``torchvision.datasets.<name>``, looked up at call time (tests patch its checksum constants)."""
    import torchvision.datasets  # lazy: only fetching needs it

    return getattr(torchvision.datasets, name)
