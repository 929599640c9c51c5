"""Pretraining the MentorNet (stage pretrain_mentor; Jiang et al. 2018, §3.2 and the official
``training_mentornet`` code).

- ``mentor.kind: pd`` (pre-defined): fit the mentor to the curriculum ``mentor.curriculum`` on ``mentor.grid_size``
  points of the official (loss, loss difference, progress) grid (:func:`pretrain_pd`);
- ``mentor.kind: dd`` (data-driven): learn it from the trusted clean subset only, on a copy of its labels corrupted
  with a known noise (:func:`dd_copy`, :func:`pretrain_dd`).

Seeds: ``mentor.seed`` (mentor and student initialisation, batch order, grid sampling, the split) and
``mentor.dd_noise_seed`` (the corrupted copy) are separate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labelnoise import mentornet as mn
from labelnoise import noise
from labelnoise.datasets import Prepared, class_map_for
from labelnoise.engine import log_to_stderr
from labelnoise.mentornet import MentorConfig
from labelnoise.metrics import detection_quality
from labelnoise.models import create_model, network_kwargs
from labelnoise.plots import plot_weight_maps
from labelnoise.schema import ConfigError

PD_PLOT_PROGRESS = (10, 50, 95)  # burn-in, self-paced and linear phases of official_pd
MIN_DD_EXAMPLES = 10  # corrupted and correct labels each, at least, in the dd mentor's data
DD_PLOT_PROGRESS = (10, 50, 90)
PD_PLOT_NAME = "pd_weights.png"
DD_PLOT_NAME = "dd_weights.png"


def pretrain(m: MentorConfig, prepared: Prepared, *, recipe: Any, generator: torch.Generator, device: torch.device,
             transition: np.ndarray | None = None, given: np.ndarray | None = None,
             log: Callable[[str], None] = log_to_stderr) -> Pretrained:
    """The mentor of params ``m`` (settled: no ``auto`` but ``dd_noise_kind``, whose channel is ``transition``)
    for the data ``prepared`` (DD: its trusted subset, with ``given``, the noisy source's own labels of it where
    known; PD: its class count); ``recipe``: the DD recording student's training recipe. Every draw comes from
    ``generator`` and the global torch RNG, both seeded with ``m.seed`` (``runtime.seed_everything``); ``log`` gets
    the one line that says a DD mentor was learnt again (mentor.dd_max_rise)."""
    check(m, prepared)
    if m.kind == "pd":
        return pretrain_pd(m, num_classes=len(prepared.classes), generator=generator, device=device)
    return pretrain_dd(m, prepared, recipe=recipe, generator=generator, device=device, transition=transition,
                       given=given, log=log)


def check(m: MentorConfig, prepared: Prepared) -> None:
    """Everything about the mentor params ``m`` that can be known before any work (ConfigError names the key)."""
    if m.kind == "pd":
        total = mn.GRID_LOSS.numel() * mn.GRID_DIFF.numel() * mn.NUM_PROGRESS
        if m.grid_size > total:
            raise ConfigError(f"mentor.grid_size: must be <= {total} (the official grid's size), got {m.grid_size}")
        n_held = round(m.holdout * m.grid_size)
        if n_held == 0 or n_held == m.grid_size:
            raise ConfigError(f"mentor.holdout: {m.holdout} of {m.grid_size} grid points leaves no fit or no held-out "
                              "points")
        return
    n = len(prepared.clean_idx)
    if n == 0:
        raise ConfigError("mentor.kind: dd needs a trusted clean subset, and there is none (data.trusted_size is 0 "
                          "and no data.trusted_file); give one, or use the predefined curriculum: mentor.kind: pd")
    n_held = round(m.holdout * n)
    if n_held == 0 or n_held == n:
        raise ConfigError(f"mentor.holdout: {m.holdout} of {n} clean examples leaves no fit or no held-out examples")
    if m.dd_noise_rate == 0 and m.dd_noise_kind != "auto":
        raise ConfigError("mentor.dd_noise_rate: must be > 0 (the dd mentor learns to tell corrupted labels apart)")
    if m.dd_noise_kind == "asymmetric":
        try:
            class_map_for(prepared.dataset, "auto", key="mentor.dd_noise_kind")
        except ValueError as e:
            raise ConfigError(f"mentor.dd_noise_kind: asymmetric uses the dataset's shipped class map ({e})") from None


@dataclasses.dataclass
class Pretrained:
    """A pretrained mentor, its report (settings, fit and detection statistics; ``per_epoch`` rows for DD) and
    ``plot(folder)``, which writes the kind's figure there and returns its path."""

    mentor: mn.MentorNet
    num_classes: int
    report: dict[str, Any]
    plot: Callable[[Path], Path]
    dd_transition: np.ndarray | None = None  # DD on the estimated channel: the (K, K) T̂ its copy was corrupted with
    config: MentorConfig | None = None  # the params it was learnt with, where a DD fallback changed the copy's noise


# ----------------------------------------------------------------------------- pd


def pretrain_pd(m: MentorConfig, *, num_classes: int, generator: torch.Generator, device: torch.device) -> Pretrained:
    """Fit the mentor to the curriculum ``m.curriculum`` on ``m.grid_size`` points of the official (loss, loss
    difference, progress) grid; report the mean absolute error |v − v*| on the fitted and the held-out points."""
    grid = mn.pd_grid(m, num_classes=num_classes, generator=generator)
    held = mn.split_examples(len(grid), holdout=m.holdout, generator=generator)  # (N,) rows held out
    fit_rows, held_rows = grid.select(~held), grid.select(held)
    # Official train.py: sigmoid cross-entropy when every target is exactly 0 or 1, else MSE on the sigmoid.
    binary = bool(((grid.target == 0) | (grid.target == 1)).all())
    loss_kind = "bce" if binary else "mse"
    mentor = mn.MentorNet.from_config(m, num_classes=num_classes).to(device)
    fit = mn.fit_mentor(mentor, fit_rows, cfg=m, generator=generator, loss=loss_kind)
    report = {
        "kind": "pd",
        "curriculum": m.curriculum,
        "fit_loss": loss_kind,
        "mae_train": mn.mean_abs_error(mentor, fit_rows),
        "mae_holdout": mn.mean_abs_error(mentor, held_rows),
        "n_rows": len(grid),
        "n_fit": len(fit_rows),
        "n_holdout": len(held_rows),
        "fit_loss_first": fit["loss_first"],
        "fit_loss_last": fit["loss_last"],
    }
    target = mn.curriculum(m.curriculum, m)

    def plot(folder: Path) -> Path:
        loss = torch.linspace(0.0, 10.0, 101)
        diff = torch.linspace(-5.0, 5.0, 101)
        dd, ll = torch.meshgrid(diff, loss, indexing="ij")  # (D, L)
        learned, wanted = [], []
        for p in PD_PLOT_PROGRESS:
            learned.append(mn.weight_map(mentor, loss=loss, loss_diff=diff, progress=p, label=0))
            wanted.append(target(ll, dd, torch.full_like(dd, p, dtype=torch.int64)).numpy())
        return plot_weight_maps(
            {"learned v": learned, "target v*": wanted}, folder / PD_PLOT_NAME, loss=loss.numpy(), diff=diff.numpy(),
            columns=[f"progress {p}%" for p in PD_PLOT_PROGRESS],
            title=f"MentorNet PD ({m.curriculum}): held-out MAE {report['mae_holdout']:.4f}",
        )

    return Pretrained(mentor=mentor, num_classes=num_classes, report=report, plot=plot)


# ----------------------------------------------------------------------------- dd


def dd_copy(y_true: np.ndarray, m: MentorConfig, *, num_classes: int, dataset: str,
            transition: np.ndarray | None = None, given: np.ndarray | None = None) -> noise.NoisyLabels:
    """The DD mentor's training signal: a copy of the trusted labels ``y_true`` (N,) corrupted with the mentor's
    noise (``mentor.dd_noise_*``, seeded by ``dd_noise_seed``), so which labels are wrong is known. With
    ``dd_noise_kind: auto`` the estimated transition matrix ``transition`` (K, K) (exact counts per class), so the
    copy has the noise's structure and level as estimated from the train labels — or, where the noise source
    labelled the trusted examples too (``given`` (N,)), those labels themselves: the real noise, on the images it
    falls on (human annotators err on the hard ones; a matrix cannot say which). The pretraining and SPADE's DD
    refits both learn on it."""
    if m.dd_noise_kind == "auto" and given is not None:
        given = np.asarray(given, dtype=np.int64)
        return noise.NoisyLabels(given.copy(), given != np.asarray(y_true, dtype=np.int64))
    if m.dd_noise_kind == "auto" and transition is None:
        raise ValueError("mentor.dd_noise_kind: auto needs the noise estimate (stage estimate_noise)")
    kind = "transition" if m.dd_noise_kind == "auto" else m.dd_noise_kind
    class_map = class_map_for(dataset, "auto", key="mentor.dd_noise_kind") if m.dd_noise_kind == "asymmetric" else None
    return noise.corrupt(np.asarray(y_true), kind=kind, rate=m.dd_noise_rate, num_classes=num_classes,
                         transition=transition if m.dd_noise_kind == "auto" else None,
                         rng=np.random.default_rng(m.dd_noise_seed), class_map=class_map)


def pretrain_dd(m: MentorConfig, prepared: Prepared, *, recipe: Any, generator: torch.Generator,
                device: torch.device, transition: np.ndarray | None = None,
                given: np.ndarray | None = None, log: Callable[[str], None] = log_to_stderr) -> Pretrained:
    """Learn the mentor from the trusted clean subset only (never the train pool's labels): a fresh student (the
    ``recipe``'s network and optimiser, ``m.dd_epochs`` epochs, plain cross-entropy) trains on :func:`dd_copy` and
    every example's features are recorded after each epoch, with target v* = 1[label correct]; examples (all their
    epochs together) are split into fit / held-out (``m.holdout``) and the mentor is fitted with sigmoid
    cross-entropy; the report gives the held-out AUROC of v as a detector of the corrupted labels, beside the raw
    loss's."""
    k = len(prepared.classes)
    x = torch.from_numpy(np.ascontiguousarray(prepared.images[prepared.clean_idx]))  # (N, C, H, W) uint8
    y_true = prepared.labels[prepared.clean_idx]  # (N,)
    estimated = m.dd_noise_kind == "auto"  # the copy has the estimated channel's noise, or the given labels' own
    own_labels = estimated and given is not None  # the noise source's own labels of the trusted images
    corrupted = dd_copy(y_true, m, num_classes=k, dataset=prepared.dataset, transition=transition, given=given)
    y_noisy = torch.from_numpy(corrupted.labels)
    correct = torch.from_numpy(~corrupted.mask)  # (N,) bool: v* = 1[label correct]
    wrong = int(corrupted.mask.sum())
    if wrong < MIN_DD_EXAMPLES or corrupted.mask.size - wrong < MIN_DD_EXAMPLES:
        raise ValueError(f"the dd mentor's copy of the {corrupted.mask.size} trusted examples has {wrong} corrupted "
                         f"and {corrupted.mask.size - wrong} correct labels: it needs at least {MIN_DD_EXAMPLES} of "
                         "each to learn to tell them apart; raise data.trusted_size (or mentor.dd_noise_rate), or use "
                         "mentor.kind: pd")

    # ---- a fresh student on the corrupted copy, features recorded after every epoch
    student = create_model(recipe.model, **network_kwargs(x, k))
    student_cfg = dataclasses.replace(recipe, epochs=m.dd_epochs)
    percentile = mn.MovingPercentile.from_config(m, num_classes=k)
    record = mn.record_training_features(student, x, y_noisy, correct, recipe=student_cfg, percentile=percentile,
                                         dataset=prepared.dataset, device=device, generator=generator)

    # ---- split examples (all their epochs together) and fit the mentor with sigmoid cross-entropy
    held_examples = mn.split_examples(x.shape[0], holdout=m.holdout, generator=generator)  # (N,)
    held = held_examples[record.example]  # (N · E,) rows of held-out examples
    fit_rows, held_rows = record.features.select(~held), record.features.select(held)
    mentor = mn.MentorNet.from_config(m, num_classes=k).to(device)
    fit = mn.fit_mentor(mentor, fit_rows, cfg=m, generator=generator, loss="bce")

    # ---- held-out detection quality: the mentor's weight vs the raw loss (low = corrupted)
    v_held = mn.predict(mentor, held_rows).numpy()
    bad = held_rows.target.numpy() < 0.5
    loss_held = held_rows.loss.numpy()
    epochs_held = record.epoch[held].numpy()

    def auroc(scores: np.ndarray, mask: np.ndarray) -> float:
        return detection_quality(scores, mask, threshold=0.5)["auroc"]

    per_epoch = []
    for row in record.history:
        e = epochs_held == row["epoch"]
        per_epoch.append({"epoch": row["epoch"], "dd_train_loss": row["train_loss"],
                          "dd_train_acc_noisy": row["train_acc_noisy"], "auroc_epoch": auroc(v_held[e], bad[e]),
                          "auroc_loss_epoch": auroc(-loss_held[e], bad[e])})
    report = {
        "kind": "dd",
        "dd_noise_kind": "given" if own_labels else "transition" if estimated else m.dd_noise_kind,
        "dd_noise_rate": None if estimated else m.dd_noise_rate,
        "dd_noise_seed": m.dd_noise_seed,
        "dd_realised_rate": float(corrupted.mask.mean()),
        "dd_epochs": m.dd_epochs,
        "student_model": recipe.model,
        "auroc": auroc(v_held, bad),
        "auroc_loss": auroc(-loss_held, bad),
        "auroc_last_epoch": per_epoch[-1]["auroc_epoch"],
        "auroc_loss_last_epoch": per_epoch[-1]["auroc_loss_epoch"],
        "fit_auroc": mn.detection_auroc(mentor, fit_rows),
        # the largest rise of v with the loss, from 0 to the recorded losses' 99th percentile around their median
        # (0: a curriculum; a rise means low losses get less weight than a band above them: see weight_rise)
        "weight_rise": mn.weight_rise(mentor, loss=torch.linspace(0.0, float(record.features.loss.quantile(0.99)), 64),
                                      l_pt=float(record.features.loss.median())),
        "n_examples": int(x.shape[0]),
        "n_holdout_examples": int(held_examples.sum()),
        "n_rows": len(record.features),
        "n_fit": len(fit_rows),
        "n_holdout": len(held_rows),
        "fit_loss_first": fit["loss_first"],
        "fit_loss_last": fit["loss_last"],
        "per_epoch": per_epoch,
    }

    what = (f"the given labels ({float(corrupted.mask.mean()):.2f} wrong)" if own_labels
            else f"the estimated noise ({float(corrupted.mask.mean()):.2f})" if estimated
            else f"{m.dd_noise_kind} {m.dd_noise_rate:g}")

    def plot(folder: Path) -> Path:
        losses = record.features.loss.numpy()
        diffs = record.features.loss_diff.numpy()
        loss = torch.linspace(0.0, float(np.quantile(losses, 0.99)) * 1.05 + 1e-3, 101)
        diff = torch.linspace(float(np.quantile(diffs, 0.005)) - 0.1, float(np.quantile(diffs, 0.995)) + 0.1, 101)
        maps, points = [], []
        for p in DD_PLOT_PROGRESS:
            maps.append(mn.weight_map(mentor, loss=loss, loss_diff=diff, progress=p))
            # held-out observations of the epoch whose progress range holds p
            near = held & (record.epoch == _epoch_at(record.history, p))
            points.append((losses[near.numpy()], diffs[near.numpy()], bad_all[near.numpy()]))
        return plot_weight_maps(
            {"learned v": maps}, folder / DD_PLOT_NAME, loss=loss.numpy(), diff=diff.numpy(),
            columns=[f"progress {p}%" for p in DD_PLOT_PROGRESS], points=points,
            title=(f"MentorNet DD on {what} (clean subset): held-out AUROC "
                   f"{report['auroc']:.3f} (raw loss {report['auroc_loss']:.3f}); mean v over labels"),
        )

    bad_all = record.features.target.numpy() < 0.5
    if report["weight_rise"] > m.dd_max_rise and not (m.dd_noise_kind == "symmetric"
                                                      and m.dd_noise_rate == m.dd_fallback_rate):
        # no curriculum: the copy left its recording student unable to tell clean labels from wrong ones (most of
        # them wrong); learn it again as the official DD mentor was learnt, on a copy with few wrong labels
        fallback = dataclasses.replace(m, dd_noise_kind="symmetric", dd_noise_rate=m.dd_fallback_rate)
        log(f"the DD mentor's weight rises with the loss by {report['weight_rise']:.3f} (> mentor.dd_max_rise "
            f"{m.dd_max_rise:g}) on {what}: learnt again on a copy with symmetric noise "
            f"{m.dd_fallback_rate:g} (mentor.dd_fallback_rate)")
        again = pretrain_dd(fallback, prepared, recipe=recipe, generator=generator, device=device, log=log)
        again.report["fallback_from"] = {k: report[k] for k in ("dd_noise_kind", "dd_noise_rate",
                                                                 "dd_realised_rate", "auroc", "weight_rise")}
        return dataclasses.replace(again, config=fallback)
    return Pretrained(mentor=mentor, num_classes=k, report=report, plot=plot,
                      dd_transition=(np.asarray(transition, dtype=np.float64) if estimated and not own_labels
                                     else None))


def _epoch_at(history: list[dict[str, float]], progress: int) -> int:
    """The 1-based epoch whose progress range [lo, hi] contains ``progress`` (the last one past the end)."""
    for row in history:
        if row["progress_lo"] <= progress <= row["progress_hi"]:
            return int(row["epoch"])
    return int(history[-1]["epoch"])


