"""The training loop every network of the project goes through: :func:`fit` (epochs, evaluation, model selection,
checkpoints, resume, Ctrl-C) around :func:`train_one_epoch` (the steps of one epoch), both driven by a
:class:`~labelnoise.engine.task.Task` that owns the loss.

Read :func:`fit` top to bottom: per epoch it goes schedule → forward/backward → the task's epoch hook →
evaluate → log → checkpoint → stop. CPU fast path: the whole split is a uint8 tensor in memory; a batch is
``x[perm[i:i+B]]`` with a seeded permutation per epoch (no DataLoader, no float copy of the dataset); the
model's first layer turns uint8 into normalised floats. No host synchronisation inside the step loop except
the finite-loss check on CPU (where it is free).
"""

from __future__ import annotations

import dataclasses
import math
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
from torch import Tensor, nn

from labelnoise import distributed, runtime
from labelnoise.engine.augment import crop_flip, resolve_augment
from labelnoise.engine.checkpoint import data_fingerprint, load_checkpoint, rng_states, set_rng_states
from labelnoise.engine.optim import make_optimizer, make_scheduler
from labelnoise.engine.predict import autocast, evaluate_accuracy
from labelnoise.engine.records import WeightLog
from labelnoise.engine.task import Task
from labelnoise.io import save_torch, terminal_bar
from labelnoise.runtime import (
    STOP_SIGNALS,
    Stopped,
    begin_stop,
    resolve_channels_last,
    resolve_precision,
    stop_under_way,
)

if TYPE_CHECKING:
    from labelnoise.views import TrainView


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or inf; names the epoch (1-based) and the global step (0-based)."""

    def __init__(self, epoch: int, step: int, message: str | None = None) -> None:
        self.epoch, self.step = epoch, step
        super().__init__(message or f"non-finite loss at epoch {epoch}, step {step}")


class TrainingInterrupted(Stopped):
    """Ctrl-C or SIGTERM during :func:`fit`: a checkpoint was saved; running again resumes from it."""


def log_to_stderr(line: str) -> None:
    # one write, the newline with it: a second Ctrl-C between print's two writes left the line open, and the
    # stage's error line then began in its middle
    sys.stderr.write(f"{line}\n")
    sys.stderr.flush()


# ----------------------------------------------------------------------------- one epoch


@dataclass
class EpochState:
    """Where the current epoch stands. Saved in a mid-epoch checkpoint so a resume continues exactly.

    The accumulators live on the training device, so the step loop never waits for the host.
    """

    perm: Tensor  # (L,) int64, the order of the train images this epoch (CPU): L = N, or the recipe's epoch_size
    loss_sum: Tensor  # () float32, sum of per-image losses so far
    correct: Tensor  # () int64, predictions equal to the target label so far
    first_bad: Tensor  # () int64, global step of the first non-finite loss, -1 if none (CUDA check)
    batch: int = 0  # batches done
    seen: int = 0  # images done
    weight_sum: Tensor | None = None  # () float32, sum of the example weights so far (weighting tasks)
    part_names: list[str] = field(default_factory=list)  # the task's named scalar parts of the loss
    part_sums: Tensor | None = None  # (P,) float32, their batch-size-weighted sums so far

    @classmethod
    def start(cls, n: int, *, generator: torch.Generator, device: torch.device, length: int = 0) -> EpochState:
        """A fresh epoch over ``n`` images: one seeded permutation, or as many as reach ``length`` (cut to it)."""
        distributed.same_generator(generator)  # torchrun: one batch order on every rank
        orders = [torch.randperm(n, generator=generator) for _ in range(max(1, math.ceil(length / n)))]
        return cls(
            perm=(orders[0] if len(orders) == 1 else torch.cat(orders)[:length]),
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


RECORDED = ("per_example", "loss_diff", "weight", "mentor_weight", "target")  # (B,) parts, not loss terms


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
    task: Task | None = None,
    records: WeightLog | None = None,
    augment: Callable[[Tensor], Tensor] | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """One pass of training over x: uint8 (N, C, H, W), y: int64 (N,) labels (both on ``device``).

    ``task`` owns the forward pass and the loss of a mini-batch (default: plain cross-entropy). Batches are
    ``x[perm[i*B:(i+1)*B]]`` for a permutation drawn from ``generator`` (or continued from ``state`` when
    resuming mid-epoch). ``epoch`` (1-based) and ``step`` (global step before this epoch) label errors, drive
    the task's schedule, and pick the ``records`` row (per-example loss and weight, kept in chosen epochs).
    ``should_stop()`` is polled between steps (Ctrl-C): the epoch then ends early with ``complete = False``
    and ``state`` tells where. Raises NonFiniteLossError on NaN/inf.

    Returns {"train_loss" (mean per-example loss), "train_acc_noisy" (agreement with the task's target labels,
    by default ``y``), "lr" (of the last step), "steps" (run in this call), "complete", "state"}, the epoch
    means of the task's named scalar parts, and "mean_weight" when the task weights examples.
    """
    task = task if task is not None else Task()
    n = x.shape[0]
    state = state if state is not None else EpochState.start(n, generator=generator, device=device)
    num_batches = math.ceil(state.perm.shape[0] / batch_size)
    check_on_host = device.type == "cpu"  # CPU ops are synchronous: reading the loss costs nothing
    lr = optimizer.param_groups[0]["lr"]
    first_batch = state.batch
    perm = state.perm.to(device)  # once per call, not per batch
    row = records.row(epoch) if records is not None else None  # None: this epoch is not recorded
    weighted = task.weighted
    model.train()
    while state.batch < num_batches:
        if should_stop is not None and distributed.any_rank(bool(should_stop())):  # torchrun: all ranks stop together
            break
        # ---- batch: the next slice of this epoch's permutation (torchrun: this rank's share of it)
        global_step = step + state.batch
        idx = distributed.shard(perm[state.batch * batch_size : (state.batch + 1) * batch_size])  # (B,) positions
        xb, yb = x[idx], y[idx]  # (B, C, H, W) uint8, (B,) int64
        if augment is not None:
            xb = augment(xb)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)

        # ---- forward: the task's one pass → {"loss": (), "logits": (B, K), named parts}
        with autocast(device, autocast_dtype):
            out = task(model, xb, yb, step=global_step, idx=idx)
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
        per_example = out.get("per_example")  # (B,) or None (the mean is enough)
        if row is not None:
            records.write(row, idx, loss=per_example if per_example is not None else task.per_example(logits, yb),
                          loss_diff=out.get("loss_diff"), weight=out.get("mentor_weight", out.get("weight")))
        state.loss_sum += per_example.sum() if per_example is not None else loss_d.float() * yb.shape[0]
        state.correct += (logits.argmax(dim=1) == out.get("target", yb)).sum()
        parts = {k: v.detach() for k, v in out.items() if k not in ("loss", "logits", *RECORDED) and v.dim() == 0}
        if parts:
            if state.part_sums is None:
                state.part_names, state.part_sums = list(parts), torch.zeros(len(parts), device=loss_d.device)
            state.part_sums += torch.stack([parts[k].float() for k in state.part_names]) * yb.shape[0]
        if "weight" in out:
            weighted = True
            state.weight_sum += out["weight"].sum()
        state.seen += yb.shape[0]
        state.batch += 1

        # ---- the task between steps (SPADE: mentor refits at their cadence)
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
    if state.part_sums is not None:
        sums = distributed.all_sum(state.part_sums)
        stats["parts"] = {name: float(v) / seen for name, v in zip(state.part_names, sums.tolist(), strict=True)}
    if weighted:
        stats["mean_weight"] = float(totals[3]) / seen
    return stats


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
    extra: dict[str, Any] = field(default_factory=dict)  # the task's own results (spade: "mentor_updates")
    seconds: float = 0.0  # training and evaluation time of all epochs (restored ones included)
    steps: int = 0  # optimiser steps of the whole fit: epochs x steps per epoch (train.epoch_size included)


@contextmanager
def _stop_flag(log: Callable[[str], None]) -> Iterator[Callable[[], int]]:
    """The first Ctrl-C or SIGTERM sets a flag (the signal's number) the loop polls between steps and at the end of
    every epoch, the last included (then a checkpoint is saved and :class:`TrainingInterrupted` raised); a second
    one raises :class:`Stopped` at once; once a stop is under way (:func:`~labelnoise.runtime.begin_stop`) the
    rest are ignored. Only the main thread can own signal handlers. An ignored signal (SIGINT of a job started
    in the background by a non-interactive shell, ``nohup``) stays ignored."""
    flag = {"signum": 0}
    if threading.current_thread() is not threading.main_thread():
        yield lambda: 0
        return

    def handler(signum: int, frame: Any) -> None:
        if stop_under_way():
            return
        if flag["signum"]:
            begin_stop()
            raise Stopped(f"{signal.Signals(signum).name} again: stopped at once", signum)
        flag["signum"] = signum
        again = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        log(f"{signal.Signals(signum).name}: finishing the current step ({again} again to abort now)")

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS if signal.getsignal(sig) != signal.SIG_IGN}
    try:
        yield lambda: flag["signum"]
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _interrupted(where: str, checkpoint_path: str | Path | None, log: Callable[[str], None], signum: int) -> None:
    """Stop the fit: the exception's message is what the stage's one line says (``log``: unused, the caller's)."""
    saved = (f"checkpoint saved to {checkpoint_path}, the same command resumes from it" if checkpoint_path
             else "nothing saved, the same command starts it again")
    begin_stop()
    raise TrainingInterrupted(f"at {where}: {saved}", signum)


def _log_line(name: str, epochs: int, row: Mapping[str, float], seconds: float) -> str:
    """``name e/E  loss …  train_acc …  clean_acc …  test_acc …  lr …`` then the row's other fields."""
    shown = {"train_loss": "loss", "train_acc_noisy": "train_acc", "clean_acc": "clean_acc", "test_acc": "test_acc"}
    text = f"{name} {int(row['epoch'])}/{epochs}" + "".join(f"  {label} {row[k]:.4f}" for k, label in shown.items())
    text += f"  lr {row['lr']:.4g}"
    text += "".join(f"  {k} {v:.4g}" for k, v in row.items() if k not in (*shown, "epoch", "lr"))
    return text + f"  {seconds:.1f}s"


def fit(
    model: nn.Module,
    data: TrainView,
    task: Task | None = None,
    *,
    recipe: Any,
    seed: int,
    device: torch.device | str = "cpu",
    config: Mapping[str, Any] | None = None,
    checkpoint_path: str | Path | None = None,
    generator: torch.Generator | None = None,
    record_epochs: Sequence[int] = (),
    progress: bool | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    log: Callable[[str], None] = log_to_stderr,
    name: str = "epoch",
    purpose: str = "",
    remedy: str = "lower the learning rate or check the data",
) -> FitResult:
    """Train ``model`` on ``data.x_train`` with the labels ``data.y_train`` for ``recipe.epochs`` epochs, the loss
    given by ``task`` (default: plain cross-entropy).

    ``recipe``: the training recipe (optimiser, schedule, batch sizes, augmentation, precision, memory format;
    see :mod:`labelnoise.engine.optim`). ``seed`` seeds the batch order and augmentation unless ``generator`` is
    given (a caller that draws from the same generator between epochs, in ``task.end_epoch``).

    ``data`` is a TrainView: it carries the noisy train labels, the trusted clean subset and the test split, never
    the true train labels. Model selection uses clean-subset accuracy only (the best epoch; ties keep the first;
    without a clean subset the last); test accuracy is recorded for monitoring. With ``checkpoint_path`` a
    checkpoint is written after every epoch (and on Ctrl-C, mid-epoch); an unfinished one whose ``config`` (plus
    the data's fingerprint) matches is resumed, ending with the same numbers as an uninterrupted run; a finished
    one is the result (nothing is trained: a stage that failed after training redoes only what failed).
    ``on_epoch(row)`` is called for every epoch of the history, restored ones included. ``progress``: rich bar per
    epoch (None = only when stderr is a terminal). Per-example losses and weights of ``record_epochs`` come back
    in ``FitResult.weights``. ``name`` starts each epoch's log line; ``purpose`` says what the network is for in the
    ledger of trained networks (:func:`labelnoise.runtime.ledger`; default ``name``); ``remedy`` ends a
    non-finite-loss error.
    """
    device = torch.device(device)
    amp_dtype = resolve_precision(recipe.precision, device)
    channels_last = resolve_channels_last(recipe.channels_last, device)
    generator = generator if generator is not None else torch.Generator().manual_seed(seed)  # checkpointed
    augment = ((lambda xb: crop_flip(xb, padding=recipe.crop_padding, generator=generator))
               if resolve_augment(recipe.augment, data.dataset) == "crop_flip" else None)
    task = task if task is not None else Task()

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
    steps_per_epoch = recipe.steps_per_epoch(n)
    optimizer = make_optimizer(model, recipe)
    scheduler = make_scheduler(optimizer, recipe, steps_per_epoch=steps_per_epoch)
    evaluate = dict(batch_size=recipe.eval_batch_size, device=device, autocast_dtype=amp_dtype,
                    channels_last=channels_last)
    records = WeightLog.create(record_epochs, n, device=device)
    config = {**(config or {}), "data": data_fingerprint(data)}

    # ---- resume (only a checkpoint of this exact config and data; a finished one is the result)
    ckpt = load_checkpoint(checkpoint_path, config, log=log)
    history: list[dict[str, float]] = []
    seconds: list[float] = []
    best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    best_epoch, best_score = 0, -math.inf
    start_epoch, step, partial, resumed = 0, 0, None, 0.0
    last_saved: float | None = None  # epochs in the newest checkpoint this run can vouch for
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_states(ckpt["rng"], generator)
        task.load_state_dict(ckpt["task"])
        records.load_state_dict(ckpt["records"])
        history, seconds, best_state = list(ckpt["history"]), list(ckpt["seconds"]), ckpt["best_state"]
        best_epoch, best_score = ckpt["best_epoch"], ckpt["best_score"]
        partial = EpochState.from_dict(ckpt["partial"], device) if ckpt["partial"] is not None else None
        # "step" counts all optimiser steps done; the loop counts steps before the current epoch.
        start_epoch, step = ckpt["epoch"], ckpt["step"] - (partial.batch if partial is not None else 0)
        resumed = last_saved = start_epoch + (partial.batch / steps_per_epoch if partial is not None else 0.0)
        log(f"{'reusing the finished run in' if ckpt['finished'] else 'resuming from'} {checkpoint_path}: "
            f"epoch {start_epoch}" + (f" + {partial.batch}/{steps_per_epoch} batches" if partial is not None else ""))
        for row in history:
            if on_epoch is not None:
                on_epoch(row)

    def save(epoch_done: int, partial_state: EpochState | None, *, done: bool = False) -> None:
        nonlocal last_saved
        if checkpoint_path is None or not main:
            return
        save_torch(checkpoint_path, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "epoch": epoch_done, "step": step + (partial_state.batch if partial_state is not None else 0),
            "config": config, "rng": rng_states(generator), "task": task.state_dict(),
            "records": records.state_dict(),
            "partial": partial_state.to_dict() if partial_state is not None else None,
            "history": history, "seconds": seconds, "best_state": best_state, "best_epoch": best_epoch,
            "best_score": best_score, "finished": done,
        })
        last_saved = epoch_done + (partial_state.batch / steps_per_epoch if partial_state is not None else 0.0)

    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    show = (sys.stderr.isatty() if progress is None else progress) and main
    bar = terminal_bar(TextColumn(f"{name} {{task.fields[epoch]}}/{{task.fields[total_epochs]}}"), BarColumn(),
                       MofNCompleteColumn(), TimeRemainingColumn(), show=show)
    with _stop_flag(log) as interrupted, bar:
        bar_task = bar.add_task("train", total=steps_per_epoch, epoch=start_epoch + 1, total_epochs=recipe.epochs)
        for epoch in range(start_epoch, recipe.epochs):
            # ---- schedule: a fresh seeded order for the epoch (or the interrupted one); lr steps per batch
            state = partial if partial is not None else EpochState.start(n, generator=generator, device=device,
                                                                           length=recipe.epoch_size)
            partial = None
            bar.reset(bar_task, total=steps_per_epoch, completed=state.batch, epoch=epoch + 1,
                      total_epochs=recipe.epochs)
            t0 = time.perf_counter()

            # ---- forward / backward over the epoch
            try:
                stats = train_one_epoch(
                    trained, x_train, y_train, optimizer=optimizer, scheduler=scheduler, batch_size=recipe.batch_size,
                    device=device, generator=generator, epoch=epoch + 1, step=step, state=state, task=task,
                    records=records, augment=augment, autocast_dtype=amp_dtype, channels_last=channels_last,
                    should_stop=interrupted, on_step=(lambda: bar.advance(bar_task)) if show else None,
                )
            except NonFiniteLossError as e:
                kept = (f"; last good checkpoint: {checkpoint_path} ({last_saved:g} epochs)" if last_saved is not None
                        else "; no checkpoint saved")
                raise NonFiniteLossError(e.epoch, e.step, f"{e}{kept}; {remedy}") from None
            if not stats["complete"]:  # Ctrl-C between two steps: save where we are and leave
                save(epoch, state)
                _interrupted(f"epoch {epoch + 1}, batch {state.batch}/{steps_per_epoch}", checkpoint_path, log,
                             interrupted())
            step += steps_per_epoch
            if (row_index := records.row(epoch + 1)) is not None:
                records.merge(row_index)  # torchrun: each rank saw its share of the examples

            # ---- the task's epoch hook (a label buffer, a refit on the epoch's losses, ...)
            extra = task.end_epoch(model, epoch=epoch + 1)

            # ---- evaluate: clean subset (selection signal), test (monitoring only)
            clean = evaluate_accuracy(model, data.x_clean, data.y_clean, **evaluate)
            test = evaluate_accuracy(model, data.x_test, data.y_test, **evaluate)

            # ---- log
            row = {"epoch": epoch + 1, "train_loss": stats["train_loss"], "train_acc_noisy": stats["train_acc_noisy"],
                   **stats.get("parts", {}), **extra, "clean_acc": clean["acc"], "test_acc": test["acc"],
                   "lr": stats["lr"]}
            if "mean_weight" in stats:  # the fraction of the data the student effectively used, and l_pt
                row |= {"mean_weight": stats["mean_weight"], **task.summary()}
            history.append(row)
            # No clean subset: clean_acc is NaN, never "better", so the best model is the last one.
            score = clean["acc"] if not math.isnan(clean["acc"]) else -math.inf
            if score > best_score or best_epoch == 0 or (math.isinf(score) and score == best_score):
                best_score, best_epoch = score, epoch + 1
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            seconds.append(time.perf_counter() - t0)
            log(_log_line(name, recipe.epochs, row, seconds[-1]))

            # ---- checkpoint (every epoch; atomic, so a crash keeps the previous one)
            save(epoch + 1, None, done=epoch + 1 == recipe.epochs)
            if on_epoch is not None:
                on_epoch(row)

            # ---- stop (Ctrl-C during evaluation: the checkpoint above is complete). torchrun: every rank asks, so
            # all stop together.
            if epoch + 1 < recipe.epochs and distributed.any_rank(bool(interrupted())):
                _interrupted(f"the end of epoch {epoch + 1}", checkpoint_path, log, interrupted() or signal.SIGTERM)

        # ---- a stop asked during the last epoch (or while a finished run was read) is a stop too: the checkpoint
        # is the finished run, which the rerun takes as its result
        if distributed.any_rank(bool(interrupted())):
            _interrupted("the end of training", checkpoint_path, log, interrupted() or signal.SIGTERM)

    model.eval()
    trained = len(seconds) - len(ckpt["seconds"] if ckpt is not None else [])  # epochs this call trained (or ended)
    if main and trained > 0:
        per_epoch = recipe.epoch_size or n
        runtime.ledger({"network": purpose or name, "images_per_epoch": per_epoch, "epochs": trained,
                        "images": per_epoch * trained, "seconds": round(sum(seconds[-trained:]), 3),
                        "evaluated_per_epoch": data.x_clean.shape[0] + data.x_test.shape[0],
                        "precision": runtime.precision_name(amp_dtype), "device": str(device),
                        "threads": torch.get_num_threads()})
    return FitResult(model=model, history=history, best_state=best_state, best_epoch=best_epoch,
                     best_clean_acc=best_score if math.isfinite(best_score) else math.nan, resumed_epochs=resumed,
                     weights=records.arrays(), extra=task.result(), seconds=float(sum(seconds)),
                     steps=recipe.epochs * steps_per_epoch)
