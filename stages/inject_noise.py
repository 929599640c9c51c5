"""Stage `inject_noise`: corrupt the train labels with the noise model of params `noise`.

Only the train split is corrupted; the clean subset, validation and test keep their true labels.
Writes the noisy labels (aligned with ``Prepared.train_idx``), a JSON report and a heatmap of the
realised transition matrix.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from labelnoise import noise, tracking
from labelnoise.config import Config
from labelnoise.datasets import load_prepared
from labelnoise.io import save_json
from labelnoise.plots import plot_matrix
from stages.common import PATHS, require, setup


def run(cfg: Config) -> dict[str, Any]:
    """Corrupt ``labels[train_idx]``; write PATHS.noisy, PATHS.noise_report, PATHS.noise_plot."""
    require(PATHS.prepared)
    setup(cfg)
    nc = cfg.noise
    prepared = load_prepared(PATHS.prepared)
    k = len(prepared.classes)
    true = prepared.labels[prepared.train_idx]  # (n_train,)

    # Corrupt before the run opens: a bad class map or matrix fails with one line and no run, no files.
    class_map = noise.class_map_for(prepared.dataset, nc.class_map) if nc.kind == "asymmetric" else None
    transition = np.asarray(nc.transition, dtype=float) if nc.kind == "transition" else None
    # The noise seed is its own generator, independent of the training seed.
    nl = noise.corrupt(true, kind=nc.kind, rate=nc.rate, num_classes=k, rng=np.random.default_rng(nc.seed),
                       class_map=class_map, transition=transition)

    matrix = noise.realised_transition(true, nl.labels, k)  # (K, K)
    per_class = noise.per_class_rate(true, nl.labels, k)  # (K,)
    realised = float(nl.mask.mean()) if nl.mask.size else 0.0
    report = {
        "kind": nc.kind,
        "seed": nc.seed,
        "requested_rate": _requested_rate(cfg, true, k),
        "rate_source": "noise.transition" if nc.kind == "transition" else "noise.rate",
        "realised_rate": realised,
        "n_train": int(true.size),
        "n_changed": nl.n_changed,
        "per_class_rate": {name: float(r) for name, r in zip(prepared.classes, per_class, strict=True)},
        "class_map": {str(a): b for a, b in sorted(class_map.items())} if class_map is not None else None,
        "classes": list(prepared.classes),
        "transition": matrix.tolist(),
    }

    with tracking.stage_run("inject_noise", cfg, sections=("noise",)) as tracked:
        noise.save_noisy(PATHS.noisy, nl)
        save_json(PATHS.noise_report, report)
        scope = " in mapped classes" if nc.kind == "asymmetric" else ""
        plot_matrix(matrix, PATHS.noise_plot, labels=prepared.classes,
                    title=f"{nc.kind} noise: requested {report['requested_rate']:.3f}{scope}, realised {realised:.3f}",
                    xlabel="noisy label", ylabel="true label")

        metrics = {"realised_rate": realised, "n_changed": nl.n_changed}
        tracked.log_metrics(metrics)
        tracked.log_artifact(PATHS.noise_report)
        tracked.log_artifact(PATHS.noise_plot)
        tracked.set_tags({"noise": nc.kind})
    return metrics


def _requested_rate(cfg: Config, true: np.ndarray, k: int) -> float:
    """The overall rate the params ask for: ``noise.rate``, or for a matrix the class-weighted 1 - T[c, c].

    For ``asymmetric`` this is the rate within the mapped source classes, not overall.
    """
    if cfg.noise.kind == "none":
        return 0.0
    if cfg.noise.kind == "transition":
        diag = np.diag(np.asarray(cfg.noise.transition, dtype=float))
        prior = np.bincount(true, minlength=k) / max(true.size, 1)  # (K,)
        return float(prior @ (1.0 - diag))
    return float(cfg.noise.rate)
