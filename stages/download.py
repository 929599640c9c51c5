"""Stage `download`: fetch and verify the dataset of params `data`, cut it into train / clean / val / test.

The dataset's registered source (:mod:`labelnoise.datasets`, one file per dataset) delivers the arrays: for the
torchvision families the cache under ``data.root``, the mirror folders ``data.mirrors``, then the network
(torchvision's download, only when ``data.download``); bundled data (digits) comes from its library; your own
images (``folder``) from ``data.path``. Writes the prepared arrays (PATHS.prepared) and a report of where they came
from and how they were cut (PATHS.data_report).

Which labels are true ones: all of them, unless ``data.truth: false`` (your labels are the noisy ones you have):
then only a test split the data brings and the trusted subset of ``data.trusted_file`` count as true, and the stages
after leave out what would need the others.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from labelnoise import datasets
from labelnoise.config import Config
from labelnoise.io import read_label_csv, regular_file, repo_path, save_json
from stages.common import PATHS, setup, stage_run


def run(cfg: Config) -> dict[str, Any]:
    """Fetch, split and save ``data.dataset``; returns the logged metrics (split sizes)."""
    setup(cfg)
    dc = cfg.data
    # Fetch and cut before the run opens: an unavailable dataset or a bad size is one line, no files.
    raw = datasets.load_dataset(dataclasses.replace(dc, path=str(repo_path(dc.path)) if dc.path else ""))
    labels = raw.labels.copy()
    clean_idx = None
    if dc.trusted_file:  # the trusted subset: its labels replace the data's
        clean_idx, clean_labels = read_trusted_file(dc.trusted_file, classes=raw.classes, paths=raw.paths,
                                                  n=len(labels))
        labels[clean_idx] = clean_labels
    splits = datasets.make_splits(labels, n_official_train=raw.n_official_train, trusted_size=dc.trusted_size,
                                  val_size=dc.val_size, test_size=dc.test_size, train_limit=dc.train_limit,
                                  seed=dc.split_seed, clean_idx=clean_idx)
    known = None
    if not dc.truth:  # only the data's own test split and the given trusted subset hold true labels
        known = np.zeros(len(labels), dtype=bool)
        known[raw.n_official_train:] = True
        known[splits.clean_idx] = True
    # without true labels the data's own labels of the trusted images are noisy ones: beside the checked labels
    # they show the noise itself
    given = raw.labels[splits.clean_idx] if clean_idx is not None and known is not None else None
    prepared = datasets.Prepared(images=raw.images, labels=labels, train_idx=splits.train_idx,
                                 clean_idx=splits.clean_idx, val_idx=splits.val_idx, test_idx=splits.test_idx,
                                 classes=raw.classes, dataset=raw.dataset, known=known,
                                 paths=None if raw.paths is None else np.array(raw.paths, dtype=np.str_),
                                 clean_given=given)
    report = datasets.data_report(prepared, source=raw.source, rejected=raw.rejected)
    sizes = prepared.sizes()
    metrics = {"n_train": sizes["train"], "n_clean": sizes["clean"], "n_val": sizes["val"], "n_test": sizes["test"]}

    with stage_run("download", cfg) as tracked:
        datasets.save_prepared(PATHS.prepared, prepared)
        save_json(PATHS.data_report, report)
        tracked.log_metrics(metrics)
        tracked.log_artifact(PATHS.data_report)
        tracked.set_tags({"data_source": raw.source})  # the dataset tag is set for every run
    return metrics


def read_trusted_file(name: str, *, classes: list[str], paths: list[str] | None,
                    n: int) -> tuple[np.ndarray, np.ndarray]:
    """``data.trusted_file``: a CSV of trusted labels, ``index,label`` (an index in the dataset's order) or, for a
    folder dataset, ``path,label``; a label is a class name or index. Returns (indices, labels), int64 (m,) each;
    a file that is missing, empty, repeats an image, names an unknown one or a label out of range is one line."""
    path = regular_file(repo_path(name), what="data.trusted_file")
    key, idx, labels = read_label_csv(path, param="data.trusted_file", classes=classes, paths=paths)
    if idx.max() >= n:
        raise ValueError(f"data.trusted_file: {path}: index {idx.max()} is not one of the dataset's 0..{n - 1}")
    values, counts = np.unique(idx, return_counts=True)
    if (counts > 1).any():
        twice, times = values[counts > 1][0], counts[counts > 1][0]
        shown = repr(paths[twice]) if key == "path" and paths is not None else f"index {twice}"
        raise ValueError(f"data.trusted_file: {path} lists the image {shown} {times} times: list each once")
    out_of_range = labels[(labels < 0) | (labels >= len(classes))]
    if out_of_range.size:
        raise ValueError(f"data.trusted_file: {path}: label {out_of_range[0]} is outside [0, {len(classes)})")
    return idx, labels
