"""Datasets: fetch and verify the raw data, cut it into train / clean / val / test (what training may see of
them is :mod:`labelnoise.views`).

Sources, tried in order (``load_dataset``):

1. the cache under ``data.root``, in torchvision's own layout (``<root>/FashionMNIST/raw/...``,
   ``<root>/cifar-10-batches-py/...``);
2. local mirror folders ``data.mirrors`` (e.g. Debian's ``dataset-fashion-mnist``);
3. the network, through torchvision's own ``download=True`` (only when ``data.download``).

Every file is verified before it is used: torchvision's md5 of the archive, or, for the MNIST
family, the sha256 of the decompressed payload against ``PAYLOAD_SHA256`` (Debian recompressed the
``.gz`` files, so their md5 differs while the data are the official ones). A file that fails is
reported in one line (which file, expected vs got) and never used: downloads and extractions happen
in a staging folder under the cache, and only verified files are moved into the cache.
The arrays are then read by torchvision's dataset classes (``download=False``).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import logging
import shutil
import struct
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from labelnoise.config import DataConfig
from labelnoise.io import one_line, read_npz, save_npz, write_atomic

log = logging.getLogger(__name__)


class DataUnavailable(RuntimeError):
    """No source (cache, mirrors, network) delivered verified data; the message lists what was tried."""


# ----------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class DatasetSpec:
    family: Literal["idx", "cifar", "bundled"]
    tv_class: str | None  # torchvision.datasets class name (looked up at call time)
    shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int


DATASETS: dict[str, DatasetSpec] = {
    "fashion_mnist": DatasetSpec("idx", "FashionMNIST", (1, 28, 28), 10),
    "mnist": DatasetSpec("idx", "MNIST", (1, 28, 28), 10),
    "cifar10": DatasetSpec("cifar", "CIFAR10", (3, 32, 32), 10),
    "cifar100": DatasetSpec("cifar", "CIFAR100", (3, 32, 32), 100),
    "digits": DatasetSpec("bundled", None, (1, 8, 8), 10),
}

# sha256 of the *decompressed* IDX payloads known to be the official data, per dataset. A mirror
# file whose archive md5 differs from torchvision's (a recompressed .gz) is accepted only if its
# payload is listed here. Fashion-MNIST: the official files, as shipped by Debian's
# dataset-fashion-mnist (same payload as zalandoresearch/fashion-mnist).
PAYLOAD_SHA256: dict[str, dict[str, str]] = {
    "fashion_mnist": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}

# What a torchvision download or an archive extraction may raise (network, file, format errors).
_FETCH_ERRORS = (RuntimeError, OSError, EOFError, ValueError, tarfile.TarError, zlib.error)


def _tv_class(spec: DatasetSpec) -> Any:
    import torchvision.datasets  # lazy: only fetching needs it

    return getattr(torchvision.datasets, spec.tv_class or "")


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- fetching
@dataclass(frozen=True)
class RawData:
    """A whole dataset in memory, as fetched: the official train part first, then the official test part."""

    images: np.ndarray  # uint8 (N, C, H, W)
    labels: np.ndarray  # int64 (N,)
    n_official_train: int  # images[:n] are the official train part; images[n:] the official test (may be empty)
    classes: list[str]
    dataset: str
    source: str  # "cache" | "mirror:<path>" | "network" | "bundled"
    rejected: list[str] = field(default_factory=list)  # one line per file that failed verification


class _Notes:
    """What was tried (for the DataUnavailable line) and what was rejected (logged, reported)."""

    def __init__(self) -> None:
        self.tried: list[str] = []
        self.rejected: list[str] = []

    def reject(self, line: str) -> None:
        log.warning("rejected %s", line)
        self.rejected.append(line)


class _Family:
    """How one family of datasets is verified, installed into the cache and read.

    ``cache``, ``mirror`` and ``network`` return None when the cache now holds verified files,
    else a short reason (files that failed verification are reported through ``notes``).
    """

    def cache(self, spec: DatasetSpec, name: str, root: Path, notes: _Notes) -> str | None:
        raise NotImplementedError

    def mirror(self, spec: DatasetSpec, name: str, root: Path, mirror: Path, notes: _Notes) -> str | None:
        raise NotImplementedError

    def network(self, spec: DatasetSpec, name: str, root: Path, notes: _Notes) -> str | None:
        raise NotImplementedError

    def read(self, spec: DatasetSpec, root: Path) -> tuple[np.ndarray, np.ndarray, int, list[str]]:
        """(images uint8 (N, C, H, W), labels int64 (N,), n_official_train, classes) via torchvision."""
        raise NotImplementedError


def load_dataset(data: DataConfig) -> RawData:
    """Fetch ``data.dataset`` from the first source that yields verified files (cache, mirrors, network).

    Raises ``DataUnavailable`` (one line listing what was tried) when none does.
    """
    name = data.dataset
    spec = DATASETS[name]
    notes = _Notes()
    if spec.family == "bundled":
        images, labels, n_train, classes = _load_digits()
        return _checked(RawData(images, labels, n_train, classes, name, "bundled"), spec)

    family = _FAMILIES[spec.family]
    root = Path(data.root)
    source: str | None = None
    why = family.cache(spec, name, root, notes)
    if why is None:
        source = "cache"
    else:
        notes.tried.append(f"cache {root}: {why}")
    for mirror in data.mirrors.get(name, []) if source is None else []:
        why = family.mirror(spec, name, root, Path(mirror), notes)
        if why is None:
            source = f"mirror:{mirror}"
            break
        notes.tried.append(f"mirror {mirror}: {why}")
    if source is None and not data.download:
        notes.tried.append("network: disabled (data.download is false)")
    elif source is None:
        why = family.network(spec, name, root, notes)
        if why is None:
            source = "network"
        else:
            notes.tried.append(f"network: {why}")
    if source is None:
        raise DataUnavailable(f"{name}: no source delivered verified data; tried " + "; ".join(notes.tried))

    images, labels, n_train, classes = family.read(spec, root)
    return _checked(RawData(images, labels, n_train, classes, name, source, notes.rejected), spec)


def _checked(raw: RawData, spec: DatasetSpec) -> RawData:
    """Shapes, dtypes and label range of what torchvision (or sklearn) handed back."""
    if raw.images.dtype != np.uint8 or raw.images.shape[1:] != spec.shape:
        raise ValueError(f"{raw.dataset}: images are {raw.images.dtype} {raw.images.shape}, "
                         f"expected uint8 (N, *{spec.shape})")
    if raw.labels.shape != (len(raw.images),) or raw.labels.min() < 0 or raw.labels.max() >= spec.num_classes:
        raise ValueError(f"{raw.dataset}: labels must be {len(raw.images)} values in [0, {spec.num_classes})")
    if len(raw.classes) != spec.num_classes:
        raise ValueError(f"{raw.dataset}: {len(raw.classes)} class names, expected {spec.num_classes}")
    return raw


def _staging(root: Path) -> Path:
    """A fresh folder inside the cache root (same filesystem, so installing is a rename)."""
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".staging-", dir=root))


# ----------------------------------------------------------------------------- MNIST family (IDX .gz)
_IDX_MAGIC = {"images": 2051, "labels": 2049}  # 0x0803: uint8, 3 dims; 0x0801: uint8, 1 dim


def _idx_problem(payload: bytes, stem: str, spec: DatasetSpec) -> str | None:
    """Sanity of an IDX payload (magic, dims, size, label range); None when fine."""
    kind = "images" if "images" in stem else "labels"
    ndim = 3 if kind == "images" else 1
    if len(payload) < 4 + 4 * ndim:
        return f"{len(payload)} bytes is too short for an IDX {kind} file"
    magic = int.from_bytes(payload[:4], "big")
    if magic != _IDX_MAGIC[kind]:
        return f"IDX magic expected {_IDX_MAGIC[kind]}, got {magic}"
    dims = struct.unpack(f">{ndim}I", payload[4 : 4 + 4 * ndim])
    if kind == "images" and tuple(dims[1:]) != spec.shape[1:]:
        return f"image size expected {spec.shape[1]}x{spec.shape[2]}, got {dims[1]}x{dims[2]}"
    body = len(payload) - 4 - 4 * ndim
    if body != int(np.prod(dims)):
        return f"header says {'x'.join(map(str, dims))} = {int(np.prod(dims))} bytes, body has {body}"
    if kind == "labels" and body and max(payload[8:]) >= spec.num_classes:
        return f"label {max(payload[8:])} out of range [0, {spec.num_classes})"
    return None


def _idx_count(payload: bytes) -> int:
    return int.from_bytes(payload[4:8], "big")


def _count_problem(payloads: dict[str, bytes]) -> str | None:
    """Images and labels of one split must have the same count."""
    for split in ("train", "t10k"):
        n_img = _idx_count(payloads[f"{split}-images-idx3-ubyte"])
        n_lab = _idx_count(payloads[f"{split}-labels-idx1-ubyte"])
        if n_img != n_lab:
            return f"{split}: {n_img} images but {n_lab} labels"
    return None


def _gunzip(data: bytes) -> bytes | None:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error):
        return None


class _IdxFamily(_Family):
    """MNIST, Fashion-MNIST: four IDX files; torchvision reads ``<root>/<Class>/raw/<stem>``."""

    @staticmethod
    def _resources(spec: DatasetSpec) -> list[tuple[str, str, str]]:
        """(archive name, torchvision md5, payload stem) per file, read from the class at call time."""
        return [(gz, md5, gz.removesuffix(".gz")) for gz, md5 in _tv_class(spec).resources]

    def _raw_dir(self, spec: DatasetSpec, root: Path) -> Path:
        return root / _tv_class(spec).__name__ / "raw"

    def cache(self, spec: DatasetSpec, name: str, root: Path, notes: _Notes) -> str | None:
        raw_dir = self._raw_dir(spec, root)
        resources = self._resources(spec)
        missing = [stem for _, _, stem in resources if not (raw_dir / stem).is_file()]
        if missing:
            return f"missing {', '.join(missing)} in {raw_dir}"
        known = PAYLOAD_SHA256.get(name, {})
        payloads, bad = {}, []
        for gz, md5, stem in resources:
            path = raw_dir / stem
            payload = path.read_bytes()
            digest = _sha256(payload)
            problem = _idx_problem(payload, stem, spec)
            if problem is None and digest != known.get(stem) and not self._archive_vouches(raw_dir / gz, md5, digest):
                problem = (f"sha256 {digest} matches neither the known-good payload "
                           f"({known.get(stem, 'no entry')}) nor a verified {gz} (md5 {md5}) beside it")
            if problem is not None:
                notes.reject(f"cache file {path}: {problem}; deleted")
                path.unlink()
                bad.append(stem)
            payloads[stem] = payload
        if bad:
            return f"rejected {', '.join(bad)}"
        problem = _count_problem(payloads)
        if problem is not None:
            notes.reject(f"cache {raw_dir}: {problem}; deleted")
            for _, _, stem in resources:
                (raw_dir / stem).unlink()
            return problem
        return None

    @staticmethod
    def _archive_vouches(gz_path: Path, md5: str, digest: str) -> bool:
        """A torchvision-verified archive in the cache whose payload is exactly the cached file."""
        if not gz_path.is_file():
            return False
        data = gz_path.read_bytes()
        if _md5(data) != md5:
            return False
        payload = _gunzip(data)
        return payload is not None and _sha256(payload) == digest

    def mirror(self, spec: DatasetSpec, name: str, root: Path, mirror: Path, notes: _Notes) -> str | None:
        resources = self._resources(spec)
        missing = [gz for gz, _, _ in resources if not (mirror / gz).is_file()]
        if missing:
            return f"missing {', '.join(missing)}"
        known = PAYLOAD_SHA256.get(name, {})
        files: dict[str, tuple[bytes, bytes, bool]] = {}  # stem -> (archive, payload, archive md5 ok)
        bad = []
        for gz, md5, stem in resources:
            path = mirror / gz
            data = path.read_bytes()
            got_md5 = _md5(data)
            payload = _gunzip(data)
            if payload is None:
                notes.reject(f"{path}: not a valid gzip file (md5 expected {md5}, got {got_md5})")
                bad.append(gz)
                continue
            digest = _sha256(payload)
            problem = None
            if got_md5 != md5 and digest != known.get(stem):
                problem = (f"md5 expected {md5}, got {got_md5}; payload sha256 expected "
                           f"{known.get(stem, '(no known-good entry for ' + name + ')')}, got {digest}")
            problem = problem or _idx_problem(payload, stem, spec)
            if problem is not None:
                notes.reject(f"{path}: {problem}")
                bad.append(gz)
                continue
            files[stem] = (data, payload, got_md5 == md5)
        if bad:
            return f"rejected {', '.join(bad)}"
        problem = _count_problem({stem: payload for stem, (_, payload, _) in files.items()})
        if problem is not None:
            notes.reject(f"mirror {mirror}: {problem}")
            return problem

        # Install exactly the bytes that were verified (no second read of the mirror).
        raw_dir = self._raw_dir(spec, root)
        for gz, _, stem in resources:
            data, payload, md5_ok = files[stem]
            write_atomic(raw_dir / stem, lambda p, b=payload: p.write_bytes(b))
            if md5_ok:  # keep torchvision's archive beside its payload: it vouches for the cache later
                write_atomic(raw_dir / gz, lambda p, b=data: p.write_bytes(b))
        return None

    def network(self, spec: DatasetSpec, name: str, root: Path, notes: _Notes) -> str | None:
        cls = _tv_class(spec)
        staging = _staging(root)
        try:
            try:
                cls(str(staging), train=True, download=True)  # torchvision: mirrors, md5 check, gunzip
            except _FETCH_ERRORS as e:
                staged = staging / cls.__name__ / "raw"
                for gz, md5, _ in self._resources(spec):
                    got = _md5((staged / gz).read_bytes()) if (staged / gz).is_file() else md5
                    if got != md5:  # torchvision leaves the rejected download behind: report it (staging goes)
                        urls = ", ".join(f"{m}{gz}" for m in cls.mirrors)
                        notes.reject(f"download {gz} (from {urls}): md5 expected {md5}, got {got}")
                return one_line(e)
            staged = staging / cls.__name__ / "raw"
            payloads = {}
            for gz, _, stem in self._resources(spec):
                payloads[stem] = (staged / stem).read_bytes()
                problem = _idx_problem(payloads[stem], stem, spec)
                if problem is not None:
                    notes.reject(f"download {gz}: {problem}")
                    return f"rejected {gz}"
            problem = _count_problem(payloads)
            if problem is not None:
                notes.reject(f"download: {problem}")
                return problem
            raw_dir = self._raw_dir(spec, root)
            raw_dir.mkdir(parents=True, exist_ok=True)
            for gz, _, stem in self._resources(spec):
                (staged / gz).replace(raw_dir / gz)
                (staged / stem).replace(raw_dir / stem)
            return None
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def read(self, spec: DatasetSpec, root: Path) -> tuple[np.ndarray, np.ndarray, int, list[str]]:
        cls = _tv_class(spec)
        parts = [cls(str(root), train=train, download=False) for train in (True, False)]
        images = np.concatenate([p.data.numpy() for p in parts])[:, None]  # (N, 1, H, W)
        labels = np.concatenate([p.targets.numpy() for p in parts]).astype(np.int64)
        return images, labels, len(parts[0].data), [str(c) for c in cls.classes]


# ----------------------------------------------------------------------------- CIFAR (python tarball)
class _CifarFamily(_Family):
    """CIFAR-10/100: one tarball; torchvision reads ``<root>/<base_folder>/<batch>`` and checks each md5."""

    @staticmethod
    def _files(cls: Any) -> list[tuple[str, str]]:
        return [(f, m) for f, m in cls.train_list + cls.test_list] + [(cls.meta["filename"], cls.meta["md5"])]

    def _verify_tree(self, cls: Any, folder: Path, notes: _Notes, what: str, *, delete: bool) -> str | None:
        """Each batch and the meta file against torchvision's md5s; bad files reported (and deleted)."""
        missing, bad = [], []
        for fname, md5 in self._files(cls):
            path = folder / fname
            if not path.is_file():
                missing.append(fname)
                continue
            got = _md5(path.read_bytes())
            if got != md5:
                notes.reject(f"{what} {path}: md5 expected {md5}, got {got}" + ("; deleted" if delete else ""))
                if delete:
                    path.unlink()
                bad.append(fname)
        if bad:
            return f"rejected {', '.join(bad)}"
        if missing:
            return f"missing {', '.join(missing)} in {folder}"
        return None

    def _install(self, cls: Any, staging: Path, root: Path) -> None:
        target = root / cls.base_folder
        if target.exists():  # it failed the cache check: replace it whole
            shutil.rmtree(target)
        (staging / cls.base_folder).replace(target)

    def cache(self, spec: DatasetSpec, name: str, root: Path, notes: _Notes) -> str | None:
        cls = _tv_class(spec)
        return self._verify_tree(cls, root / cls.base_folder, notes, "cache file", delete=True)

    def mirror(self, spec: DatasetSpec, name: str, root: Path, mirror: Path, notes: _Notes) -> str | None:
        from torchvision.datasets.utils import calculate_md5, check_integrity, extract_archive

        cls = _tv_class(spec)
        path = mirror / cls.filename
        if not path.is_file():
            return f"missing {cls.filename}"
        if not check_integrity(str(path), cls.tgz_md5):
            notes.reject(f"{path}: md5 expected {cls.tgz_md5}, got {calculate_md5(str(path))}")
            return f"rejected {cls.filename}"
        staging = _staging(root)
        try:
            try:
                extract_archive(str(path), str(staging))
            except _FETCH_ERRORS as e:
                notes.reject(f"{path}: cannot be extracted ({one_line(e)})")
                return f"rejected {cls.filename}"
            why = self._verify_tree(cls, staging / cls.base_folder, notes, f"{cls.filename} member", delete=False)
            if why is not None:
                return why
            self._install(cls, staging, root)
            return None
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def network(self, spec: DatasetSpec, name: str, root: Path, notes: _Notes) -> str | None:
        cls = _tv_class(spec)
        staging = _staging(root)
        try:
            try:
                cls(str(staging), train=True, download=True)  # torchvision: download, tgz md5, extract, batch md5s
            except _FETCH_ERRORS as e:
                archive = staging / cls.filename
                if archive.is_file() and _md5(archive.read_bytes()) != cls.tgz_md5:
                    notes.reject(f"download {cls.url}: md5 expected {cls.tgz_md5}, got {_md5(archive.read_bytes())}")
                else:
                    self._verify_tree(cls, staging / cls.base_folder, notes, "downloaded", delete=False)
                return one_line(e)
            why = self._verify_tree(cls, staging / cls.base_folder, notes, "downloaded", delete=False)
            if why is not None:
                return why
            self._install(cls, staging, root)
            return None
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def read(self, spec: DatasetSpec, root: Path) -> tuple[np.ndarray, np.ndarray, int, list[str]]:
        cls = _tv_class(spec)
        parts = [cls(str(root), train=train, download=False) for train in (True, False)]
        images = np.concatenate([p.data for p in parts]).transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
        labels = np.concatenate([np.asarray(p.targets, dtype=np.int64) for p in parts])
        return np.ascontiguousarray(images), labels, len(parts[0].data), [str(c) for c in parts[0].classes]


_FAMILIES: dict[str, _Family] = {"idx": _IdxFamily(), "cifar": _CifarFamily()}


def _load_digits() -> tuple[np.ndarray, np.ndarray, int, list[str]]:
    """scikit-learn's bundled 8x8 digits; values 0..16 scaled to uint8 0..255. No official test split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images.astype(np.int64) * 255 // 16).astype(np.uint8)[:, None]  # (1797, 1, 8, 8)
    return images, d.target.astype(np.int64), len(images), [str(c) for c in d.target_names]


# ----------------------------------------------------------------------------- splits
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


def make_splits(labels: np.ndarray, *, n_official_train: int, clean_size: int, val_size: int, test_size: int,
                train_limit: int, seed: int) -> Splits:
    """Cut the fetched dataset into disjoint train / clean / val / test index sets.

    labels: int64 (N,); ``labels[:n_official_train]`` is the official train part, the rest the
    official test part. ``test`` is the official test part; a dataset without one (digits) holds out
    a stratified ``test_size`` instead (``test_size`` is ignored otherwise). From the train part:
    ``clean`` (the trusted subset, as equal per class as possible, exactly ``clean_size``), then
    ``val`` (stratified, ``val_size``), then ``train`` = the rest, or a stratified ``train_limit``
    of it. Pure numpy on ``np.random.default_rng(seed)``: same seed, same split.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if not 0 < n_official_train <= n or labels.min() < 0:
        raise ValueError(f"make_splits: need non-negative labels and 0 < n_official_train <= {n}, "
                         f"got {n_official_train}")
    num_classes = int(labels.max()) + 1 if n else 0
    rng = np.random.default_rng(seed)
    pool = np.arange(n_official_train, dtype=np.int64)

    if n_official_train < n:
        test = np.arange(n_official_train, n, dtype=np.int64)
    else:
        if not 0 < test_size < n:
            raise ValueError(f"data.test_size: must be in [1, {n - 1}] for a dataset without an official test split, "
                             f"got {test_size}")
        test = _stratified(pool, labels, test_size, num_classes, rng, balanced=False)
        pool = np.setdiff1d(pool, test)

    if clean_size + val_size >= len(pool):
        raise ValueError(f"data.clean_size ({clean_size}) + data.val_size ({val_size}) must be smaller than the "
                         f"{len(pool)} training examples available, to leave a train split")
    clean = _stratified(pool, labels, clean_size, num_classes, rng, balanced=True)
    pool = np.setdiff1d(pool, clean)
    val = _stratified(pool, labels, val_size, num_classes, rng, balanced=False)
    pool = np.setdiff1d(pool, val)
    if train_limit > len(pool):
        raise ValueError(f"data.train_limit ({train_limit}) exceeds the {len(pool)} training examples left "
                         "after data.clean_size and data.val_size")
    train = _stratified(pool, labels, train_limit, num_classes, rng, balanced=False) if train_limit else pool
    return Splits(train_idx=train, clean_idx=clean, val_idx=val, test_idx=test)


# ----------------------------------------------------------------------------- prepared file
_INDEX_FIELDS = ("train_idx", "clean_idx", "val_idx", "test_idx")


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

    def __post_init__(self) -> None:
        n = len(self.images)
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

    def sizes(self) -> dict[str, int]:
        return {name.removesuffix("_idx"): len(getattr(self, name)) for name in _INDEX_FIELDS}


def save_prepared(path: str | Path, p: Prepared) -> Path:
    """Write ``p`` atomically as an uncompressed npz (class names as a string array, no pickle)."""
    return save_npz(path, images=p.images, labels=p.labels, **{k: getattr(p, k) for k in _INDEX_FIELDS},
                    classes=np.array(p.classes, dtype=np.str_), dataset=np.array(p.dataset, dtype=np.str_))


def load_prepared(path: str | Path) -> Prepared:
    """Read a file written by ``save_prepared``; one clear line when it is missing or corrupt."""
    arrays = read_npz(path, remedy="run the download stage (dvc repro download)",
                      keys=("images", "labels", *_INDEX_FIELDS, "classes", "dataset"))
    return Prepared(images=arrays["images"], labels=arrays["labels"], **{k: arrays[k] for k in _INDEX_FIELDS},
                    classes=[str(c) for c in arrays["classes"]], dataset=str(arrays["dataset"]))


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
        "sha256": {k: _sha256(np.ascontiguousarray(getattr(p, k)).tobytes())
                   for k in ("images", "labels", *_INDEX_FIELDS)},
        "rejected": list(rejected),
    }


# ----------------------------------------------------------------------------- open-set noise sources
def fit_images(images: np.ndarray, shape: tuple[int, int, int], *, chunk: int = 4096) -> np.ndarray:
    """uint8 (M, C, H, W) images → uint8 (M, *shape): channels by repetition (1 → 3) or ITU-R 601 luma
    (3 → 1), size by bilinear resampling (antialiased when shrinking), rounded to the nearest integer."""
    import torch.nn.functional as F

    c_out, h_out, w_out = shape
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"fit_images: need uint8 (M, C, H, W), got {images.dtype} {images.shape}")
    c_in = images.shape[1]
    if c_in not in (1, 3) or c_out not in (1, 3):
        raise ValueError(f"fit_images: can map 1 or 3 channels only, got {c_in} -> {c_out}")
    luma = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float32).view(1, 3, 1, 1)
    out = np.empty((len(images), c_out, h_out, w_out), dtype=np.uint8)
    for start in range(0, len(images), chunk):
        x = torch.from_numpy(images[start : start + chunk]).float()  # (b, C, H, W) in 0..255
        if c_in == 3 and c_out == 1:
            x = (x * luma).sum(dim=1, keepdim=True)
        elif c_in == 1 and c_out == 3:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[2:] != (h_out, w_out):
            shrink = h_out < x.shape[2] or w_out < x.shape[3]
            x = F.interpolate(x, size=(h_out, w_out), mode="bilinear", align_corners=False, antialias=shrink)
        out[start : start + chunk] = x.round().clamp(0, 255).to(torch.uint8).numpy()
    return out


def open_set_pool(source: str, data: DataConfig, shape: tuple[int, int, int]) -> np.ndarray:
    """All images of the dataset ``source`` (fetched like ``data``: same cache, mirrors and network setting),
    fitted to ``shape``: uint8 (M, *shape). One clear line (DataUnavailable) when they cannot be had."""
    if source not in DATASETS:
        raise ValueError(f"noise.open_set_source: {source!r} is not a dataset")
    try:
        raw = load_dataset(dataclasses.replace(data, dataset=source))
    except DataUnavailable as e:
        raise DataUnavailable(f"noise.open_set_source: {source} images are not available ({e})") from None
    return fit_images(raw.images, shape)


__all__ = [
    "DATASETS", "PAYLOAD_SHA256", "DataUnavailable", "DatasetSpec", "Prepared", "RawData", "Splits", "data_report",
    "fit_images", "load_dataset", "load_prepared", "make_splits", "open_set_pool", "save_prepared",
]
