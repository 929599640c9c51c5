"""Your own images from disk (``data.dataset: folder``, ``data.path``), in one of three layouts:

- an image tree ``<path>/<class>/<image>`` (torchvision's ImageFolder): every image is train data, and a test split
  of ``data.test_size`` is cut from it, stratified;
- a tree with its own test split ``<path>/train/<class>/<image>`` and ``<path>/test/<class>/<image>``;
- a manifest ``<path>`` (``.csv`` or ``.parquet``) with the columns ``path,label`` and optionally ``split``
  (``train`` or ``test``; empty = train); a relative image path is the manifest's folder's, a label a class name
  or a class index.

Images of any size and mode are converted once (stage download) to what the pipeline trains on: grayscale
(``data.channels: 1``) or RGB (3), the shorter side resized to ``data.image_size`` (antialiased) and centre-cropped
to a square. The classes are ``data.classes`` when given, else the train part's class names sorted (a tree's class
folders, a manifest's labels), or 0..K-1 when every label is an index; a label outside them is one line naming
it. The dataset's order, which every file of labels (``noise.given.file``, ``data.clean_file``) follows: the train part
first, then the test part; in a tree by class folder, then file name, both sorted; in a manifest by row.

An image that cannot be read is one line naming its file, or with ``data.skip_bad_images: true`` it is left out
and listed in the data report.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from labelnoise.datasets import Arrays, Dataset, Notes, Source, register_dataset
from labelnoise.io import regular_file
from labelnoise.schema import ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
MANIFEST_SUFFIXES = (".csv", ".parquet")
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Entry:
    """One image as the layout lists it."""

    file: Path  # where it is read from
    name: str  # how reports and label files name it: its path relative to the tree or as the manifest gives it
    label: str  # a class name, or a class index as text
    split: str  # train | test


def list_tree(root: Path) -> list[Entry]:
    """The images of a tree, train before test, sorted by class folder then file name. Missing folder, a tree
    without class folders, an empty class folder: one ValueError line."""
    if not root.is_dir():
        raise ValueError(f"data.path: {root} does not exist (an image folder <class>/<image>, or a manifest "
                          f"{' / '.join(MANIFEST_SUFFIXES)})")
    subdirs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    parts = SPLITS if set(subdirs) == set(SPLITS) else ("",)  # root/train/<class>, root/test/<class>
    entries = []
    for part in parts:
        top = root / part if part else root
        classes = sorted(d for d in top.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not classes:
            raise ValueError(f"data.path: {top} has no class folders (<class>/<image>)")
        for folder in classes:
            files = sorted(f for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise ValueError(f"data.path: class folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            entries += [Entry(f, f.relative_to(root).as_posix(), folder.name, part or "train") for f in files]
    return entries


def list_manifest(path: Path) -> list[Entry]:
    """The rows of a manifest (path,label[,split]), train rows before test rows, each part in row order."""
    if not path.is_file():
        raise ValueError(f"data.path: {path} does not exist")
    try:
        if path.suffix.lower() == ".parquet":
            import pandas as pd  # lazy: only parquet manifests need it

            rows = pd.read_parquet(path).astype(str).to_dict("records")
        else:
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
    except Exception as e:  # noqa: BLE001 - not a table of the kind its name says: one line
        raise ValueError(f"data.path: {path} cannot be read as a manifest ({' '.join(str(e).split())[:200]})"
                          ) from None
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise ValueError(f"data.path: {path} needs a header row with the columns path,label[,split] and one row "
                          "per image")
    entries = []
    for r, row in enumerate(rows, start=2):
        name, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
        split = (row.get("split") or "").strip() or "train"
        if not name or not label or split not in SPLITS:
            raise ValueError(f"data.path: {path} row {r}: needs a path, a label and a split train or test (or "
                              f"none), got {name!r}, {label!r}, {split!r}")
        file = Path(name) if Path(name).is_absolute() else path.parent / name
        entries.append(Entry(file, name, label, split))
    return sorted(entries, key=lambda e: SPLITS.index(e.split))  # stable: row order within a part


def class_names(entries: list[Entry], given: list[str]) -> list[str]:
    """``given``, else the train part's labels: 0..K-1 as text when all are indices, else the names sorted."""
    if given:
        return list(given)
    names = {e.label for e in entries if e.split == "train"}
    if all(n.isdigit() for n in names):
        return [str(i) for i in range(max(map(int, names)) + 1)]
    return sorted(names)


def label_indices(entries: list[Entry], classes: list[str], *, where: Path) -> np.ndarray:
    """int64 (n,): each entry's class index; a label that is neither a class name nor an index is one line."""
    lookup = {c: i for i, c in enumerate(classes)}
    out = np.empty(len(entries), dtype=np.int64)
    for i, e in enumerate(entries):
        k = lookup.get(e.label, int(e.label) if e.label.isdigit() else -1)
        if not 0 <= k < len(classes):
            shown = ", ".join(classes[:12]) + (", ..." if len(classes) > 12 else "")
            raise ValueError(f"data.path: {where}: {e.name} has the unknown class {e.label!r} (classes: {shown}; "
                              "set data.classes to name them all)")
        out[i] = k
    return out


def load_image(file: Path, *, size: int, channels: int) -> np.ndarray:
    """uint8 (C, size, size): ``file`` in grayscale or RGB, shorter side resized to ``size`` (bilinear,
    antialiased when shrinking), centre-cropped. Raises OSError / ValueError when it cannot be read."""
    from PIL import Image  # lazy: only folder datasets decode image files

    with Image.open(file) as im:
        im = im.convert("L" if channels == 1 else "RGB")
        w, h = im.size
        scale = size / min(w, h)
        im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BILINEAR)
        left, top = (im.width - size) // 2, (im.height - size) // 2
        a = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return a[None] if channels == 1 else a.transpose(2, 0, 1)  # (H, W) / (H, W, 3) -> (C, H, W)


@dataclass(frozen=True)
class Folder(Source):
    """Images read from ``data.path`` (a tree or a manifest) with the params of ``data``; nothing is cached or
    downloaded: stage download converts them once, and DVC caches what it writes."""

    def fetch(self, ds: Dataset, *, root: Path, mirrors: list[str], download: bool, notes: Notes,
              data: Any = None) -> tuple[Arrays, str]:
        if data is None or not data.path:
            raise ConfigError("data.path: set it to your image folder or manifest (data.dataset: folder)")
        path = Path(data.path)
        is_manifest = path.suffix.lower() in MANIFEST_SUFFIXES
        entries = list_manifest(path) if is_manifest else list_tree(path)
        images = np.empty((len(entries), data.channels, data.image_size, data.image_size), dtype=np.uint8)
        ok = np.ones(len(entries), dtype=bool)
        for i, e in enumerate(entries):
            if e.file.exists():  # a named pipe or a device would block or never end (a missing file: below)
                regular_file(e.file, what="data.path")
            try:
                images[i] = load_image(e.file, size=data.image_size, channels=data.channels)
            except (OSError, ValueError, SyntaxError) as err:  # PIL: missing, truncated, not an image
                why = " ".join(str(err).split())[:160] or type(err).__name__
                if not data.skip_bad_images:
                    raise ValueError(f"data.path: {e.file} cannot be read as an image ({why}); fix or remove it, "
                                      "or set data.skip_bad_images: true") from None
                notes.reject(f"{e.name}: skipped, cannot be read as an image ({why})")
                ok[i] = False
        entries = [e for e, good in zip(entries, ok, strict=True) if good]
        classes = class_names(entries, list(data.classes))
        labels = label_indices(entries, classes, where=path)
        n_train = sum(e.split == "train" for e in entries)
        if n_train == 0:
            raise ValueError(f"data.path: {path} has no train images")
        return Arrays(images=images[ok], labels=labels, n_official_train=n_train, classes=classes,
                      paths=[e.name for e in entries]), f"folder:{path}"


FOLDER = register_dataset(Dataset(
    name="folder",
    shape=None,  # (data.channels, data.image_size, data.image_size)
    num_classes=None,  # the data's classes
    official_test=None,  # a test split in the data is used as it is; else data.test_size is cut
    source=Folder(),
    augment="none",  # `train.augment: auto`; set crop_flip for photos
))
