"""The MNIST family (MNIST, Fashion-MNIST, and any torchvision class with the same four IDX ``.gz`` files).

Every file is verified before it is used: torchvision's md5 of the archive, or the sha256 of the decompressed
payload against the dataset's known-good table (``Idx.payload_sha256``: Debian recompressed the ``.gz`` files,
so their md5 differs while the data are the official ones). Downloads happen in a staging folder under the
cache; only verified files are moved into the cache. torchvision's class then reads ``<root>/<Class>/raw/<stem>``.
"""

from __future__ import annotations

import gzip
import shutil
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from labelnoise.datasets._fetch import (
    FETCH_ERRORS,
    Arrays,
    Cached,
    Notes,
    md5,
    sha256,
    staging,
    torchvision_class,
)
from labelnoise.io import one_line, write_atomic

if TYPE_CHECKING:
    from labelnoise.datasets import Dataset

_IDX_MAGIC = {"images": 2051, "labels": 2049}  # 0x0803: uint8, 3 dims; 0x0801: uint8, 1 dim


def _idx_problem(payload: bytes, stem: str, ds: Dataset) -> str | None:
    """Sanity of an IDX payload (magic, dims, size, label range); None when fine."""
    kind = "images" if "images" in stem else "labels"
    ndim = 3 if kind == "images" else 1
    if len(payload) < 4 + 4 * ndim:
        return f"{len(payload)} bytes is too short for an IDX {kind} file"
    magic = int.from_bytes(payload[:4], "big")
    if magic != _IDX_MAGIC[kind]:
        return f"IDX magic expected {_IDX_MAGIC[kind]}, got {magic}"
    dims = struct.unpack(f">{ndim}I", payload[4 : 4 + 4 * ndim])
    if kind == "images" and tuple(dims[1:]) != ds.shape[1:]:
        return f"image size expected {ds.shape[1]}x{ds.shape[2]}, got {dims[1]}x{dims[2]}"
    body = len(payload) - 4 - 4 * ndim
    if body != int(np.prod(dims)):
        return f"header says {'x'.join(map(str, dims))} = {int(np.prod(dims))} bytes, body has {body}"
    if kind == "labels" and body and max(payload[8:]) >= ds.num_classes:
        return f"label {max(payload[8:])} out of range [0, {ds.num_classes})"
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


class Idx(Cached):
    """Four IDX ``.gz`` files read by ``torchvision.datasets.<tv_class>`` (``MNIST``, ``FashionMNIST``, ...).

    ``payload_sha256``: {payload stem: sha256 of the decompressed file} known to be the official data; a
    mirror file whose archive md5 differs from torchvision's (a recompressed ``.gz``) is accepted only if
    its payload is listed here. Read at call time, so a test may patch its entries.
    """

    def __init__(self, tv_class: str, payload_sha256: dict[str, str] | None = None) -> None:
        self.tv_class = tv_class
        self.payload_sha256: dict[str, str] = dict(payload_sha256 or {})

    def __repr__(self) -> str:
        return f"Idx({self.tv_class!r})"

    def _resources(self) -> list[tuple[str, str, str]]:
        """(archive name, torchvision md5, payload stem) per file, read from the class at call time."""
        return [(gz, digest, gz.removesuffix(".gz")) for gz, digest in torchvision_class(self.tv_class).resources]

    def _raw_dir(self, root: Path) -> Path:
        return root / torchvision_class(self.tv_class).__name__ / "raw"

    def cache(self, ds: Dataset, root: Path, notes: Notes) -> str | None:
        raw_dir = self._raw_dir(root)
        resources = self._resources()
        missing = [stem for _, _, stem in resources if not (raw_dir / stem).is_file()]
        if missing:
            return f"missing {', '.join(missing)} in {raw_dir}"
        known = self.payload_sha256
        payloads, bad = {}, []
        for gz, gz_md5, stem in resources:
            path = raw_dir / stem
            payload = path.read_bytes()
            digest = sha256(payload)
            problem = _idx_problem(payload, stem, ds)
            if (problem is None and digest != known.get(stem)
                    and not self._archive_vouches(raw_dir / gz, gz_md5, digest)):
                problem = (f"sha256 {digest} matches neither the known-good payload "
                           f"({known.get(stem, 'no entry')}) nor a verified {gz} (md5 {gz_md5}) beside it")
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
    def _archive_vouches(gz_path: Path, gz_md5: str, digest: str) -> bool:
        """A torchvision-verified archive in the cache whose payload is exactly the cached file."""
        if not gz_path.is_file():
            return False
        data = gz_path.read_bytes()
        if md5(data) != gz_md5:
            return False
        payload = _gunzip(data)
        return payload is not None and sha256(payload) == digest

    def mirror(self, ds: Dataset, root: Path, mirror: Path, notes: Notes) -> str | None:
        resources = self._resources()
        missing = [gz for gz, _, _ in resources if not (mirror / gz).is_file()]
        if missing:
            return f"missing {', '.join(missing)}"
        known = self.payload_sha256
        files: dict[str, tuple[bytes, bytes, bool]] = {}  # stem -> (archive, payload, archive md5 ok)
        bad = []
        for gz, gz_md5, stem in resources:
            path = mirror / gz
            data = path.read_bytes()
            got_md5 = md5(data)
            payload = _gunzip(data)
            if payload is None:
                notes.reject(f"{path}: not a valid gzip file (md5 expected {gz_md5}, got {got_md5})")
                bad.append(gz)
                continue
            digest = sha256(payload)
            problem = None
            if got_md5 != gz_md5 and digest != known.get(stem):
                problem = (f"md5 expected {gz_md5}, got {got_md5}; payload sha256 expected "
                           f"{known.get(stem, '(no known-good entry for ' + ds.name + ')')}, got {digest}")
            problem = problem or _idx_problem(payload, stem, ds)
            if problem is not None:
                notes.reject(f"{path}: {problem}")
                bad.append(gz)
                continue
            files[stem] = (data, payload, got_md5 == gz_md5)
        if bad:
            return f"rejected {', '.join(bad)}"
        problem = _count_problem({stem: payload for stem, (_, payload, _) in files.items()})
        if problem is not None:
            notes.reject(f"mirror {mirror}: {problem}")
            return problem

        # Install exactly the bytes that were verified (no second read of the mirror).
        raw_dir = self._raw_dir(root)
        for gz, _, stem in resources:
            data, payload, md5_ok = files[stem]
            write_atomic(raw_dir / stem, lambda p, b=payload: p.write_bytes(b))
            if md5_ok:  # keep torchvision's archive beside its payload: it vouches for the cache later
                write_atomic(raw_dir / gz, lambda p, b=data: p.write_bytes(b))
        return None

    def network(self, ds: Dataset, root: Path, notes: Notes) -> str | None:
        cls = torchvision_class(self.tv_class)
        folder = staging(root)
        try:
            try:
                cls(str(folder), train=True, download=True)  # torchvision: mirrors, md5 check, gunzip
            except FETCH_ERRORS as e:
                staged = folder / cls.__name__ / "raw"
                for gz, gz_md5, _ in self._resources():
                    got = md5((staged / gz).read_bytes()) if (staged / gz).is_file() else gz_md5
                    if got != gz_md5:  # torchvision leaves the rejected download behind: report it (staging goes)
                        urls = ", ".join(f"{m}{gz}" for m in cls.mirrors)
                        notes.reject(f"download {gz} (from {urls}): md5 expected {gz_md5}, got {got}")
                return one_line(e)
            staged = folder / cls.__name__ / "raw"
            payloads = {}
            for gz, _, stem in self._resources():
                payloads[stem] = (staged / stem).read_bytes()
                problem = _idx_problem(payloads[stem], stem, ds)
                if problem is not None:
                    notes.reject(f"download {gz}: {problem}")
                    return f"rejected {gz}"
            problem = _count_problem(payloads)
            if problem is not None:
                notes.reject(f"download: {problem}")
                return problem
            raw_dir = self._raw_dir(root)
            raw_dir.mkdir(parents=True, exist_ok=True)
            for gz, _, stem in self._resources():
                (staged / gz).replace(raw_dir / gz)
                (staged / stem).replace(raw_dir / stem)
            return None
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def read(self, ds: Dataset, root: Path) -> Arrays:
        cls = torchvision_class(self.tv_class)
        parts = [cls(str(root), train=train, download=False) for train in (True, False)]
        images = np.concatenate([p.data.numpy() for p in parts])[:, None]  # (N, 1, H, W)
        labels = np.concatenate([p.targets.numpy() for p in parts]).astype(np.int64)
        return Arrays(images, labels, len(parts[0].data), [str(c) for c in cls.classes])
