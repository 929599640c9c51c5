"""The door of stage inject_noise: the chosen noise model applied to a dataset's train split, and what every model
reports of its noise (reports/noise.json, the figure, the MLflow metrics and tags)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from labelnoise.datasets import DataConfig, Prepared
from labelnoise.noise.base import (
    Classifier,
    NoiseInputs,
    NoisyLabels,
    block,
    check_labels,
    get_noise,
    realised_transition,
)


@dataclass(frozen=True)
class Figure:
    """What the noise figure shows: the realised transition matrix ``matrix`` (K, K), rows true and columns noisy
    labels; or, where how many labels are wrong is unknown, ``label_share`` (K,), each class's share of the labels
    training sees."""

    title: str
    matrix: np.ndarray | None = None
    label_share: np.ndarray | None = None


@dataclass(frozen=True)
class Injection:
    """The noisy labels and what is written and logged of them."""

    noisy: NoisyLabels
    report: dict[str, Any]  # reports/noise.json
    metrics: dict[str, float]  # of the MLflow run
    tags: dict[str, str]  # of the MLflow run
    figure: Figure


def inject(prepared: Prepared, cfg: Any, *, data: DataConfig, classifier: Classifier | None = None) -> Injection:
    """Corrupt the train labels of ``prepared`` with the noise section ``cfg`` (its ``kind``, that model's block,
    ``rate`` and ``seed``). Only the train split changes; the clean subset, validation and test keep theirs.

    ``data`` (the data params) says how another dataset's images are fetched, ``classifier`` trains the classifier
    of a model that scores examples (``labelnoise.reference.trainer``). Without true train labels (``data.truth:
    false``) the data's labels are the ones corrupted. Raises ValueError (one line naming the param) before anything
    is returned.
    """
    k = len(prepared.classes)
    labels = prepared.labels[prepared.train_idx]  # (n_train,) the data's labels: true ones unless data.truth is false
    truth = prepared.trusted(prepared.train_idx)
    # the noise seed is its own generator, independent of the training seed
    inputs = NoiseInputs(kind=cfg.kind, labels=check_labels(labels, k), num_classes=k,
                         rng=np.random.default_rng(cfg.seed), rate=cfg.rate, params=block(cfg, cfg.kind), truth=truth,
                         prepared=prepared, data=data, classifier=classifier)
    applied = get_noise(cfg.kind).apply(inputs)
    nl = applied.noisy

    true = labels[nl.positions(labels.size)]  # massive noise: the examples of the training set only
    matrix = realised_transition(true, nl.labels, k)  # (K, K); identity for open_set (labels kept)
    unknown = not applied.rate_known
    realised = float("nan") if unknown else float(nl.mask.mean()) if nl.mask.size else 0.0
    label_counts = np.bincount(nl.labels, minlength=k)  # (K,)
    report = {
        "kind": cfg.kind,
        "seed": cfg.seed,
        "requested_rate": applied.requested_rate,
        "rate_source": applied.rate_source,
        "realised_rate": realised,
        "n_train": int(true.size),
        "n_changed": nl.n_changed,
        "per_class_rate": None if unknown else {name: float(r) for name, r in
                                                zip(prepared.classes, _per_class_corrupted(true, nl.mask, k),
                                                    strict=True)},
        "class_map": None,  # asymmetric's entry, kept in its place: the layout reports/noise.json always had
        "classes": list(prepared.classes),
        "transition": None if unknown else matrix.tolist(),
        "true_labels": truth,  # false: data.truth is false; rates are against the data's labels, or unknown
        "label_counts": {name: int(c) for name, c in zip(prepared.classes, label_counts, strict=True)},
    }
    report.update(applied.report)  # the model's own entries (a key above keeps its place)

    what = applied.title or f"{cfg.kind} noise"
    if unknown:  # no truth to hold the labels against: what training will see, class by class
        figure = Figure(f"{what}: no true train labels (data.truth: false), so the noise rate is unknown",
                        label_share=label_counts / max(nl.labels.size, 1))
    else:
        requested = "" if math.isnan(applied.requested_rate) else f"requested {applied.requested_rate:.3f}, "
        figure = Figure(f"{what}: {requested}realised {realised:.3f}", matrix=matrix)
    metrics = {"n_changed": nl.n_changed, **({} if unknown else {"realised_rate": realised}), **applied.metrics}
    return Injection(nl, report, metrics, {"noise": cfg.kind, **applied.tags}, figure)


def _per_class_corrupted(true: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    """(K,) fraction of each true class that was corrupted (label changed, or image replaced); 0 if absent."""
    corrupted = np.bincount(true[mask], minlength=k).astype(float)
    n = np.bincount(true, minlength=k).astype(float)
    return np.divide(corrupted, n, out=np.zeros(k), where=n > 0)
