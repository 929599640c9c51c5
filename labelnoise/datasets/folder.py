"""Your own images from disk (``data.dataset: folder``, ``data.path``), in one of three layouts:

- an image tree ``<path>/<class>/<image>`` (torchvision's ImageFolder): every image is train data, and a test split
  of ``data.test_size`` is cut from it, stratified;
- a tree with its own test split ``<path>/train/<class>/<image>`` and ``<path>/test/<class>/<image>``;
- a manifest ``<path>`` (``.csv`` in UTF-8, or ``.parquet``) with the columns ``path,label`` and optionally
  ``split`` (``train`` or ``test``; empty = train), one row per image; a relative image path is the manifest's
  folder's.

Every image must lie inside the data folder (the tree, or the manifest's folder: what DVC tracks), links followed,
and be listed once: a path that leaves it (``..``, an absolute path elsewhere, a link out) or a file listed twice
(the same image in train and test would leak the test split into training) is one line naming the rows, before
any image is read.

Images of any size and mode are converted once (stage download) to what the pipeline trains on: grayscale
(``data.channels: 1``) or RGB (3), the shorter side resized to ``data.image_size`` (antialiased) and centre-cropped
to a square. A 16-bit image (mode I;16, or I holding 0..65535) is scaled by its full 16-bit range, v * 255 / 65535
(not stretched per image: one brightness stays one brightness across images); one with values a 16-bit range cannot
hold, or of floating-point pixels, is a bad image.

Classes. A label is a class *name*, never silently an index. The classes are ``data.classes`` when given, else the
names the train part holds (a tree's class folders, a manifest's labels), sorted: as numbers when every name is an
integer (``9, 10, 100``), else as text. So folders ``5`` and ``7`` are two classes, and a mistyped label
``1000000`` is one more class, never a million empty ones. An integer label that is not a class name is a class
index only where ``data.classes`` is given and none of its names is an integer; names ``0..K-1`` are their own
indices anyway. Any other label (a test label of a class the train part lacks) is one line naming it. The dataset's
order, which every file of labels (``noise.given.file``, ``data.trusted_file``) follows: the train part first, then the
test part; in a tree by class folder, then file name, both sorted; in a manifest by row.

An image that cannot be read (missing, truncated, not an image, over PIL's decompression-bomb limit of pixels) is
one line naming its file, or with ``data.skip_bad_images: true`` it is left out and listed in the data report.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from labelnoise.datasets import Arrays, Dataset, Notes, Source, register_dataset
from labelnoise.io import one_line, parse_int, read_csv_rows, regular_file, terminal_progress
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
    row: int = 0  # a manifest's row (the header is row 1); 0 in a tree

    @property
    def where(self) -> str:
        """How a message names it: ``row 3 (img/a.png)`` in a manifest, ``cat/a.png`` in a tree."""
        return f"row {self.row} ({self.name})" if self.row else self.name


def list_images(folder: Path) -> list[Path]:
    """The image files under ``folder`` (any depth, by suffix), sorted."""
    return sorted(f for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)


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
            files = list_images(folder)
            if not files:
                raise ValueError(f"data.path: class folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            entries += [Entry(f, f.relative_to(root).as_posix(), folder.name, part or "train") for f in files]
    return entries


def _read_table(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """A manifest's header and its rows (row number, cells as text; a missing parquet cell is empty)."""
    if path.suffix.lower() != ".parquet":
        return read_csv_rows(path)
    import pandas as pd  # lazy: only parquet manifests need it

    frame = pd.read_parquet(path)
    cells = frame.astype(object).where(frame.notna(), "")  # NaN / None: an empty cell, not the class 'nan'
    return [str(c) for c in frame.columns], [(r, {str(k): str(v) for k, v in row.items()})
                                             for r, row in enumerate(cells.to_dict("records"), start=2)]


def list_manifest(path: Path) -> list[Entry]:
    """The rows of a manifest (path,label[,split]), train rows before test rows, each part in row order."""
    if not path.is_file():
        raise ValueError(f"data.path: {path} does not exist")
    try:
        header, rows = _read_table(path)
    except Exception as e:  # noqa: BLE001 - not a table of the kind its name says: one line
        raise ValueError(f"data.path: {path} cannot be read as a manifest ({one_line(e)[:200]})") from None
    if not {"path", "label"} <= set(header):
        raise ValueError(f"data.path: {path} needs a header row with the columns path,label[,split] "
                         f"(found: {', '.join(header)[:200] or 'nothing'})")
    if not rows:
        raise ValueError(f"data.path: {path} has a header row but no image rows (one row per image)")
    entries = []
    for r, row in rows:
        name, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
        split = (row.get("split") or "").strip() or "train"
        if not name or not label or split not in SPLITS:
            raise ValueError(f"data.path: {path} row {r}: needs a path, a label and a split train or test (or "
                             f"none), got {name!r}, {label!r}, {split!r}")
        entries.append(Entry(path.parent / name, name, label, split, r))  # an absolute name stays itself
    return sorted(entries, key=lambda e: SPLITS.index(e.split))  # stable: row order within a part


def check_files(entries: list[Entry], folder: Path, *, where: Path) -> None:
    """Every entry's file lies inside ``folder`` (links followed) and no file is listed twice (the same path, a
    link to it or a hard link); else one ValueError line naming the entries (``where``: the tree or manifest).
    Nothing is opened."""
    top = folder.resolve()
    seen: dict[object, Entry] = {}
    for e in entries:
        try:
            real = e.file.resolve()
        except (OSError, RuntimeError):  # a loop of links
            raise ValueError(f"data.path: {where}: {e.where} is a loop of links; fix or remove it") from None
        if top not in real.parents:
            raise ValueError(f"data.path: {where}: {e.where} is outside {top} (it resolves to {real}); keep every "
                             "image inside it (what DVC tracks): move or copy the image in")
        try:
            info = real.stat()
            key: object = (info.st_dev, info.st_ino)
        except OSError:  # missing: said when it is read
            key = real
        first = seen.setdefault(key, e)
        if first is not e:
            leak = ", in train and test (the test split would leak into training)" if first.split != e.split else ""
            raise ValueError(f"data.path: {where}: {first.where} and {e.where} are the same image{leak}; list each "
                             "image once")


def class_names(entries: list[Entry], given: list[str]) -> list[str]:
    """``given``, else the train part's labels sorted: as numbers when all are integers, else as text. Never a
    class no entry names (a label ``5`` is the class named 5, not index 5 of six)."""
    if given:
        return list(given)
    names = {e.label for e in entries if e.split == "train"}
    if all(parse_int(n) is not None for n in names):
        return sorted(names, key=lambda n: (parse_int(n), n))
    return sorted(names)


def label_indices(entries: list[Entry], classes: list[str], *, given: bool, where: Path) -> np.ndarray:
    """int64 (n,): each entry's class index. A label is a class name; an integer one that is not is a class index
    only when the classes were ``given`` and none of them is an integer. Anything else is one line."""
    lookup = {c: i for i, c in enumerate(classes)}
    by_index = given and not any(parse_int(c) is not None for c in classes)
    out = np.empty(len(entries), dtype=np.int64)
    for i, e in enumerate(entries):
        k = lookup.get(e.label, parse_int(e.label) if by_index else None)
        if k is None or not 0 <= k < len(classes):
            shown = ", ".join(classes[:12]) + (", ..." if len(classes) > 12 else "")
            raise ValueError(f"data.path: {where}: {e.where} has the unknown class {e.label!r} (classes: {shown}; "
                             "set data.classes to name them all)")
        out[i] = k
    return out


def load_image(file: Path, *, size: int, channels: int) -> np.ndarray:
    """uint8 (C, size, size): ``file`` in grayscale or RGB, shorter side resized to ``size`` (bilinear,
    antialiased when shrinking), centre-cropped; a 16-bit image scaled by 255 / 65535. Raises OSError / ValueError
    when it cannot be read (a decompression bomb: PIL's pixel limit, whose warning counts as the error too)."""
    from PIL import Image  # lazy: only folder datasets decode image files

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(file) as im:
                return _square(_eight_bit(im), size=size, channels=channels)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ValueError(one_line(e)) from None


def _square(im: Any, *, size: int, channels: int) -> np.ndarray:
    """uint8 (C, size, size) of a PIL image: grayscale or RGB, shorter side resized to ``size``, centre-cropped."""
    from PIL import Image

    im = im.convert("L" if channels == 1 else "RGB")
    w, h = im.size
    scale = size / min(w, h)
    im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BILINEAR)
    left, top = (im.width - size) // 2, (im.height - size) // 2
    a = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return a[None] if channels == 1 else a.transpose(2, 0, 1)  # (H, W) / (H, W, 3) -> (C, H, W)


def to_nchw(images: np.ndarray) -> np.ndarray:
    """uint8 (N, C, H, W) from a uint8 array (N, H, W), (N, H, W, C) or (N, C, H, W), C 1 or 3 (last if it can
    be); anything else is one ValueError line."""
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise ValueError(f"images: a uint8 array (N, H, W), (N, H, W, C) or (N, C, H, W), got {images.dtype} "
                         f"{images.shape}")
    if images.ndim == 3:
        return np.ascontiguousarray(images[:, None])
    if images.shape[3] in (1, 3):
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    if images.shape[1] in (1, 3):
        return np.ascontiguousarray(images)
    raise ValueError(f"images: 1 or 3 channels, first or last, got shape {images.shape}")


def convert_images(images: np.ndarray, *, size: int, channels: int) -> np.ndarray:
    """uint8 (N, ``channels``, ``size``, ``size``) from a uint8 array of any image size (as :func:`to_nchw` reads
    it), each image converted as :func:`load_image` converts a file; one already of that shape is kept as it is."""
    from PIL import Image

    x = to_nchw(images)
    if x.shape[1:] == (channels, size, size):
        return x
    out = np.zeros((len(x), channels, size, size), dtype=np.uint8)
    for i, a in enumerate(x):
        out[i] = _square(Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)), size=size,
                         channels=channels)
    return out


def load_images(files: Sequence[str | Path], *, size: int, channels: int) -> np.ndarray:
    """uint8 (N, C, size, size): each of ``files`` read by :func:`load_image`, in order; a file that cannot be read
    is one ValueError line naming it."""
    out = []
    for file in terminal_progress(files, f"reading {len(files)} images"):
        try:
            out.append(load_image(Path(file), size=size, channels=channels))
        except (OSError, ValueError) as e:
            raise ValueError(f"{file}: cannot be read as an image ({one_line(e)[:200]})") from None
    return np.stack(out) if out else np.zeros((0, channels, size, size), dtype=np.uint8)


def _eight_bit(im: Any) -> Any:
    """A 16-bit image (I;16*, or I with values 0..65535) as 8-bit grayscale, v * 255 / 65535 rounded; PIL's own
    conversion clips it to 0..255 (every pixel black or white). Other modes as they are; F or I outside 0..65535:
    ValueError."""
    from PIL import Image

    if im.mode == "F":
        raise ValueError("floating-point pixels (mode F) have no fixed range: save it with 8 or 16 bits per channel")
    if not im.mode.startswith("I"):
        return im
    a = np.asarray(im)  # (H, W) uint16 / int32
    if a.size and (a.min() < 0 or a.max() > 65535):
        raise ValueError(f"pixel values {a.min()}..{a.max()} outside 0..65535 (mode {im.mode}): save it with 8 or "
                         "16 bits per channel")
    return Image.fromarray(np.round(a * (255 / 65535)).astype(np.uint8))


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
        check_files(entries, path.parent if is_manifest else path, where=path)
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
        n_train = sum(e.split == "train" for e in entries)
        if n_train == 0:
            raise ValueError(f"data.path: {path} has no train images")
        classes = class_names(entries, list(data.classes))
        if len(classes) < 2:
            raise ValueError(f"data.path: {path} has 1 class ({classes[0]}); a classifier needs at least 2 (class "
                             "folders, or labels of train images)")
        labels = label_indices(entries, classes, given=bool(data.classes), where=path)
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
