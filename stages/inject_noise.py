"""Stage `inject_noise`: corrupt the train labels with the noise model of params `noise`.

Only the train split is corrupted; the clean subset, validation and test keep their true labels and
images. Writes the noisy labels (aligned with ``Prepared.train_idx``; for ``open_set`` also the
replacement images), a JSON report and a heatmap of the realised transition matrix.

``instance`` first trains the reference classifier (the ``cnn``, ``noise.reference_*``) on the trusted
clean subset only; the true train labels are read here, and only here, to score and corrupt them.
``open_set`` reads its source images (``noise.open_set_source``) like stage download reads the dataset.

Without true train labels (``data.truth: false``) the data's labels are the ones corrupted (``none`` keeps them,
``given`` replaces them with the file's); how many given labels are wrong is then unknown: the report says so
(``realised_rate`` null) and the figure shows the class frequencies of the labels training will see instead of a
transition matrix.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from labelnoise import noise, reference
from labelnoise.config import Config
from labelnoise.datasets import Prepared, class_map_for, load_prepared, open_set_pool, resolve_open_set_source
from labelnoise.io import save_json
from labelnoise.plots import plot_matrix, plot_per_class
from labelnoise.runtime import repo_path, resolve_device
from stages.common import PATHS, require, setup, stage_run


def run(cfg: Config) -> dict[str, Any]:
    """Corrupt ``labels[train_idx]``; write PATHS.noisy, PATHS.noise_report, PATHS.noise_plot."""
    require(PATHS.prepared)
    setup(cfg)
    nc = cfg.noise
    prepared = load_prepared(PATHS.prepared)
    k = len(prepared.classes)
    true = prepared.labels[prepared.train_idx]  # (n_train,) the data's labels: true ones unless data.truth is false
    truth = prepared.trusted(prepared.train_idx)

    # Corrupt before the run opens: a bad class map or matrix, or missing open-set images, fail with one
    # line and no run, no files. The noise seed is its own generator, independent of the training seed.
    rng = np.random.default_rng(nc.seed)
    class_map = class_map_for(prepared.dataset, nc.class_map) if nc.kind == "asymmetric" else None
    transition = np.asarray(nc.transition, dtype=float) if nc.kind == "transition" else None
    extra: dict[str, Any] = {}
    other = nc.kind == "open_set" or (nc.kind == "massive" and nc.massive_source == "other")
    shape = tuple(prepared.images.shape[1:])  # (C, H, W)
    source = resolve_open_set_source(prepared.dataset, nc.open_set_source) if other else None
    pool = open_set_pool(source, cfg.data, shape) if other and source != "white_noise" else None
    if nc.kind == "open_set":
        nl = noise.open_set(true, rate=nc.rate, num_classes=k, rng=rng, image_shape=shape, source_images=pool)
        extra = {"open_set_source": source, "open_set_source_param": nc.open_set_source,
                 "source_pool_size": None if pool is None else len(pool),
                 "source_with_replacement": pool is not None and nl.n_changed > len(pool)}
    elif nc.kind == "massive":
        nl = noise.massive(true, alpha=nc.alpha, n_clean=nc.n_clean, num_classes=k, rng=rng, other_source=other,
                           image_shape=shape, source_images=pool)
        keep, added = noise.massive_sizes(true.size, alpha=nc.alpha, n_clean=nc.n_clean)
        extra = {"alpha": nc.alpha, "n_clean": keep, "n_noisy_added": added,
                 "n_train_split": int(true.size), "massive_source": source or "train"}
    elif nc.kind == "given":
        path = repo_path(nc.file)
        file_labels = noise.read_label_file(path, key=nc.key, classes=list(prepared.classes),
                                            paths=None if prepared.paths is None else prepared.paths.tolist())
        sizes = sorted({len(prepared.images), _train_part_size(prepared)})
        if file_labels.size not in sizes:
            raise ValueError(f"noise.file: {path} holds {file_labels.size} labels; {prepared.dataset} has "
                             f"{' or '.join(map(str, sizes))} (its train part, or all its images): give one label "
                             "per image, in the dataset's own order")
        nl = noise.given(file_labels, prepared.train_idx, true=true if truth else None, num_classes=k)
        extra = {"file": str(path), "key": nc.key or None, "file_sha256": _sha256(path),
                 "n_file_labels": int(file_labels.size)}
    elif nc.kind == "instance":
        probs, extra = _reference(cfg, prepared, true if truth else true[:0])  # train_acc: against truth
        nl = noise.corrupt(true, kind="instance", rate=nc.rate, num_classes=k, rng=rng, pred_probs=probs)
        _, confusable = noise.instance_scores(true, probs)
        flipped = nl.labels[nl.mask]
        extra["confusable_fraction"] = float((flipped == confusable[nl.mask]).mean()) if flipped.size else None
        extra["top_target_fraction"] = _top_target_fraction(true[nl.mask], flipped, k)
    else:
        nl = noise.corrupt(true, kind=nc.kind, rate=nc.rate, num_classes=k, rng=rng,
                           class_map=class_map, transition=transition, delta=nc.delta)
        if nc.kind == "structured":
            extra["delta"] = nc.delta

    true = true[nl.positions(true.size)]  # massive noise: the examples of the training set only
    matrix = noise.realised_transition(true, nl.labels, k)  # (K, K); identity for open_set (labels kept)
    per_class = _per_class_corrupted(true, nl.mask, k)  # (K,)
    realised = float(nl.mask.mean()) if nl.mask.size else 0.0
    unknown = not truth and nc.kind in ("none", "given")  # how many labels are wrong is not known
    if unknown:
        realised = float("nan")
    report = {
        "kind": nc.kind,
        "seed": nc.seed,
        "requested_rate": _requested_rate(cfg, true, k),
        "rate_source": {"transition": "noise.transition", "given": "noise.file"}.get(nc.kind, "noise.rate"),
        "realised_rate": realised,
        "n_train": int(true.size),
        "n_changed": nl.n_changed,
        "per_class_rate": None if unknown else {name: float(r) for name, r in
                                                zip(prepared.classes, per_class, strict=True)},
        "class_map": {str(a): b for a, b in sorted(class_map.items())} if class_map is not None else None,
        "classes": list(prepared.classes),
        "transition": None if unknown else matrix.tolist(),
        "true_labels": truth,  # false: data.truth is false; rates are against the data's labels, or unknown
        "label_counts": {name: int(c) for name, c in
                         zip(prepared.classes, np.bincount(nl.labels, minlength=k), strict=True)},
        **extra,
    }

    with stage_run("inject_noise", cfg) as tracked:
        noise.save_noisy(PATHS.noisy, nl)
        save_json(PATHS.noise_report, report)
        scope = " in mapped classes" if nc.kind == "asymmetric" else ""
        what = (f"open_set noise ({report['open_set_source']} images, labels kept)" if nc.kind == "open_set"
                else f"{nc.kind} noise")
        if unknown:  # no truth to hold the labels against: what training will see, class by class
            plot_per_class({"labels trained on": np.bincount(nl.labels, minlength=k) / max(nl.labels.size, 1)},
                           PATHS.noise_plot, labels=prepared.classes, ylabel="fraction of train labels",
                           title=f"{what}{f' ({Path(nc.file).name})' if nc.file and nc.kind == 'given' else ''}: "
                                 "no true train labels (data.truth: false), so the noise rate is unknown")
        else:
            plot_matrix(matrix, PATHS.noise_plot, labels=prepared.classes,
                        title=f"{what}: requested {report['requested_rate']:.3f}{scope}, realised {realised:.3f}"
                        if nc.kind != "given" else f"{what} ({Path(nc.file).name}): realised {realised:.3f}",
                        xlabel="noisy label", ylabel="true label")

        metrics = {"n_changed": nl.n_changed, **({} if unknown else {"realised_rate": realised})}
        if nc.kind == "instance" and report["reference"]["train_acc"] is not None:
            metrics["reference_train_acc"] = report["reference"]["train_acc"]
        tracked.log_metrics(metrics)
        tracked.log_artifact(PATHS.noise_report)
        tracked.log_artifact(PATHS.noise_plot)
        tracked.set_tags({"noise": nc.kind, **({"open_set_source": extra["open_set_source"]}
                                                 if nc.kind == "open_set" else {})})
    return metrics


def _requested_rate(cfg: Config, true: np.ndarray, k: int) -> float:
    """The overall rate the params ask for: ``noise.rate``, or for a matrix the class-weighted 1 - T[c, c].

    For ``asymmetric`` this is the rate within the mapped source classes, not overall.
    """
    if cfg.noise.kind == "none":
        return 0.0
    if cfg.noise.kind == "given":  # the file says how much is wrong: nothing is requested
        return float("nan")
    if cfg.noise.kind == "massive":  # added examples over all; a random label is right 1 time in K
        a = cfg.noise.alpha
        return a / (1.0 + a) * (k - 1) / k
    if cfg.noise.kind == "transition":
        diag = np.diag(np.asarray(cfg.noise.transition, dtype=float))
        prior = np.bincount(true, minlength=k) / max(true.size, 1)  # (K,)
        return float(prior @ (1.0 - diag))
    return float(cfg.noise.rate)


def _reference(cfg: Config, prepared: Prepared, true: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Train the reference classifier on the clean subset; its (n_train, K) probabilities and report entries."""
    nc = cfg.noise
    t0 = time.perf_counter()
    probs = reference.reference_probabilities(
        prepared.images[prepared.clean_idx], prepared.labels[prepared.clean_idx],
        prepared.images[prepared.train_idx], classes=list(prepared.classes), dataset=prepared.dataset,
        recipe=reference.recipe_for(cfg.train, nc), seed=nc.reference_seed, device=resolve_device(cfg.base.device),
        log=lambda line: print(line, file=sys.stderr, flush=True))
    return probs, {"reference": {
        "model": nc.reference_model, "trained_on": "clean subset",
        "n_fit": int(prepared.clean_idx.size),
        "epochs": nc.reference_epochs, "lr": nc.reference_lr, "batch_size": nc.reference_batch_size,
        "seed": nc.reference_seed,
        "train_acc": float((probs.argmax(axis=1) == true).mean()) if true.size else None,  # vs true labels, if any
        "time_s": round(time.perf_counter() - t0, 2),
    }}


def _train_part_size(prepared: Prepared) -> int:
    """How many images precede the dataset's official test part (all of them when it has none): the length of a
    file of labels for its train part."""
    n, test = len(prepared.images), prepared.test_idx
    tail = test.size and test.min() == n - test.size and test.max() == n - 1
    return n - test.size if tail else n


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _top_target_fraction(true: np.ndarray, noisy: np.ndarray, k: int) -> float | None:
    """Of the changed labels, the fraction that went to their class's most frequent target (1.0 = pair-like)."""
    if not true.size:
        return None
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (true, noisy), 1)
    return float(counts.max(axis=1).sum() / true.size)


def _per_class_corrupted(true: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    """(K,) fraction of each true class that was corrupted (label changed, or image replaced); 0 if absent."""
    corrupted = np.bincount(true[mask], minlength=k).astype(float)
    n = np.bincount(true, minlength=k).astype(float)
    return np.divide(corrupted, n, out=np.zeros(k), where=n > 0)
