"""Stage `download`: fetch and verify the dataset of params `data`, cut it into train / clean / val / test.

The dataset's registered source (:mod:`labelnoise.datasets`, one file per dataset) delivers the arrays: for the
torchvision families the cache under ``data.root``, the mirror folders ``data.mirrors``, then the network
(torchvision's download, only when ``data.download``); bundled data (digits) comes from its library. Writes the
prepared arrays (PATHS.prepared) and a report of where they came from and how they were cut (PATHS.data_report).
"""

from __future__ import annotations

from typing import Any

from labelnoise import datasets, tracking
from labelnoise.config import Config
from labelnoise.io import save_json
from stages.common import PATHS, STAGE_PARAMS, setup


def run(cfg: Config) -> dict[str, Any]:
    """Fetch, split and save ``data.dataset``; returns the logged metrics (split sizes)."""
    setup(cfg)
    dc = cfg.data
    # Fetch and cut before the run opens: an unavailable dataset or a bad size is one line, no files.
    raw = datasets.load_dataset(dc)
    splits = datasets.make_splits(raw.labels, n_official_train=raw.n_official_train, clean_size=dc.clean_size,
                                  val_size=dc.val_size, test_size=dc.test_size, train_limit=dc.train_limit,
                                  seed=dc.split_seed)
    prepared = datasets.Prepared(images=raw.images, labels=raw.labels, train_idx=splits.train_idx,
                                 clean_idx=splits.clean_idx, val_idx=splits.val_idx, test_idx=splits.test_idx,
                                 classes=raw.classes, dataset=raw.dataset)
    report = datasets.data_report(prepared, source=raw.source, rejected=raw.rejected)
    sizes = prepared.sizes()
    metrics = {"n_train": sizes["train"], "n_clean": sizes["clean"], "n_val": sizes["val"], "n_test": sizes["test"]}

    with tracking.stage_run("download", cfg, sections=STAGE_PARAMS["download"]) as tracked:
        datasets.save_prepared(PATHS.prepared, prepared)
        save_json(PATHS.data_report, report)
        tracked.log_metrics(metrics)
        tracked.log_artifact(PATHS.data_report)
        tracked.set_tags({"data_source": raw.source})  # the dataset tag is set for every run
    return metrics
