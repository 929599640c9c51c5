"""Student training on the noisy labels: plain cross-entropy (method ``ce``, the baseline), MentorNet
weighting with burn-in and joint mentor updates (method ``spade``, Jiang et al. 2018), or MentorNet-guided
mixup (method ``mentormix``, Jiang et al. 2020).

Read :func:`fit` top to bottom: per epoch it goes schedule → forward/backward → evaluate → log →
checkpoint → stop. The pieces it uses are small functions above it:

- LR schedules (:func:`lr_factor`), stepped once per optimiser step;
- CIFAR augmentation (:func:`crop_flip`): random crop + horizontal flip on a uint8 batch, seeded;
- tasks (timm style): :class:`CrossEntropyTask` / :class:`SpadeTask` / :class:`MentorMixTask` own one
  mini-batch's forward pass and loss, returning {"loss", "logits", named parts}; mentor updates run between
  steps;
- :class:`WeightLog`: per-example loss and weight of every train example in chosen epochs;
- :func:`train_one_epoch` (timm style, returns a dict) and :func:`evaluate_accuracy` / :func:`validate`;
- checkpoints: a dict with everything needed to resume bit-for-bit (weights, optimiser, scheduler,
  RNG states, the position inside the epoch, history, best weights, the task's state, the weight log).

CPU fast path: the whole split is a uint8 tensor in memory; a batch is ``x[perm[i:i+B]]`` with a
seeded permutation per epoch (no DataLoader, no float copy of the dataset); the model's first layer
turns uint8 into normalised floats. bf16 autocast and channels_last are used where measured faster.
No host synchronisation inside the step loop except the finite-loss check on CPU (where it is free).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labelnoise import distributed
from labelnoise.io import save_torch

if TYPE_CHECKING:
    from labelnoise.config import MentorConfig, StudentConfig
    from labelnoise.mentornet import MovingPercentile
    from labelnoise.views import TrainView

CIFAR = ("cifar10", "cifar100")
MENTOR_METHODS = ("spade", "mentormix")  # student methods that use the MentorNet
SCORED_METHODS = (*MENTOR_METHODS, "cleanlab")  # methods that score every train label (noise detection)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or inf; names the epoch (1-based) and the global step (0-based)."""

    def __init__(self, epoch: int, step: int, message: str | None = None) -> None:
        self.epoch, self.step = epoch, step
        super().__init__(message or f"non-finite loss at epoch {epoch}, step {step}")


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`fit`: a checkpoint was saved; running again resumes from it."""


# ----------------------------------------------------------------------------- runtime choices


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``student.precision`` (None = plain fp32).

    ``auto``: bf16 on CUDA (when supported); on CPU bf16 only when oneDNN has native bf16
    (avx512_bf16 / AMX), where we measured it ~1.4x faster for the CNN; fp32 elsewhere.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        return torch.bfloat16 if _cpu_has_native_bf16() else None
    return None


def _cpu_has_native_bf16() -> bool:
    """oneDNN's answer, unless ``LABELNOISE_CPU_BF16`` (0 / 1) overrides it: with 0 ``auto`` resolves to fp32 on
    any CPU, so a machine with native bf16 runs (and tests) what a CPU without it runs."""
    forced = os.environ.get("LABELNOISE_CPU_BF16", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if forced:
        raise ValueError(f"LABELNOISE_CPU_BF16 must be 0 or 1, got {forced!r}")
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_channels_last(setting: str, device: torch.device) -> bool:
    """``student.channels_last``: ``auto`` → on for CUDA and CPU (oneDNN's NHWC convolutions measured
    ~1.6x faster than NCHW for the CNN on this 2-core AVX-512 CPU)."""
    if setting in ("on", "off"):
        return setting == "on"
    return device.type in ("cuda", "cpu")


def resolve_augment(augment: str, dataset: str) -> str:
    """``student.augment``: ``auto`` → ``crop_flip`` for CIFAR-10/100, ``none`` otherwise."""
    if augment == "auto":
        return "crop_flip" if dataset in CIFAR else "none"
    return augment


# ----------------------------------------------------------------------------- optimiser and schedule


def make_optimizer(model: nn.Module, cfg: StudentConfig) -> torch.optim.SGD:
    """SGD with (Nesterov) momentum and L2 weight decay on all parameters."""
    # Nesterov with zero momentum is plain SGD; torch refuses the combination, so drop the flag then.
    return torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
        weight_decay=cfg.weight_decay,
    )


def lr_factor(
    step: int, *, schedule: str, total_steps: int, warmup_steps: int, milestones: list[float], gamma: float,
    pct_start: float,
) -> float:
    """Multiplier of the base lr at optimiser step ``step`` (0-based) of ``total_steps``.

    - ``constant`` / ``multistep`` / ``cosine``: optional linear warm-up over ``warmup_steps``
      ((step+1)/warmup, so the first step already moves), then 1 / ``gamma`` ** (milestones passed,
      milestones being fractions of all steps) / half a cosine from 1 to 0.
    - ``onecycle`` (Smith & Topin 2019): linear ramp to the peak over ``pct_start`` of training, then
      half a cosine down to 0. Momentum is not cycled, so ``student.momentum`` means what it says.
    """
    if schedule == "onecycle":
        peak = max(1, round(pct_start * total_steps))
        if step < peak:
            return (step + 1) / peak
        return 0.5 * (1.0 + math.cos(math.pi * (step - peak) / max(1, total_steps - peak)))
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "multistep":
        return gamma ** sum(step >= round(m * total_steps) for m in milestones)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / max(1, total_steps - warmup_steps)))
    raise ValueError(f"unknown lr schedule {schedule!r}")


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: StudentConfig, *, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration LambdaLR following :func:`lr_factor` (call ``.step()`` after every optimiser step)."""
    total = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch) if cfg.schedule != "onecycle" else 0

    def factor(step: int) -> float:
        return lr_factor(step, schedule=cfg.schedule, total_steps=total, warmup_steps=warmup,
                         milestones=list(cfg.milestones), gamma=cfg.gamma, pct_start=cfg.onecycle_pct_start)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ----------------------------------------------------------------------------- augmentation


def crop_flip(x: Tensor, *, padding: int, generator: torch.Generator) -> Tensor:
    """Random crop after zero padding + random horizontal flip, independently per image.

    x: uint8 (B, C, H, W) → uint8 (B, C, H, W). Randomness comes only from ``generator`` (seeded,
    checkpointed), so runs and resumes repeat exactly. torchvision's v2 transforms draw one crop per
    call (the whole batch would share it), so the per-image offsets are gathered here.
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding), value=0)  # (B, C, H+2p, W+2p)
    offsets = torch.randint(0, 2 * padding + 1, (b, 2), generator=generator).to(x.device)  # (B, 2) row, col
    flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)  # (B,)
    rows = offsets[:, 0:1] + torch.arange(h, device=x.device)  # (B, H)
    cols = offsets[:, 1:2] + torch.arange(w, device=x.device)  # (B, W)
    out = padded[
        torch.arange(b, device=x.device)[:, None, None, None],
        torch.arange(c, device=x.device)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]  # (B, C, H, W)
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


# ----------------------------------------------------------------------------- evaluation


def _autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


@torch.inference_mode()
def predict_logits(
    model: nn.Module, x: Tensor, *, batch_size: int, device: torch.device | str,
    autocast_dtype: torch.dtype | None = None, channels_last: bool = False,
) -> Tensor:
    """Logits of ``model`` in eval mode. x: uint8 (N, C, H, W) on any device → float32 (N, K) on CPU."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size].to(device, non_blocking=True)  # (b, C, H, W) uint8
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with _autocast(device, autocast_dtype):
                out.append(model(xb).float().cpu())  # (b, K)
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 0)


def evaluate_accuracy(
    model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int, device: torch.device | str,
    autocast_dtype: torch.dtype | None = None, channels_last: bool = False,
) -> dict[str, float]:
    """Accuracy and mean cross-entropy against labels y (N,). Empty split → NaN (n = 0)."""
    if x.shape[0] == 0:
        return {"acc": math.nan, "loss": math.nan, "n": 0}
    logits = predict_logits(model, x, batch_size=batch_size, device=device, autocast_dtype=autocast_dtype,
                            channels_last=channels_last)  # (N, K)
    y = y.cpu()
    return {
        "acc": (logits.argmax(dim=1) == y).float().mean().item(),
        "loss": F.cross_entropy(logits, y).item(),
        "n": int(y.shape[0]),
    }


validate = evaluate_accuracy  # timm's name


# ----------------------------------------------------------------------------- per-mini-batch tasks (timm style)
# A task owns the forward pass of one mini-batch and returns {"loss": () to minimise, "logits": (B, K), plus
# named parts}; train_one_epoch does the rest (backward, optimiser step, bookkeeping) the same way for every
# method. Parts a task may return, all (B,) and detached: "per_example" (the loss of each example),
# "loss_diff" (loss - l_pt), "weight" (what multiplied the loss), "mentor_weight" (the mentor's v before the
# sampling layer). `after_step` runs once per optimiser step (SPADE's mentor updates live there).

# `mentor_update: lr_change` on a continuous schedule (cosine, onecycle, constant with warm-up): the mentor
# is refitted each time the lr falls below this fraction of the lr at the previous refit (issue: "half").
LR_DROP_FOR_REFIT = 0.5
# Streams derived from base.seed (np.random.SeedSequence([seed, stream])) so that the SPADE sampling and each
# mentor refit draw from their own generator, independent of the batch order and of each other.
_SPADE_STREAM, _REFIT_STREAM = 1, 1000


def derived_seed(seed: int, stream: int) -> int:
    """A 32-bit seed for an independent random stream ``stream`` of the run seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])


class CrossEntropyTask:
    """Method ``ce``: mean cross-entropy on the noisy labels (the baseline). Returns {"loss", "logits"}."""

    method = "ce"

    def __init__(self, *, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = label_smoothing

    def __call__(self, model: nn.Module, xb: Tensor, yb: Tensor, *, step: int) -> dict[str, Tensor]:
        logits = model(xb)  # (B, K)
        return {"loss": F.cross_entropy(logits, yb, label_smoothing=self.label_smoothing), "logits": logits}

    def per_example(self, logits: Tensor, yb: Tensor) -> Tensor:
        """(B,) detached per-example losses; computed only in the epochs whose losses are recorded."""
        return F.cross_entropy(logits.detach().float(), yb, reduction="none", label_smoothing=self.label_smoothing)

    def after_step(self, model: nn.Module, *, step: int, lr: float, next_lr: float) -> None:
        """Nothing changes between steps."""

    def summary(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


class _RecentBatches:
    """Ring buffer of the mentor inputs of the last ``capacity`` mini-batches (PD refits fit on them).

    Rows are mini-batches, padded with NaN losses when a batch is short; lives on the training device.
    """

    def __init__(self, capacity: int, batch_size: int, device: torch.device) -> None:
        self.loss = torch.full((capacity, batch_size), math.nan, device=device)  # (R, B)
        self.loss_diff = torch.full((capacity, batch_size), math.nan, device=device)  # (R, B)
        self.label = torch.zeros((capacity, batch_size), dtype=torch.int64, device=device)  # (R, B)
        self.progress = torch.zeros(capacity, dtype=torch.int64)  # (R,) on the CPU: Python ints written
        self.count = 0  # mini-batches written so far

    def add(self, loss: Tensor, loss_diff: Tensor, label: Tensor, progress: int) -> None:
        r, b = self.count % self.loss.shape[0], loss.shape[0]
        self.loss[r].fill_(math.nan)
        self.loss[r, :b] = loss
        self.loss_diff[r, :b] = loss_diff
        self.label[r, :b] = label
        self.progress[r] = progress
        self.count += 1

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(loss, loss_diff, label, progress), each (M,), the examples of the buffered batches."""
        rows = min(self.count, self.loss.shape[0])
        loss = self.loss[:rows]  # (rows, B)
        seen = ~torch.isnan(loss)
        progress = self.progress[:rows].to(loss.device)[:, None].expand_as(loss)
        return loss[seen], self.loss_diff[:rows][seen], self.label[:rows][seen], progress[seen]

    def state_dict(self) -> dict[str, Any]:
        return {"loss": self.loss.cpu(), "loss_diff": self.loss_diff.cpu(), "label": self.label.cpu(),
                "progress": self.progress.clone(), "count": self.count}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name in ("loss", "loss_diff", "label"):
            getattr(self, name).copy_(state[name])
        self.progress.copy_(state["progress"])
        self.count = int(state["count"])


class SpadeTask:
    """Method ``spade`` (MentorNet, Jiang et al. 2018, Alg. 1 "SPADE"): the mentor weights every example of
    the student's mini-batch, and (optionally) is refitted during training.

    One mini-batch (``__call__``):
      forward → per-example cross-entropy l (B,) on the noisy labels
      → l_pt ← EMA of the p-th percentile of l (``mentor.percentile``, ``mentor.ema_decay``; updated first,
        then used, as the official ``mentornet()`` does)
      → v = mentor(l, l − l_pt, noisy label, progress %) with no gradient into the mentor
        (progress = percent of all training steps done, 0..99, as the official ``epoch_step``)
      → optional probabilistic sampling layer: v ← Bernoulli(v) (``student.sample_weights``)
      → loss = Σ v·l / Σ v (``student.weight_norm: sum``, the default) or Σ v·l / B (``batch``).
    ``batch`` is the paper's objective and the official code (``reduce_mean(loss * v)`` in
    cifar_train_mentornet.py): a batch the mentor mostly rejects moves the student less, so with a mean weight
    of ~0.6 the effective learning rate is ~0.6x that of the CE baseline. ``sum`` keeps the baseline's step
    size for the examples the mentor keeps.
    Burn-in: for the first ``student.burn_in`` fraction of the steps, v ~ Bernoulli(``burn_in_keep``) per
    example (example dropout) and the mentor is not called; l_pt keeps updating.
    Weight decay is the optimiser's own (the official code scales it by Σv/B; we do not).

    Mentor updates (``after_step``, at the cadence ``student.mentor_update``; never during burn-in, never
    after the last step): ``every_k`` every ``mentor_update_every`` epochs; ``lr_change`` when a multistep
    milestone lowers the lr, or on other schedules when the lr falls below ``LR_DROP_FOR_REFIT`` times the lr
    of the previous refit (the highest lr so far before the first one), at most once per epoch. A refit runs
    ``student.mentor_update_steps`` Adam steps of :func:`labelnoise.mentornet.fit_mentor`:
      - PD: towards its curriculum ``mentor.curriculum`` on the mentor inputs of the last
        ``student.mentor_update_batches`` mini-batches (MSE);
      - DD: on the trusted clean subset with a copy of its labels corrupted by ``mentor.dd_noise_*`` (so which
        labels are wrong is known), the features measured with the current student (BCE).
    All randomness comes from generators derived from ``seed`` and saved in ``state_dict``.
    """

    method = "spade"

    def __init__(
        self,
        mentor: nn.Module,
        *,
        cfg: StudentConfig,
        mentor_cfg: MentorConfig,
        total_steps: int,
        steps_per_epoch: int,
        device: torch.device,
        seed: int,
        num_classes: int,
        clean: tuple[Tensor, Tensor] | None = None,
        dataset: str = "",
    ) -> None:
        from labelnoise.mentornet import MovingPercentile

        self.mentor = mentor.to(device).eval()  # called under no_grad: the student's backward never reaches it
        self.cfg, self.mentor_cfg = cfg, mentor_cfg
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        self.device, self.seed, self.num_classes = device, seed, num_classes
        self.burn_in_steps = round(cfg.burn_in * total_steps)
        self.percentile = MovingPercentile.from_config(mentor_cfg, num_classes=num_classes)
        self.generator = torch.Generator(device=device).manual_seed(derived_seed(seed, _SPADE_STREAM))
        self.refits: list[dict[str, float]] = []  # one row per mentor update: step, progress, fit statistics
        self._lr_ref = 0.0  # lr_change: the lr at the previous refit (before the first: the highest lr so far)
        self._recent = (_RecentBatches(cfg.mentor_update_batches, cfg.batch_size, device)
                        if cfg.mentor_update != "none" and mentor_cfg.kind == "pd" else None)
        self._clean = None
        if cfg.mentor_update != "none" and mentor_cfg.kind == "dd":
            if clean is None or clean[0].shape[0] == 0:
                raise ValueError("student.mentor_update with a dd mentor needs the trusted clean subset "
                                 "(data.clean_size > 0)")
            self._clean = self._corrupted_clean_copy(*clean, num_classes=num_classes, dataset=dataset)

    def _corrupted_clean_copy(self, x: Tensor, y: Tensor, *, num_classes: int,
                              dataset: str) -> tuple[Tensor, Tensor, Tensor]:
        """(x, noisy copy of the clean labels, correct (bool)): DD's training signal with a known mask."""
        from labelnoise.datasets import class_map_for
        from labelnoise.noise import corrupt

        m = self.mentor_cfg
        noisy = corrupt(y.cpu().numpy(), kind=m.dd_noise_kind, rate=m.dd_noise_rate, num_classes=num_classes,
                        rng=np.random.default_rng(m.dd_noise_seed),
                        class_map=class_map_for(dataset, "auto") if m.dd_noise_kind == "asymmetric" else None)
        return x, torch.from_numpy(noisy.labels), torch.from_numpy(~noisy.mask)

    # ---- one mini-batch
    def __call__(self, model: nn.Module, xb: Tensor, yb: Tensor, *, step: int) -> dict[str, Tensor]:
        logits = model(xb)  # (B, K)
        per_example = F.cross_entropy(logits.float(), yb, reduction="none",
                                      label_smoothing=self.cfg.label_smoothing)  # (B,)
        loss = per_example.detach()  # (B,) the mentor's input; no gradient flows through v
        v, loss_diff, parts, own = self.global_weights(loss, yb, step=step, percentile=self.percentile)
        return {"loss": self.weighted_mean(v, per_example, own), "logits": logits, "per_example": loss,
                "loss_diff": loss_diff[own], "weight": v[own], **{k: t[own] for k, t in parts.items()}}

    def global_weights(self, loss: Tensor, label: Tensor, *, step: int, percentile: MovingPercentile,
                       remember: bool = True) -> tuple[Tensor, Tensor, dict[str, Tensor], slice]:
        """:meth:`mentor_weights` of the whole global mini-batch (under torchrun: every rank's losses and labels,
        gathered, so l_pt, v and the refit inputs are the same on all ranks), and this rank's slice of it."""
        loss_all, own = distributed.gather(loss)
        label_all, _ = distributed.gather(label)
        v, loss_diff, parts = self.mentor_weights(loss_all, label_all, step=step, percentile=percentile)
        if remember:
            self._remember(loss_all, loss_diff, label_all, step=step)
        return v, loss_diff, parts, own

    @torch.no_grad()
    def mentor_weights(self, loss: Tensor, label: Tensor, *, step: int,
                       percentile: MovingPercentile) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """The weights v (B,) of examples with losses ``loss`` (B,) (detached) and int labels ``label`` (B,).

        Updates ``percentile`` (l_pt) first, then uses it. During burn-in v ~ Bernoulli(``burn_in_keep``) and
        the mentor is not called; after it v = mentor(l, l − l_pt, label, progress %), then the optional
        sampling layer. Returns (v, loss_diff (B,), {"mentor_weight": the mentor's v} after burn-in, else {}).
        """
        from labelnoise.mentornet import progress_percent

        with torch.autocast(self.device.type, enabled=False):  # the mentor runs in fp32
            l_pt = percentile.update(loss, label)  # EMA of the batch's p-th percentile, updated then used
            loss_diff = loss - l_pt  # (B,)
            if step < self.burn_in_steps:  # burn-in: example dropout, no mentor
                keep = torch.full_like(loss, self.cfg.burn_in_keep)
                return torch.bernoulli(keep, generator=self.generator), loss_diff, {}  # (B,) 0/1
            progress_b = torch.full_like(label, progress_percent(step, self.total_steps))  # (B,) int64
            v = self.mentor(loss, loss_diff, label, progress_b).float()  # (B,) in (0, 1)
            parts = {"mentor_weight": v}
            if self.cfg.sample_weights:  # probabilistic sampling layer
                v = torch.bernoulli(v, generator=self.generator)
        return v, loss_diff, parts

    def weighted_mean(self, v: Tensor, per_example: Tensor, own: slice = slice(None)) -> Tensor:
        """Σ v·l / Σ v (``student.weight_norm: sum``) or Σ v·l / B (``batch``, official); v (B,) is a constant.
        Under torchrun v is the global batch's and ``per_example`` this rank's ``own`` part: the sums run over
        the global batch once DistributedDataParallel averages the ranks' gradients (hence × world size)."""
        norm = v.sum().clamp_min(1e-8) if self.cfg.weight_norm == "sum" else v.shape[0]
        return (v[own] * per_example).sum() / norm * distributed.world_size()

    def _remember(self, loss: Tensor, loss_diff: Tensor, label: Tensor, *, step: int) -> None:
        """Keep the batch's mentor inputs for PD refits (only when refits are on)."""
        from labelnoise.mentornet import progress_percent

        if self._recent is not None:
            self._recent.add(loss, loss_diff, label, progress_percent(step, self.total_steps))

    # ---- mentor updates
    def _refit_due(self, *, step: int, lr: float, next_lr: float) -> bool:
        upcoming = step + 1  # the refit happens between `step` and the next one
        due = False
        if self.cfg.mentor_update == "every_k":
            due = upcoming % (self.cfg.mentor_update_every * self.steps_per_epoch) == 0
        elif self.cfg.mentor_update == "lr_change":
            if not self.refits:
                self._lr_ref = max(self._lr_ref, lr)
            if self.cfg.schedule == "multistep":
                due = next_lr < lr
            else:  # at most one refit per epoch: a schedule decaying to 0 would otherwise halve ever faster
                spaced = not self.refits or upcoming - self.refits[-1]["step"] >= self.steps_per_epoch
                due = next_lr < LR_DROP_FOR_REFIT * self._lr_ref and spaced
        return due and self.burn_in_steps <= upcoming < self.total_steps

    def after_step(self, model: nn.Module, *, step: int, lr: float, next_lr: float) -> None:
        """Refit the mentor when ``student.mentor_update`` says so (``step`` just finished, 0-based)."""
        if self.cfg.mentor_update != "none" and self._refit_due(step=step, lr=lr, next_lr=next_lr):
            self.refit(model, step=step + 1, lr=next_lr)
            self._lr_ref = next_lr  # lr_change: the next refit waits for the lr to halve again

    def refit(self, model: nn.Module, *, step: int, lr: float) -> dict[str, float]:
        """A few mentor optimisation steps (PD: towards the curriculum; DD: on the corrupted clean copy)."""
        from labelnoise.mentornet import MentorFeatures, collect_features, curriculum, fit_mentor, progress_percent

        was_training = model.training
        generator = torch.Generator().manual_seed(derived_seed(self.seed, _REFIT_STREAM + len(self.refits)))
        fit_cfg = dataclasses.replace(self.mentor_cfg, fit_steps=self.cfg.mentor_update_steps)
        progress = progress_percent(step, self.total_steps)
        try:
            if self._recent is not None:  # PD
                loss, loss_diff, label, prog = self._recent.tensors()
                target = curriculum(self.mentor_cfg.curriculum, self.mentor_cfg)(loss, loss_diff, prog)
                features = MentorFeatures(loss=loss, loss_diff=loss_diff, label=label, progress=prog,
                                          target=target.float())
                stats = fit_mentor(self.mentor, features, cfg=fit_cfg, generator=generator, loss="mse")
            else:  # DD
                x, y_noisy, correct = self._clean
                features = collect_features(model, x, y_noisy, correct, percentile=copy.deepcopy(self.percentile),
                                            progress=progress, batch_size=self.cfg.batch_size, device=self.device,
                                            generator=generator)
                stats = fit_mentor(self.mentor, features, cfg=fit_cfg, generator=generator, loss="bce")
        finally:
            self.mentor.eval()
            model.train(was_training)
        row = {"step": float(step), "progress": float(progress), "lr": float(lr),
               **{k: float(v) for k, v in stats.items() if isinstance(v, (int, float))}}
        self.refits.append(row)
        return row

    # ---- reporting and checkpoints
    def summary(self) -> dict[str, float]:
        """Per-epoch extras for the history: the current l_pt and the number of mentor updates so far."""
        return {"l_pt": float(self.percentile.value), "mentor_updates": float(len(self.refits))}

    def state_dict(self) -> dict[str, Any]:
        return {
            "percentile": self.percentile.state_dict(), "generator": self.generator.get_state(),
            "mentor": {k: v.detach().cpu().clone() for k, v in self.mentor.state_dict().items()},
            "lr_ref": self._lr_ref, "refits": [dict(r) for r in self.refits],
            "recent": self._recent.state_dict() if self._recent is not None else None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.percentile.load_state_dict(state["percentile"])
        self.generator.set_state(state["generator"])
        self.mentor.load_state_dict(state["mentor"])
        self._lr_ref = float(state["lr_ref"])
        self.refits = [dict(r) for r in state["refits"]]
        if self._recent is not None:
            self._recent.load_state_dict(state["recent"])


def mentor_mix(x: Tensor, y: Tensor, v: Tensor, *, alpha: float, temperature: float,
               generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """MentorMix's "sample" and "mixup" steps (Jiang et al. 2020, Alg. 1; official ``mentor_mix_up``).

    x: (B, C, H, W) images (any dtype), y: (B, K) float label distributions (one-hot), v: (B,) mentor weights.
    Each example i draws a partner j ~ softmax(v / T) over the batch (importance sampling, with replacement,
    so examples the mentor trusts are picked more often), and λ_i ~ Beta(α, α), λ_i = max(λ_i, 1 − λ_i);
    λ_i is kept where v_i >= 0.5 and replaced by 1 − λ_i otherwise, so a trusted example dominates its own
    mix and a distrusted one is mostly replaced by its partner. Returns (x̃ = λ·x + (1 − λ)·x_j float32,
    ỹ = λ·y + (1 − λ)·y_j (B, K), λ (B,), partner index j (B,)). All randomness comes from ``generator``.
    """
    b = x.shape[0]
    probs = torch.softmax(v.float() / temperature, dim=0)  # (B,)
    partner = torch.multinomial(probs, b, replacement=True, generator=generator)  # (B,)
    # torch.distributions.Beta takes no generator: Beta(α, α) = G1 / (G1 + G2) with G1, G2 ~ Gamma(α, 1).
    g = torch._standard_gamma(torch.full((2, b), alpha, dtype=torch.float64, device=v.device), generator=generator)
    lam = (g[0] / (g[0] + g[1])).nan_to_num(nan=1.0).float()  # (B,); both draws 0 (tiny α) → no mixing
    lam = torch.maximum(lam, 1.0 - lam)
    lam = torch.where(v >= 0.5, lam, 1.0 - lam)  # (B,)
    lam_x = lam.view(b, *([1] * (x.dim() - 1)))  # (B, 1, 1, 1)
    xf = x.float()
    x_mix = lam_x * xf + (1.0 - lam_x) * xf[partner]  # (B, C, H, W)
    y_mix = lam[:, None] * y + (1.0 - lam[:, None]) * y[partner]  # (B, K)
    return x_mix, y_mix, lam, partner


@contextmanager
def _batch_stats_only(model: nn.Module) -> Iterator[None]:
    """Batch norm uses the batch's statistics without updating its running averages (train mode only).

    MentorMix's first forward pass only measures losses for the mentor; as in the official code (whose
    running averages are updated by the mixed pass alone), the running statistics describe the inputs
    the network is trained on.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in norms:
            m.track_running_stats = True


class MentorMixTask(SpadeTask):
    """Method ``mentormix`` (Jiang et al. 2020, "Beyond Synthetic Noise", Alg. 1; official
    ``cifar_train_mentormix.py``): weight, sample, mixup, weight again.

    One mini-batch (``__call__``):
      weight: forward with no gradient → per-example cross-entropy l (B,) on the noisy labels → v as SPADE
        (:meth:`SpadeTask.mentor_weights`: l_pt, burn-in v ~ Bernoulli(``burn_in_keep``), mentor, sampling
        layer). v only steers the mixing: the official code never puts v·l into the loss.
      sample + mixup: :func:`mentor_mix` with ``student.mixup_alpha`` and ``student.mix_temperature``.
      forward/loss on the mixed batch: l̃ (B,) = cross-entropy against the soft mixed labels;
        loss = mean l̃ (official ``reduce_mean``), or with ``student.second_reweight``:
      weight again: v2 = mentor weights of l̃ with their own moving percentile (same p and decay; official
        avg_name "mixed"), the label input being the mixed example's dominant label (the official code feeds
        label 0 to both calls), and loss = Σ v2·l̃ / B (``weight_norm: batch``, official) or / Σ v2 (``sum``).
    The official code drops weight decay under second_reweight (its regulariser collection is empty there);
    here the optimiser's weight decay always applies (the presets set 0 where the official run had none).
    Mentor refits (``student.mentor_update``) work as for SPADE on the first weighting's inputs.
    """

    method = "mentormix"

    def __init__(self, mentor: nn.Module, **kwargs: Any) -> None:
        from labelnoise.mentornet import MovingPercentile

        super().__init__(mentor, **kwargs)
        self.mix_percentile = MovingPercentile.from_config(self.mentor_cfg, num_classes=self.num_classes)

    def __call__(self, model: nn.Module, xb: Tensor, yb: Tensor, *, step: int) -> dict[str, Tensor]:
        ls = self.cfg.label_smoothing
        # ---- weight: losses of the batch as it is; no gradient (official: stop_gradient on loss and logits)
        with torch.no_grad(), _batch_stats_only(model):
            logits = model(xb)  # (B, K)
        loss = F.cross_entropy(logits.float(), yb, reduction="none", label_smoothing=ls)  # (B,)
        v_all, diff_all, parts_all, own = self.global_weights(loss, yb, step=step, percentile=self.percentile)
        v, loss_diff, parts = v_all[own], diff_all[own], {k: t[own] for k, t in parts_all.items()}

        # ---- sample + mixup (no gradient into v, λ or the partners)
        onehot = F.one_hot(yb, logits.shape[1]).float()  # (B, K)
        x_mix, y_mix, lam, partner = mentor_mix(xb, onehot, v, alpha=self.cfg.mixup_alpha,
                                                temperature=self.cfg.mix_temperature, generator=self.generator)
        if xb.is_contiguous(memory_format=torch.channels_last) and not xb.is_contiguous():
            x_mix = x_mix.contiguous(memory_format=torch.channels_last)

        # ---- forward on the mixed batch, soft-label cross-entropy
        mixed = F.cross_entropy(model(x_mix).float(), y_mix, reduction="none", label_smoothing=ls)  # (B,)
        if self.cfg.second_reweight:  # ---- weight again
            dominant = torch.where(lam >= 0.5, yb, yb[partner])  # (B,) label of the larger share
            v2, _, _, own2 = self.global_weights(mixed.detach(), dominant, step=step, percentile=self.mix_percentile,
                                                 remember=False)
            total, parts["mix_weight"] = self.weighted_mean(v2, mixed, own2), v2[own2]
        else:
            total = mixed.mean()
        return {"loss": total, "logits": logits, "per_example": loss, "loss_diff": loss_diff, "weight": v, **parts}

    def summary(self) -> dict[str, float]:
        """SPADE's extras, plus the second weighting's l_pt when it is on."""
        extra = {"l_pt_mix": float(self.mix_percentile.value)} if self.cfg.second_reweight else {}
        return {**super().summary(), **extra}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "mix_percentile": self.mix_percentile.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.mix_percentile.load_state_dict(state["mix_percentile"])


StudentTask = CrossEntropyTask | SpadeTask


def make_task(
    cfg: StudentConfig, *, mentor: nn.Module | None, mentor_cfg: MentorConfig | None, total_steps: int,
    steps_per_epoch: int, device: torch.device, seed: int, num_classes: int, data: TrainView | None = None,
) -> StudentTask:
    """The task for ``cfg.method``: ``ce`` ignores the mentor; ``spade`` and ``mentormix`` need it and
    ``mentor_cfg``."""
    if cfg.method == "ce":
        return CrossEntropyTask(label_smoothing=cfg.label_smoothing)
    if mentor is None or mentor_cfg is None:
        raise ValueError(f"student.method {cfg.method!r} needs a mentor (run stage pretrain_mentor first)")
    clean = (data.x_clean, data.y_clean) if data is not None else None
    task_cls = MentorMixTask if cfg.method == "mentormix" else SpadeTask
    return task_cls(mentor, cfg=cfg, mentor_cfg=mentor_cfg, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                    device=device, seed=seed, num_classes=num_classes, clean=clean,
                    dataset=data.dataset if data is not None else "")


# ----------------------------------------------------------------------------- per-example weight log


def weight_epochs(fractions: Sequence[float], epochs: int) -> list[int]:
    """``student.weights_at`` fractions → the 1-based epochs round(f·epochs) (at least 1), sorted, unique."""
    return sorted({min(epochs, max(1, round(f * epochs))) for f in fractions})


@dataclass
class WeightLog:
    """Per-example loss, loss − l_pt and weight of every train example during chosen epochs.

    Rows follow ``epochs``; columns are positions in the train pool (``TrainView.x_train``); NaN where an
    example was not seen in that epoch. Tensors live on the training device, written without host syncs.
    ``weight`` is the mentor's v before the sampling layer (after burn-in), the example-dropout draw during
    burn-in, and 1 for ``ce``; ``loss_diff`` is NaN for ``ce`` (no l_pt).
    """

    epochs: list[int]  # (E,) 1-based
    loss: Tensor  # (E, N) float32
    loss_diff: Tensor  # (E, N) float32
    weight: Tensor  # (E, N) float32

    @classmethod
    def create(cls, epochs: Sequence[int], n: int, *, device: torch.device) -> WeightLog:
        def nan() -> Tensor:
            return torch.full((len(epochs), n), math.nan, device=device)

        return cls(epochs=list(epochs), loss=nan(), loss_diff=nan(), weight=nan())

    def row(self, epoch: int) -> int | None:
        """Row of the 1-based ``epoch``, None when that epoch is not recorded."""
        return self.epochs.index(epoch) if epoch in self.epochs else None

    def write(self, row: int, idx: Tensor, *, loss: Tensor, loss_diff: Tensor | None, weight: Tensor | None) -> None:
        """Store the (B,) values of the examples at train positions ``idx`` (B,)."""
        self.loss[row, idx] = loss.float()
        if loss_diff is not None:
            self.loss_diff[row, idx] = loss_diff.float()
        self.weight[row, idx] = weight.float() if weight is not None else 1.0

    def merge(self, row: int) -> None:
        """Under torchrun: combine every rank's entries of ``row`` (each example was seen by one rank)."""
        for t in (self.loss, self.loss_diff, self.weight):
            t[row] = distributed.merge_seen(t[row])

    def arrays(self) -> dict[str, np.ndarray]:
        """{"epochs" (E,) int64, "loss", "loss_diff", "weight" (E, N) float32}: what PATHS.student_weights holds."""
        return {"epochs": np.asarray(self.epochs, dtype=np.int64), "loss": self.loss.cpu().numpy(),
                "loss_diff": self.loss_diff.cpu().numpy(), "weight": self.weight.cpu().numpy()}

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": list(self.epochs), "loss": self.loss.cpu(), "loss_diff": self.loss_diff.cpu(),
                "weight": self.weight.cpu()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if list(state["epochs"]) != self.epochs:
            raise ValueError(f"weight log epochs differ: {state['epochs']} saved, {self.epochs} now")
        for name in ("loss", "loss_diff", "weight"):
            getattr(self, name).copy_(state[name])


def save_weights(path: str | Path, weights: Mapping[str, np.ndarray], *, method: str) -> Path:
    """Write a :class:`WeightLog`'s arrays (``FitResult.weights``) plus the method name as npz, atomically."""
    from labelnoise.io import save_npz

    return save_npz(path, **weights, method=np.array(method))


def load_weights(path: str | Path) -> dict[str, Any]:
    """Read :func:`save_weights`' file: {"epochs" (E,), "loss", "loss_diff", "weight" (E, N), "method" str}."""
    from labelnoise.io import read_npz

    out: dict[str, Any] = read_npz(path, remedy="run the train_student stage (dvc repro train_student)",
                                   keys=("epochs", "loss", "weight"))
    out["method"] = str(out["method"]) if "method" in out else ""
    return out


# ----------------------------------------------------------------------------- one epoch


@dataclass
class EpochState:
    """Where the current epoch stands. Saved in a mid-epoch checkpoint so a resume continues exactly.

    The accumulators live on the training device, so the step loop never waits for the host.
    """

    perm: Tensor  # (N,) int64, the order of the train images this epoch (CPU)
    loss_sum: Tensor  # () float32, sum of per-image losses so far
    correct: Tensor  # () int64, predictions equal to the (noisy) label so far
    first_bad: Tensor  # () int64, global step of the first non-finite loss, -1 if none (CUDA check)
    batch: int = 0  # batches done
    seen: int = 0  # images done
    weight_sum: Tensor | None = None  # () float32, sum of the example weights so far (spade)

    @classmethod
    def start(cls, n: int, *, generator: torch.Generator, device: torch.device) -> EpochState:
        distributed.same_generator(generator)  # torchrun: one batch order on every rank
        return cls(
            perm=torch.randperm(n, generator=generator),
            loss_sum=torch.zeros((), device=device),
            correct=torch.zeros((), dtype=torch.int64, device=device),
            first_bad=torch.full((), -1, dtype=torch.int64, device=device),
            weight_sum=torch.zeros((), device=device),
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: v.cpu() if isinstance(v, Tensor) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], device: torch.device) -> EpochState:
        return cls(**{k: v.to(device) if isinstance(v, Tensor) and k != "perm" else v for k, v in d.items()})


def train_one_epoch(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batch_size: int,
    device: torch.device,
    generator: torch.Generator,
    epoch: int = 1,
    step: int = 0,
    state: EpochState | None = None,
    task: StudentTask | None = None,
    weight_log: WeightLog | None = None,
    augment: Callable[[Tensor], Tensor] | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    label_smoothing: float = 0.0,
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """One pass of training over x: uint8 (N, C, H, W), y: int64 (N,) noisy labels (both on ``device``).

    ``task`` owns the forward pass and the loss of a mini-batch (default: :class:`CrossEntropyTask` with
    ``label_smoothing``; :class:`SpadeTask` for MentorNet weighting). Batches are ``x[perm[i*B:(i+1)*B]]``
    for a permutation drawn from ``generator`` (or continued from ``state`` when resuming mid-epoch).
    ``epoch`` (1-based) and ``step`` (global step before this epoch) label errors, drive the task's
    schedule, and pick the ``weight_log`` row (per-example loss and weight, recorded in chosen epochs).
    ``should_stop()`` is polled between steps (Ctrl-C): the epoch then ends early with
    ``complete = False`` and ``state`` tells where. Raises NonFiniteLossError on NaN/inf.

    Returns {"train_loss" (mean per-example cross-entropy on the noisy labels), "train_acc_noisy",
    "lr" (of the last step), "steps" (run in this call), "complete", "state"}, plus "mean_weight" when the
    task weights examples.
    """
    task = task if task is not None else CrossEntropyTask(label_smoothing=label_smoothing)
    n = x.shape[0]
    state = state if state is not None else EpochState.start(n, generator=generator, device=device)
    num_batches = math.ceil(n / batch_size)
    check_on_host = device.type == "cpu"  # CPU ops are synchronous: reading the loss costs nothing
    lr = optimizer.param_groups[0]["lr"]
    first_batch = state.batch
    perm = state.perm.to(device)  # once per call, not per batch
    row = weight_log.row(epoch) if weight_log is not None else None  # None: this epoch is not recorded
    weighted = False
    model.train()
    while state.batch < num_batches:
        if should_stop is not None and distributed.any_rank(should_stop()):  # torchrun: all ranks stop together
            break
        # ---- batch: the next slice of this epoch's permutation (torchrun: this rank's share of it)
        global_step = step + state.batch
        idx = distributed.shard(perm[state.batch * batch_size : (state.batch + 1) * batch_size])  # (B,) positions
        xb, yb = x[idx], y[idx]  # (B, C, H, W) uint8, (B,) int64
        if augment is not None:
            xb = augment(xb)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)

        # ---- forward: the task's one pass → {"loss": (), "logits": (B, K), named (B,) parts}
        with _autocast(device, autocast_dtype):
            out = task(model, xb, yb, step=global_step)
        loss_d = out["loss"].detach()
        if check_on_host:
            if not torch.isfinite(loss_d):
                raise NonFiniteLossError(epoch, global_step)
        else:  # remember the first bad step on the device; checked once per epoch (no sync per step)
            bad = (~torch.isfinite(loss_d)) & (state.first_bad < 0)
            state.first_bad = torch.where(bad, global_step, state.first_bad)

        # ---- backward / step
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        lr = optimizer.param_groups[0]["lr"]  # the lr this step used
        scheduler.step()  # per-iteration schedule

        # ---- bookkeeping, still on the device
        logits = out["logits"].detach()
        per_example = out.get("per_example")  # (B,) or None (ce: the mean is enough)
        if row is not None:
            weight_log.write(row, idx, loss=per_example if per_example is not None else task.per_example(logits, yb),
                             loss_diff=out.get("loss_diff"), weight=out.get("mentor_weight", out.get("weight")))
        state.loss_sum += per_example.sum() if per_example is not None else loss_d.float() * yb.shape[0]
        state.correct += (logits.argmax(dim=1) == yb).sum()
        if "weight" in out:
            weighted = True
            state.weight_sum += out["weight"].sum()
        state.seen += yb.shape[0]
        state.batch += 1

        # ---- mentor update (spade, at its cadence; nothing for ce)
        task.after_step(getattr(model, "module", model), step=global_step, lr=lr,
                        next_lr=optimizer.param_groups[0]["lr"])
        if on_step is not None:
            on_step()

    if not check_on_host and (bad_step := int(state.first_bad)) >= 0:
        raise NonFiniteLossError(epoch, bad_step)
    totals = distributed.all_sum(torch.stack([state.loss_sum.float(), state.correct.float(),
                                              torch.as_tensor(float(state.seen), device=state.loss_sum.device),
                                              state.weight_sum.float()]))  # torchrun: over all ranks
    seen = max(float(totals[2]), 1.0)
    stats = {
        "train_loss": float(totals[0]) / seen,
        "train_acc_noisy": float(totals[1]) / seen,
        "lr": lr,
        "steps": state.batch - first_batch,
        "complete": state.batch == num_batches,
        "state": state,
    }
    if weighted or task.method != "ce":
        stats["mean_weight"] = float(totals[3]) / seen
    return stats


# ----------------------------------------------------------------------------- checkpoints


def data_fingerprint(data: TrainView) -> dict[str, Any]:
    """Shapes and short hashes of what training reads, so a checkpoint from other data is refused."""
    out: dict[str, Any] = {"dataset": data.dataset, "classes": list(data.classes)}
    for name in ("x_train", "y_train", "x_clean", "y_clean", "x_test", "y_test"):
        t = getattr(data, name).detach().cpu().contiguous()
        h = hashlib.blake2b(t.numpy().tobytes() if t.numel() else b"", digest_size=8)
        out[name] = f"{tuple(t.shape)}:{h.hexdigest()}"
    return out


def module_fingerprint(module: nn.Module) -> str:
    """Short hash of a module's state_dict (names, shapes, values): which mentor a run started from."""
    h = hashlib.blake2b(digest_size=8)
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def checkpoint_config(
    cfg: StudentConfig, *, seed: int, data: TrainView | None = None, mentor: nn.Module | None = None,
    mentor_cfg: MentorConfig | None = None,
) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed: the student params, the seed and the data; for
    ``spade`` / ``mentormix`` also the mentor params and the mentor's starting weights (another mentor.pt is
    refused)."""
    out: dict[str, Any] = {"student": dataclasses.asdict(cfg), "seed": seed}
    if data is not None:
        out["data"] = data_fingerprint(data)
    if cfg.method in MENTOR_METHODS:
        out["mentor"] = dataclasses.asdict(mentor_cfg) if mentor_cfg is not None else {}
        if mentor is not None:
            out["mentor"]["weights"] = module_fingerprint(mentor)
    return out


def config_diff(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """Human-readable differences between two nested config dicts, e.g. ``student.lr: 0.1 → 0.05``."""
    if isinstance(saved, Mapping) and isinstance(current, Mapping):
        diffs = []
        for key in sorted(set(saved) | set(current), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in saved:
                diffs.append(f"{name}: not in checkpoint")
            elif key not in current:
                diffs.append(f"{name}: only in checkpoint")
            else:
                diffs += config_diff(saved[key], current[key], name)
        return diffs
    return [] if saved == current else [f"{prefix}: {saved!r} in checkpoint, {current!r} now"]


def rng_states(generator: torch.Generator) -> dict[str, Any]:
    name, key, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [name, key.tolist(), int(pos), int(has_gauss), float(cached)],  # plain types: weights_only load
        "python": random.getstate(),
        "batch": generator.get_state(),
    }


def set_rng_states(states: Mapping[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    name, key, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), pos, has_gauss, cached))
    python = states["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    generator.set_state(states["batch"])


def load_checkpoint(path: str | Path | None, expected_config: Mapping[str, Any], *,
                    log: Callable[[str], None]) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it can be resumed, else None with the reason logged.

    Not resumed (the reason logged, training starts fresh): a different config (each differing key is
    named) or an already finished run (kept for inspection). Refused with an error (``ValueError``), so
    nothing is overwritten: an unreadable (corrupt or foreign) file, which atomic writes never produce.
    """
    from labelnoise.io import read_torch

    if path is None or not Path(path).is_file():
        return None
    ckpt = read_torch(path, remedy="it is a resume checkpoint: delete it to train from scratch")
    diffs = config_diff(ckpt.get("config"), dict(expected_config))
    if diffs:
        shown = "; ".join(diffs[:5]) + (f"; and {len(diffs) - 5} more" if len(diffs) > 5 else "")
        log(f"checkpoint {path} not resumed: config differs ({shown}); starting fresh")
        return None
    if ckpt.get("finished"):
        log(f"checkpoint {path} is from a finished run; starting fresh")
        return None
    return ckpt


# ----------------------------------------------------------------------------- the loop


@dataclass
class FitResult:
    """What :func:`fit` returns. ``model`` holds the final (last-epoch) weights, in eval mode."""

    model: nn.Module
    history: list[dict[str, float]]  # one row per epoch: epoch, train_loss, train_acc_noisy, clean_acc, test_acc, lr
    best_state: dict[str, Tensor]  # state_dict (CPU) of the epoch with the best clean-subset accuracy
    best_epoch: int  # 1-based
    best_clean_acc: float
    resumed_epochs: float = 0.0  # epochs restored from a checkpoint (0 = fresh; fractional mid-epoch)
    weights: dict[str, np.ndarray] = field(default_factory=dict)  # WeightLog.arrays(): epochs, loss, loss_diff, weight
    extra: dict[str, Any] = field(default_factory=dict)  # spade: "mentor_updates" (one dict per refit)


@contextmanager
def _sigint_flag(log: Callable[[str], None]) -> Iterator[Callable[[], bool]]:
    """First Ctrl-C sets a flag the loop polls between steps (then a checkpoint is saved);
    a second one raises KeyboardInterrupt at once. Only the main thread can own signal handlers. An ignored
    SIGINT (a job started in the background by a non-interactive shell, ``nohup``) stays ignored."""
    flag = {"set": False}
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        yield lambda: False
        return

    def handler(signum: int, frame: Any) -> None:
        if flag["set"]:
            raise KeyboardInterrupt
        flag["set"] = True
        log("interrupt: finishing the current step and saving a checkpoint (Ctrl-C again to abort now)")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: flag["set"]
    finally:
        signal.signal(signal.SIGINT, previous)


def _interrupted(where: str, checkpoint_path: str | Path | None, log: Callable[[str], None]) -> None:
    saved = (f"checkpoint saved to {checkpoint_path}; run the same command again to resume" if checkpoint_path
             else "no checkpoint path, nothing saved")
    message = f"interrupted at {where}: {saved}"
    log(message)
    raise TrainingInterrupted(message)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def fit(
    model: nn.Module,
    data: TrainView,
    *,
    cfg: StudentConfig,
    seed: int,
    device: torch.device | str = "cpu",
    checkpoint_path: str | Path | None = None,
    progress: bool | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    log: Callable[[str], None] = _stderr,
    mentor: nn.Module | None = None,
    mentor_cfg: MentorConfig | None = None,
) -> FitResult:
    """Train ``model`` on ``data.y_train`` (noisy labels) for ``cfg.epochs`` epochs with ``cfg.method``:
    ``ce`` (mean cross-entropy), ``spade`` (examples weighted by ``mentor``, see :class:`SpadeTask`;
    ``mentor_cfg`` gives the moving percentile and the refit settings) or ``mentormix`` (the mentor's weights
    steer mixup, see :class:`MentorMixTask`). The mentor is changed in place
    when ``student.mentor_update`` refits it.

    ``data`` is a TrainView: it carries the noisy train labels, the trusted clean subset and the test
    split, never the true train labels. Model selection uses clean-subset accuracy only; test accuracy
    is recorded for monitoring. With ``checkpoint_path``, a checkpoint is written after every epoch
    (and on Ctrl-C, mid-epoch) and an unfinished one with the same config is resumed, ending with the
    same numbers as an uninterrupted run. ``on_epoch(row)`` is called for every epoch of the history,
    restored ones included (so a tracker sees the whole curve). ``progress``: rich bar per epoch
    (None = only when stderr is a terminal). Per-example losses and weights of the epochs chosen by
    ``cfg.weights_at`` come back in ``FitResult.weights`` (and are part of the checkpoint).
    """
    device = torch.device(device)
    amp_dtype = resolve_precision(cfg.precision, device)
    channels_last = resolve_channels_last(cfg.channels_last, device)
    augment_name = resolve_augment(cfg.augment, data.dataset)
    generator = torch.Generator().manual_seed(seed)  # batch order and augmentation; checkpointed
    augment = (lambda xb: crop_flip(xb, padding=cfg.crop_padding, generator=generator)) if augment_name == "crop_flip" \
        else None

    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    trained = distributed.wrap(model, device)  # torchrun: DDP around it (gradients averaged over the ranks)
    main = distributed.is_main()  # only rank 0 writes the checkpoint and the log
    log = distributed.main_only(log)
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)  # whole split on the device, uint8
    n = x_train.shape[0]
    if n == 0:
        raise ValueError("no training images")
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch=steps_per_epoch)
    evaluate = dict(batch_size=cfg.eval_batch_size, device=device, autocast_dtype=amp_dtype,
                    channels_last=channels_last)

    # The per-mini-batch task (ce or spade) and the per-example log of the chosen epochs.
    config = checkpoint_config(cfg, seed=seed, data=data, mentor=mentor, mentor_cfg=mentor_cfg)  # before any refit
    task = make_task(cfg, mentor=mentor, mentor_cfg=mentor_cfg, total_steps=total_steps,
                     steps_per_epoch=steps_per_epoch, device=device, seed=seed, num_classes=len(data.classes),
                     data=data)
    weight_log = WeightLog.create(weight_epochs(cfg.weights_at, cfg.epochs), n, device=device)

    # ---- resume (only a checkpoint of this exact config and data, not yet finished)
    ckpt = load_checkpoint(checkpoint_path, config, log=log)
    history: list[dict[str, float]] = []
    best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    best_epoch, best_score = 0, -math.inf
    start_epoch, step, partial, resumed = 0, 0, None, 0.0
    last_saved: float | None = None  # epochs in the newest checkpoint this run can vouch for
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_states(ckpt["rng"], generator)
        task.load_state_dict(ckpt["task"])  # spade: l_pt, sampling generator, mentor, refit bookkeeping
        weight_log.load_state_dict(ckpt["weights"])
        history, best_state = list(ckpt["history"]), ckpt["best_state"]
        best_epoch, best_score = ckpt["best_epoch"], ckpt["best_score"]
        partial = EpochState.from_dict(ckpt["partial"], device) if ckpt["partial"] is not None else None
        # "step" counts all optimiser steps done; the loop counts steps before the current epoch.
        start_epoch, step = ckpt["epoch"], ckpt["step"] - (partial.batch if partial is not None else 0)
        resumed = last_saved = start_epoch + (partial.batch / steps_per_epoch if partial is not None else 0.0)
        log(f"resuming from {checkpoint_path}: epoch {start_epoch}" + (
            f" + {partial.batch}/{steps_per_epoch} batches" if partial is not None else ""))
        for row in history:
            if on_epoch is not None:
                on_epoch(row)

    def save(epoch_done: int, partial_state: EpochState | None, *, finished: bool = False) -> None:
        nonlocal last_saved
        if checkpoint_path is None or not main:
            return
        save_torch(checkpoint_path, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "epoch": epoch_done, "step": step + (partial_state.batch if partial_state is not None else 0),
            "config": config, "rng": rng_states(generator), "task": task.state_dict(),
            "weights": weight_log.state_dict(),
            "partial": partial_state.to_dict() if partial_state is not None else None,
            "history": history, "best_state": best_state, "best_epoch": best_epoch, "best_score": best_score,
            "finished": finished,
        })
        last_saved = epoch_done + (partial_state.batch / steps_per_epoch if partial_state is not None else 0.0)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    show = (sys.stderr.isatty() if progress is None else progress) and main
    bar = Progress(TextColumn("epoch {task.fields[epoch]}/{task.fields[total_epochs]}"), BarColumn(),
                   MofNCompleteColumn(), TimeRemainingColumn(), transient=True, disable=not show)
    with _sigint_flag(log) as interrupted, bar:
        bar_task = bar.add_task("train", total=steps_per_epoch, epoch=start_epoch + 1, total_epochs=cfg.epochs)
        for epoch in range(start_epoch, cfg.epochs):
            # ---- schedule: a fresh seeded order for the epoch (or the interrupted one); lr steps per batch
            state = partial if partial is not None else EpochState.start(n, generator=generator, device=device)
            partial = None
            bar.reset(bar_task, total=steps_per_epoch, completed=state.batch, epoch=epoch + 1, total_epochs=cfg.epochs)
            t0 = time.perf_counter()

            # ---- forward / backward over the epoch
            try:
                stats = train_one_epoch(
                    trained, x_train, y_train, optimizer=optimizer, scheduler=scheduler, batch_size=cfg.batch_size,
                    device=device, generator=generator, epoch=epoch + 1, step=step, state=state, task=task,
                    weight_log=weight_log, augment=augment, autocast_dtype=amp_dtype, channels_last=channels_last,
                    should_stop=interrupted, on_step=(lambda: bar.advance(bar_task)) if show else None,
                )
            except NonFiniteLossError as e:
                kept = (f"; last good checkpoint: {checkpoint_path} ({last_saved:g} epochs)" if last_saved is not None
                        else "; no checkpoint saved")
                raise NonFiniteLossError(e.epoch, e.step, f"{e}{kept}; lower student.lr or check the data") from None
            if not stats["complete"]:  # Ctrl-C between two steps: save where we are and leave
                save(epoch, state)
                _interrupted(f"epoch {epoch + 1}, batch {state.batch}/{steps_per_epoch}", checkpoint_path, log)
            step += steps_per_epoch
            if (row_index := weight_log.row(epoch + 1)) is not None:
                weight_log.merge(row_index)  # torchrun: each rank saw its share of the examples

            # ---- evaluate: clean subset (selection signal), test (monitoring only)
            clean = evaluate_accuracy(model, data.x_clean, data.y_clean, **evaluate)
            test = evaluate_accuracy(model, data.x_test, data.y_test, **evaluate)

            # ---- log
            row = {"epoch": epoch + 1, "train_loss": stats["train_loss"], "train_acc_noisy": stats["train_acc_noisy"],
                   "clean_acc": clean["acc"], "test_acc": test["acc"], "lr": stats["lr"]}
            if "mean_weight" in stats:  # spade: the fraction of the data the student effectively used, and l_pt
                row |= {"mean_weight": stats["mean_weight"], **task.summary()}
            history.append(row)
            # No clean subset: clean_acc is NaN, never "better", so the best model is the last one.
            score = clean["acc"] if not math.isnan(clean["acc"]) else -math.inf
            if score > best_score or best_epoch == 0 or (math.isinf(score) and score == best_score):
                best_score, best_epoch = score, epoch + 1
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            log(f"epoch {epoch + 1}/{cfg.epochs}  loss {row['train_loss']:.4f}  train_acc(noisy) "
                f"{row['train_acc_noisy']:.4f}  clean_acc {row['clean_acc']:.4f}  test_acc {row['test_acc']:.4f}  "
                f"lr {row['lr']:.4g}" + (f"  mean_weight {row['mean_weight']:.3f}  l_pt {row['l_pt']:.3f}"
                                          if "mean_weight" in row else "") + f"  {time.perf_counter() - t0:.1f}s")

            # ---- checkpoint (every epoch; atomic, so a crash keeps the previous one)
            save(epoch + 1, None, finished=epoch + 1 == cfg.epochs)
            if on_epoch is not None:
                on_epoch(row)

            # ---- stop (Ctrl-C during evaluation: the checkpoint above is complete)
            if interrupted() and epoch + 1 < cfg.epochs:
                _interrupted(f"the end of epoch {epoch + 1}", checkpoint_path, log)

    model.eval()
    extra = {"mentor_updates": [dict(r) for r in task.refits]} if isinstance(task, SpadeTask) else {}
    return FitResult(model=model, history=history, best_state=best_state, best_epoch=best_epoch,
                     best_clean_acc=best_score if math.isfinite(best_score) else math.nan, resumed_epochs=resumed,
                     weights=weight_log.arrays(), extra=extra)
