"""Stage `inject_noise`: corrupt the train labels with the noise model of params `noise` (`noise.kind`, its block
`noise.<kind>`, `noise.rate`, `noise.seed`; the models: labelnoise/noise/).

Only the train split is corrupted; the clean subset, validation and test keep their true labels and images. Writes
the noisy labels (aligned with ``Prepared.train_idx``; for ``open_set`` also the replacement images), a JSON report
and a figure: the realised transition matrix, or, where how many labels are wrong is unknown (no true train labels,
``data.truth: false``, and the data's or a file's labels), the class frequencies of the labels training will see.
The true train labels are read here, and only here (a model that trains a reference classifier fits it on the
trusted clean subset).
"""

from __future__ import annotations

import sys
from typing import Any

from labelnoise import noise, reference
from labelnoise.config import Config
from labelnoise.datasets import load_prepared
from labelnoise.io import save_json
from labelnoise.plots import plot_matrix, plot_per_class
from stages.common import PATHS, require, setup, stage_run


def run(cfg: Config) -> dict[str, Any]:
    """Corrupt ``labels[train_idx]``; write PATHS.noisy, PATHS.noise_report, PATHS.noise_plot."""
    require(PATHS.prepared)
    setup(cfg)
    prepared = load_prepared(PATHS.prepared)
    # Corrupt before the run opens: a bad class map or matrix, or missing source images, fail with one line and no
    # run, no files.
    classifier = reference.trainer(cfg.train, device=cfg.base.device,
                                   log=lambda line: print(line, file=sys.stderr, flush=True))
    injected = noise.inject(prepared, cfg.noise, data=cfg.data, classifier=classifier)

    with stage_run("inject_noise", cfg) as tracked:
        noise.save_noisy(PATHS.noisy, injected.noisy)
        save_json(PATHS.noise_report, injected.report)
        figure = injected.figure
        if figure.matrix is not None:
            plot_matrix(figure.matrix, PATHS.noise_plot, labels=prepared.classes, title=figure.title,
                        xlabel="noisy label", ylabel="true label")
        else:
            plot_per_class({"labels trained on": figure.label_share}, PATHS.noise_plot, labels=prepared.classes,
                           ylabel="fraction of train labels", title=figure.title)
        tracked.log_metrics(injected.metrics)
        tracked.log_artifact(PATHS.noise_report)
        tracked.log_artifact(PATHS.noise_plot)
        tracked.set_tags(injected.tags)
    return injected.metrics
