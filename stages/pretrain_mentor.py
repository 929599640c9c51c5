"""Stage `pretrain_mentor`: learn the MentorNet that stage `train_student` (method spade) uses.

- ``mentor.kind: pd`` (pre-defined): fit the mentor to the curriculum ``mentor.curriculum`` on
  ``mentor.grid_size`` points of the official (loss, loss difference, progress) grid; report the mean
  absolute error |v − v*| on the fitted points and on ``mentor.holdout`` of them held out.
- ``mentor.kind: dd`` (data-driven): only the trusted clean subset is used (never the train pool's
  labels). A copy of its labels is corrupted (``mentor.dd_noise_*``, so which labels are wrong is
  known); a fresh student (the ``train`` recipe: network and optimiser settings, ``mentor.dd_epochs``
  epochs, plain cross-entropy) trains on it and every example's features are recorded after each epoch,
  with target v* = 1[label correct]. Examples (all their epochs together) are split into fit / held-out
  (``mentor.holdout``); the mentor is fitted with sigmoid cross-entropy; the report gives the held-out
  AUROC of v as a detector of the corrupted labels, beside the AUROC of the raw loss.

Inputs: PATHS.prepared (for dd: the clean subset's images and labels; for pd: the class count).
Outputs: PATHS.mentor_model, PATHS.mentor_report (JSON metrics), PNGs in the folder PATHS.mentor_plots.
Seeds: ``mentor.seed`` (mentor and student initialisation, batch order, grid sampling, the split) and
``mentor.dd_noise_seed`` (the corrupted copy) are separate.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labelnoise import distributed, noise, runtime
from labelnoise import mentornet as mn
from labelnoise.auto import settle_stage
from labelnoise.config import Config, ConfigError
from labelnoise.datasets import Prepared, class_map_for, load_prepared
from labelnoise.io import save_json
from labelnoise.metrics import detection_quality
from labelnoise.models import channel_stats, create_model
from labelnoise.plots import plot_weight_maps
from stages.common import PATHS, STAGE_PARAMS, require, setup, stage_run

PD_PLOT_PROGRESS = (10, 50, 95)  # burn-in, self-paced and linear phases of official_pd
MIN_DD_EXAMPLES = 10  # corrupted and correct labels each, at least, in the dd mentor's data
DD_PLOT_PROGRESS = (10, 50, 90)
PD_PLOT_NAME = "pd_weights.png"
DD_PLOT_NAME = "dd_weights.png"
# Report entries logged as MLflow metrics (the rest of the report are settings and counts).
METRICS = ("mae_train", "mae_holdout", "auroc", "auroc_loss", "auroc_last_epoch", "auroc_loss_last_epoch",
           "fit_auroc", "dd_realised_rate", "fit_loss_first", "fit_loss_last", "n_rows", "time_s")


def run(cfg: Config) -> dict[str, Any]:
    """Fit the mentor of params ``mentor``; write PATHS.mentor_model, PATHS.mentor_report, PATHS.mentor_plots."""
    require(PATHS.prepared)
    prepared = load_prepared(PATHS.prepared)
    _check(cfg, prepared)  # bad params fail here: no run opened, nothing written
    # pd uses neither the percentile nor a corrupted copy; dd's auto ones come from the noise estimate
    cfg, chosen, estimate = settle_stage(cfg, STAGE_PARAMS["pretrain_mentor"], PATHS.noise_estimate,
                                         used=lambda key: cfg.mentor.kind == "dd")
    setup(cfg)
    generator = runtime.seed_everything(cfg.mentor.seed, deterministic=cfg.base.deterministic)
    device = runtime.resolve_device(cfg.base.device)
    t0 = time.perf_counter()
    if cfg.mentor.kind == "pd":
        result = _pretrain_pd(cfg, num_classes=len(prepared.classes), generator=generator, device=device)
    else:
        result = _pretrain_dd(cfg, prepared, generator=generator, device=device,
                              transition=estimate.transition if cfg.mentor.dd_noise_kind == "auto" else None)
    report = {"dataset": prepared.dataset, **result.report, "auto": chosen, "device": str(device),
              "time_s": round(time.perf_counter() - t0, 2)}
    if not distributed.is_main():  # torchrun: rank 0 writes the outputs
        return {}

    with stage_run("pretrain_mentor", cfg) as tracked:
        tracked.set_tags({"mentor": cfg.mentor.kind})
        mn.save_mentor(PATHS.mentor_model, result.mentor, cfg=cfg.mentor, num_classes=result.num_classes,
                       info={k: v for k, v in report.items()  # no timing: same params, same bytes
                             if k not in ("per_epoch", "time_s")})
        plot_dir = Path(PATHS.mentor_plots)
        written = [result.plot(plot_dir)]
        for stale in plot_dir.glob("[!.]*.png"):  # the folder is this stage's: drop figures of the other kind
            if stale not in written:
                stale.unlink()
        save_json(PATHS.mentor_report, report)
        for row in report.get("per_epoch", []):
            tracked.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
        metrics = {k: float(report[k]) for k in METRICS if k in report and math.isfinite(report[k])}
        tracked.log_metrics(metrics)
        tracked.log_artifact(PATHS.mentor_report)
        for png in written:
            tracked.log_artifact(png, "mentor")
    return metrics


def _check(cfg: Config, prepared: Prepared) -> None:
    """Everything about the params that can be known before any work (ConfigError names the key)."""
    m = cfg.mentor
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
        raise ConfigError("mentor.kind: dd needs a trusted clean subset, and there is none (data.clean_size is 0 "
                          "and no data.clean_file); give one, or use the predefined curriculum: mentor.kind: pd")
    n_held = round(m.holdout * n)
    if n_held == 0 or n_held == n:
        raise ConfigError(f"mentor.holdout: {m.holdout} of {n} clean examples leaves no fit or no held-out examples")
    if m.dd_noise_rate == 0 and m.dd_noise_kind != "auto":
        raise ConfigError("mentor.dd_noise_rate: must be > 0 (the dd mentor learns to tell corrupted labels apart)")
    if m.dd_noise_kind == "asymmetric":
        try:
            class_map_for(prepared.dataset, "auto")
        except ValueError as e:
            raise ConfigError(f"mentor.dd_noise_kind: asymmetric uses the dataset's shipped class map ({e})") from None


@dataclasses.dataclass
class _Result:
    mentor: mn.MentorNet
    num_classes: int
    report: dict[str, Any]
    plot: Callable[[Path], Path]  # plot(folder) writes the kind's figure there, returns its path


# ----------------------------------------------------------------------------- pd


def _pretrain_pd(cfg: Config, *, num_classes: int, generator: torch.Generator, device: torch.device) -> _Result:
    m = cfg.mentor
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

    return _Result(mentor=mentor, num_classes=num_classes, report=report, plot=plot)


# ----------------------------------------------------------------------------- dd


def _pretrain_dd(cfg: Config, prepared: Prepared, *, generator: torch.Generator, device: torch.device,
                 transition: np.ndarray | None = None) -> _Result:
    m = cfg.mentor
    k = len(prepared.classes)
    # Only the trusted clean subset: its images and true labels. The train pool's labels are never read.
    x = torch.from_numpy(np.ascontiguousarray(prepared.images[prepared.clean_idx]))  # (N, C, H, W) uint8
    y_true = prepared.labels[prepared.clean_idx]  # (N,)
    class_map = class_map_for(prepared.dataset, "auto") if m.dd_noise_kind == "asymmetric" else None
    # dd_noise_kind auto: the estimated transition matrix T̂ (exact counts per class), so the copy has the noise's
    # structure and level as estimated from the train labels
    kind = "transition" if transition is not None else m.dd_noise_kind
    corrupted = noise.corrupt(y_true, kind=kind, rate=m.dd_noise_rate, num_classes=k, transition=transition,
                              rng=np.random.default_rng(m.dd_noise_seed), class_map=class_map)
    y_noisy = torch.from_numpy(corrupted.labels)
    correct = torch.from_numpy(~corrupted.mask)  # (N,) bool: v* = 1[label correct]
    wrong = int(corrupted.mask.sum())
    if wrong < MIN_DD_EXAMPLES or corrupted.mask.size - wrong < MIN_DD_EXAMPLES:
        raise ValueError(f"the dd mentor's copy of the {corrupted.mask.size} trusted examples has {wrong} corrupted "
                         f"and {corrupted.mask.size - wrong} correct labels: it needs at least {MIN_DD_EXAMPLES} of "
                         "each to learn to tell them apart; raise data.clean_size (or mentor.dd_noise_rate), or use "
                         "mentor.kind: pd")

    # ---- a fresh student on the corrupted copy, features recorded after every epoch
    _, channels, height, width = x.shape
    mean, std = channel_stats(x)
    student = create_model(cfg.train.model, num_classes=k, in_channels=channels, image_size=max(height, width),
                           mean=mean, std=std)
    student_cfg = dataclasses.replace(cfg.train, epochs=m.dd_epochs)
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
        "dd_noise_kind": kind,
        "dd_noise_rate": m.dd_noise_rate if transition is None else None,
        "dd_noise_seed": m.dd_noise_seed,
        "dd_realised_rate": float(corrupted.mask.mean()),
        "dd_epochs": m.dd_epochs,
        "student_model": cfg.train.model,
        "auroc": auroc(v_held, bad),
        "auroc_loss": auroc(-loss_held, bad),
        "auroc_last_epoch": per_epoch[-1]["auroc_epoch"],
        "auroc_loss_last_epoch": per_epoch[-1]["auroc_loss_epoch"],
        "fit_auroc": mn.detection_auroc(mentor, fit_rows),
        "n_examples": int(x.shape[0]),
        "n_holdout_examples": int(held_examples.sum()),
        "n_rows": len(record.features),
        "n_fit": len(fit_rows),
        "n_holdout": len(held_rows),
        "fit_loss_first": fit["loss_first"],
        "fit_loss_last": fit["loss_last"],
        "per_epoch": per_epoch,
    }

    what = (f"the estimated noise ({float(corrupted.mask.mean()):.2f})" if transition is not None
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
    return _Result(mentor=mentor, num_classes=k, report=report, plot=plot)


def _epoch_at(history: list[dict[str, float]], progress: int) -> int:
    """The 1-based epoch whose progress range [lo, hi] contains ``progress`` (the last one past the end)."""
    for row in history:
        if row["progress_lo"] <= progress <= row["progress_hi"]:
            return int(row["epoch"])
    return int(history[-1]["epoch"])


