"""The CIFAR family (CIFAR-10, CIFAR-100): one python tarball of pickled batches.

The tarball is verified against torchvision's md5 before it is extracted (into a staging folder under the
cache), and every batch and the meta file against torchvision's md5s before the folder is moved into the
cache. torchvision's class then reads ``<root>/<base_folder>/<batch>`` (and checks each md5 itself).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from labelnoise.datasets._fetch import FETCH_ERRORS, Arrays, Cached, Notes, md5, staging, torchvision_class
from labelnoise.io import one_line

if TYPE_CHECKING:
    from labelnoise.datasets import Dataset


class Cifar(Cached):
    """A CIFAR-style python tarball read by ``torchvision.datasets.<tv_class>`` (``CIFAR10``, ``CIFAR100``)."""

    def __init__(self, tv_class: str) -> None:
        self.tv_class = tv_class

    def __repr__(self) -> str:
        return f"Cifar({self.tv_class!r})"

    @staticmethod
    def _files(cls: Any) -> list[tuple[str, str]]:
        return [(f, m) for f, m in cls.train_list + cls.test_list] + [(cls.meta["filename"], cls.meta["md5"])]

    def _verify_tree(self, cls: Any, folder: Path, notes: Notes, what: str, *, delete: bool) -> str | None:
        """Each batch and the meta file against torchvision's md5s; bad files reported (and deleted)."""
        missing, bad = [], []
        for fname, want in self._files(cls):
            path = folder / fname
            if not path.is_file():
                missing.append(fname)
                continue
            got = md5(path.read_bytes())
            if got != want:
                notes.reject(f"{what} {path}: md5 expected {want}, got {got}" + ("; deleted" if delete else ""))
                if delete:
                    path.unlink()
                bad.append(fname)
        if bad:
            return f"rejected {', '.join(bad)}"
        if missing:
            return f"missing {', '.join(missing)} in {folder}"
        return None

    @staticmethod
    def _install(cls: Any, folder: Path, root: Path) -> None:
        target = root / cls.base_folder
        if target.exists():  # it failed the cache check: replace it whole
            shutil.rmtree(target)
        (folder / cls.base_folder).replace(target)

    def cache(self, ds: Dataset, root: Path, notes: Notes) -> str | None:
        cls = torchvision_class(self.tv_class)
        return self._verify_tree(cls, root / cls.base_folder, notes, "cache file", delete=True)

    def mirror(self, ds: Dataset, root: Path, mirror: Path, notes: Notes) -> str | None:
        from torchvision.datasets.utils import calculate_md5, check_integrity, extract_archive

        cls = torchvision_class(self.tv_class)
        path = mirror / cls.filename
        if not path.is_file():
            return f"missing {cls.filename}"
        if not check_integrity(str(path), cls.tgz_md5):
            notes.reject(f"{path}: md5 expected {cls.tgz_md5}, got {calculate_md5(str(path))}")
            return f"rejected {cls.filename}"
        folder = staging(root)
        try:
            try:
                extract_archive(str(path), str(folder))
            except FETCH_ERRORS as e:
                notes.reject(f"{path}: cannot be extracted ({one_line(e)})")
                return f"rejected {cls.filename}"
            why = self._verify_tree(cls, folder / cls.base_folder, notes, f"{cls.filename} member", delete=False)
            if why is not None:
                return why
            self._install(cls, folder, root)
            return None
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def network(self, ds: Dataset, root: Path, notes: Notes) -> str | None:
        cls = torchvision_class(self.tv_class)
        folder = staging(root)
        try:
            try:
                cls(str(folder), train=True, download=True)  # torchvision: download, tgz md5, extract, batch md5s
            except FETCH_ERRORS as e:
                archive = folder / cls.filename
                if archive.is_file() and md5(archive.read_bytes()) != cls.tgz_md5:
                    notes.reject(f"download {cls.url}: md5 expected {cls.tgz_md5}, got {md5(archive.read_bytes())}")
                else:
                    self._verify_tree(cls, folder / cls.base_folder, notes, "downloaded", delete=False)
                return one_line(e)
            why = self._verify_tree(cls, folder / cls.base_folder, notes, "downloaded", delete=False)
            if why is not None:
                return why
            self._install(cls, folder, root)
            return None
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def read(self, ds: Dataset, root: Path) -> Arrays:
        cls = torchvision_class(self.tv_class)
        parts = [cls(str(root), train=train, download=False) for train in (True, False)]
        images = np.concatenate([p.data for p in parts]).transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
        labels = np.concatenate([np.asarray(p.targets, dtype=np.int64) for p in parts])
        return Arrays(np.ascontiguousarray(images), labels, len(parts[0].data), [str(c) for c in parts[0].classes])
