"""Student training with plain cross-entropy on the noisy labels (method ``ce``), the baseline.

Read :func:`fit` top to bottom: per epoch it goes schedule → forward/backward → evaluate → log →
checkpoint → stop. The pieces it uses are small functions above it:

- LR schedules (:func:`lr_factor`), stepped once per optimiser step;
- CIFAR augmentation (:func:`crop_flip`): random crop + horizontal flip on a uint8 batch, seeded;
- :func:`train_one_epoch` (timm style, returns a dict) and :func:`evaluate_accuracy` / :func:`validate`;
- checkpoints: a dict with everything needed to resume bit-for-bit (weights, optimiser, scheduler,
  RNG states, the position inside the epoch, history, best weights).

CPU fast path: the whole split is a uint8 tensor in memory; a batch is ``x[perm[i:i+B]]`` with a
seeded permutation per epoch (no DataLoader, no float copy of the dataset); the model's first layer
turns uint8 into normalised floats. bf16 autocast and channels_last are used where measured faster.
No host synchronisation inside the step loop except the finite-loss check on CPU (where it is free).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as TF

from labelnoise.io import save_torch

if TYPE_CHECKING:
    from labelnoise.config import StudentConfig
    from labelnoise.datasets import TrainView

CIFAR = ("cifar10", "cifar100")


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
    padded = TF.pad(x, [padding, padding, padding, padding], fill=0)  # (B, C, H+2p, W+2p)
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
    return torch.where(flip[:, None, None, None], TF.horizontal_flip(out), out)


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

    @classmethod
    def start(cls, n: int, *, generator: torch.Generator, device: torch.device) -> EpochState:
        return cls(
            perm=torch.randperm(n, generator=generator),
            loss_sum=torch.zeros((), device=device),
            correct=torch.zeros((), dtype=torch.int64, device=device),
            first_bad=torch.full((), -1, dtype=torch.int64, device=device),
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
    augment: Callable[[Tensor], Tensor] | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    label_smoothing: float = 0.0,
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """One pass of cross-entropy training over x: uint8 (N, C, H, W), y: int64 (N,) (both on ``device``).

    Batches are ``x[perm[i*B:(i+1)*B]]`` for a permutation drawn from ``generator`` (or continued from
    ``state`` when resuming mid-epoch). ``epoch`` (1-based) and ``step`` (global step before this
    epoch) only label errors. ``should_stop()`` is polled between steps (Ctrl-C): the epoch then ends
    early with ``complete = False`` and ``state`` tells where. Raises NonFiniteLossError on NaN/inf.

    Returns {"train_loss", "train_acc_noisy", "lr" (of the last step), "steps" (run in this call),
    "complete", "state"}.
    """
    n = x.shape[0]
    state = state if state is not None else EpochState.start(n, generator=generator, device=device)
    num_batches = math.ceil(n / batch_size)
    check_on_host = device.type == "cpu"  # CPU ops are synchronous: reading the loss costs nothing
    lr = optimizer.param_groups[0]["lr"]
    first_batch = state.batch
    perm = state.perm.to(device)  # once per call, not per batch
    model.train()
    while state.batch < num_batches:
        if should_stop is not None and should_stop():
            break
        global_step = step + state.batch
        idx = perm[state.batch * batch_size : (state.batch + 1) * batch_size]
        xb, yb = x[idx], y[idx]  # (B, C, H, W) uint8, (B,) int64
        if augment is not None:
            xb = augment(xb)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)

        # forward / backward
        with _autocast(device, autocast_dtype):
            logits = model(xb)  # (B, K)
            loss = F.cross_entropy(logits, yb, label_smoothing=label_smoothing)
        loss_d = loss.detach()
        if check_on_host:
            if not torch.isfinite(loss_d):
                raise NonFiniteLossError(epoch, global_step)
        else:  # remember the first bad step on the device; checked once per epoch (no sync per step)
            bad = (~torch.isfinite(loss_d)) & (state.first_bad < 0)
            state.first_bad = torch.where(bad, global_step, state.first_bad)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr = optimizer.param_groups[0]["lr"]  # the lr this step used
        scheduler.step()  # per-iteration schedule

        # bookkeeping, still on the device
        state.loss_sum += loss_d.float() * yb.shape[0]
        state.correct += (logits.detach().argmax(dim=1) == yb).sum()
        state.seen += yb.shape[0]
        state.batch += 1
        if on_step is not None:
            on_step()

    if not check_on_host and (bad_step := int(state.first_bad)) >= 0:
        raise NonFiniteLossError(epoch, bad_step)
    seen = max(state.seen, 1)
    return {
        "train_loss": state.loss_sum.item() / seen,
        "train_acc_noisy": state.correct.item() / seen,
        "lr": lr,
        "steps": state.batch - first_batch,
        "complete": state.batch == num_batches,
        "state": state,
    }


# ----------------------------------------------------------------------------- checkpoints


def data_fingerprint(data: TrainView) -> dict[str, Any]:
    """Shapes and short hashes of what training reads, so a checkpoint from other data is refused."""
    out: dict[str, Any] = {"dataset": data.dataset, "classes": list(data.classes)}
    for name in ("x_train", "y_train", "x_clean", "y_clean", "x_test", "y_test"):
        t = getattr(data, name).detach().cpu().contiguous()
        h = hashlib.blake2b(t.numpy().tobytes() if t.numel() else b"", digest_size=8)
        out[name] = f"{tuple(t.shape)}:{h.hexdigest()}"
    return out


def checkpoint_config(cfg: StudentConfig, *, seed: int, data: TrainView | None = None) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed: the student params, the seed and the data."""
    out: dict[str, Any] = {"student": dataclasses.asdict(cfg), "seed": seed}
    if data is not None:
        out["data"] = data_fingerprint(data)
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


def _rng_states(generator: torch.Generator) -> dict[str, Any]:
    name, key, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [name, key.tolist(), int(pos), int(has_gauss), float(cached)],  # plain types: weights_only load
        "python": random.getstate(),
        "batch": generator.get_state(),
    }


def _set_rng_states(states: Mapping[str, Any], generator: torch.Generator) -> None:
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

    Refused: unreadable, a different config (each differing key is named), or already finished
    (a finished run is kept for inspection but a new run starts from scratch).
    """
    if path is None or not Path(path).is_file():
        return None
    try:
        ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign file: training from scratch is always safe
        log(f"checkpoint {path} not resumed: unreadable ({type(e).__name__}: {str(e).splitlines()[0]}); starting fresh")
        return None
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
    extra: dict[str, Any] = field(default_factory=dict)


@contextmanager
def _sigint_flag(log: Callable[[str], None]) -> Iterator[Callable[[], bool]]:
    """First Ctrl-C sets a flag the loop polls between steps (then a checkpoint is saved);
    a second one raises KeyboardInterrupt at once. Only the main thread can own signal handlers."""
    flag = {"set": False}
    if threading.current_thread() is not threading.main_thread():
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
) -> FitResult:
    """Train ``model`` with cross-entropy on ``data.y_train`` (noisy labels) for ``cfg.epochs`` epochs.

    ``data`` is a TrainView: it carries the noisy train labels, the trusted clean subset and the test
    split, never the true train labels. Model selection uses clean-subset accuracy only; test accuracy
    is recorded for monitoring. With ``checkpoint_path``, a checkpoint is written after every epoch
    (and on Ctrl-C, mid-epoch) and an unfinished one with the same config is resumed, ending with the
    same numbers as an uninterrupted run. ``on_epoch(row)`` is called for every epoch of the history,
    restored ones included (so a tracker sees the whole curve). ``progress``: rich bar per epoch
    (None = only when stderr is a terminal).
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
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)  # whole split on the device, uint8
    n = x_train.shape[0]
    if n == 0:
        raise ValueError("no training images")
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch=steps_per_epoch)
    evaluate = dict(batch_size=cfg.eval_batch_size, device=device, autocast_dtype=amp_dtype,
                    channels_last=channels_last)

    # ---- resume (only a checkpoint of this exact config and data, not yet finished)
    config = checkpoint_config(cfg, seed=seed, data=data)
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
        _set_rng_states(ckpt["rng"], generator)
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
        if checkpoint_path is None:
            return
        save_torch(checkpoint_path, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "epoch": epoch_done, "step": step + (partial_state.batch if partial_state is not None else 0),
            "config": config, "rng": _rng_states(generator),
            "partial": partial_state.to_dict() if partial_state is not None else None,
            "history": history, "best_state": best_state, "best_epoch": best_epoch, "best_score": best_score,
            "finished": finished,
        })
        last_saved = epoch_done + (partial_state.batch / steps_per_epoch if partial_state is not None else 0.0)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    show = sys.stderr.isatty() if progress is None else progress
    bar = Progress(TextColumn("epoch {task.fields[epoch]}/{task.fields[total_epochs]}"), BarColumn(),
                   MofNCompleteColumn(), TimeRemainingColumn(), transient=True, disable=not show)
    with _sigint_flag(log) as interrupted, bar:
        task = bar.add_task("train", total=steps_per_epoch, epoch=start_epoch + 1, total_epochs=cfg.epochs)
        for epoch in range(start_epoch, cfg.epochs):
            # ---- schedule: a fresh seeded order for the epoch (or the interrupted one); lr steps per batch
            state = partial if partial is not None else EpochState.start(n, generator=generator, device=device)
            partial = None
            bar.reset(task, total=steps_per_epoch, completed=state.batch, epoch=epoch + 1, total_epochs=cfg.epochs)
            t0 = time.perf_counter()

            # ---- forward / backward over the epoch
            try:
                stats = train_one_epoch(
                    model, x_train, y_train, optimizer=optimizer, scheduler=scheduler, batch_size=cfg.batch_size,
                    device=device, generator=generator, epoch=epoch + 1, step=step, state=state, augment=augment,
                    autocast_dtype=amp_dtype, channels_last=channels_last, label_smoothing=cfg.label_smoothing,
                    should_stop=interrupted, on_step=(lambda: bar.advance(task)) if show else None,
                )
            except NonFiniteLossError as e:
                kept = (f"; last good checkpoint: {checkpoint_path} ({last_saved:g} epochs)" if last_saved is not None
                        else "; no checkpoint saved")
                raise NonFiniteLossError(e.epoch, e.step, f"{e}{kept}; lower student.lr or check the data") from None
            if not stats["complete"]:  # Ctrl-C between two steps: save where we are and leave
                save(epoch, state)
                _interrupted(f"epoch {epoch + 1}, batch {state.batch}/{steps_per_epoch}", checkpoint_path, log)
            step += steps_per_epoch

            # ---- evaluate: clean subset (selection signal), test (monitoring only)
            clean = evaluate_accuracy(model, data.x_clean, data.y_clean, **evaluate)
            test = evaluate_accuracy(model, data.x_test, data.y_test, **evaluate)

            # ---- log
            row = {"epoch": epoch + 1, "train_loss": stats["train_loss"], "train_acc_noisy": stats["train_acc_noisy"],
                   "clean_acc": clean["acc"], "test_acc": test["acc"], "lr": stats["lr"]}
            history.append(row)
            # No clean subset: clean_acc is NaN, never "better", so the best model is the last one.
            score = clean["acc"] if not math.isnan(clean["acc"]) else -math.inf
            if score > best_score or best_epoch == 0 or (math.isinf(score) and score == best_score):
                best_score, best_epoch = score, epoch + 1
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            log(f"epoch {epoch + 1}/{cfg.epochs}  loss {row['train_loss']:.4f}  train_acc(noisy) "
                f"{row['train_acc_noisy']:.4f}  clean_acc {row['clean_acc']:.4f}  test_acc {row['test_acc']:.4f}  "
                f"lr {row['lr']:.4g}  {time.perf_counter() - t0:.1f}s")

            # ---- checkpoint (every epoch; atomic, so a crash keeps the previous one)
            save(epoch + 1, None, finished=epoch + 1 == cfg.epochs)
            if on_epoch is not None:
                on_epoch(row)

            # ---- stop (Ctrl-C during evaluation: the checkpoint above is complete)
            if interrupted() and epoch + 1 < cfg.epochs:
                _interrupted(f"the end of epoch {epoch + 1}", checkpoint_path, log)

    model.eval()
    return FitResult(model=model, history=history, best_state=best_state, best_epoch=best_epoch,
                     best_clean_acc=best_score if math.isfinite(best_score) else math.nan, resumed_epochs=resumed)
