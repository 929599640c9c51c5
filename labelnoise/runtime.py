"""Seeds and random streams, threads, device and the numeric choices that follow from the device (precision,
memory format): set once per stage, resolved in one place."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn


def seed_everything(seed: int, *, deterministic: bool = True) -> torch.Generator:
    """Seed python, numpy and torch; return a CPU generator for explicit sampling."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        _deterministic_algorithms()
        # That also fills every new tensor's memory (NaN / max int) to catch reads of uninitialised memory: a
        # debugging aid, not needed for identical results, and a measurable cost per step (docs/gpu-and-speed.md).
        torch.utils.deterministic.fill_uninitialized_memory = False
        torch.backends.cudnn.benchmark = False
    return torch.Generator().manual_seed(seed)


def _deterministic_algorithms() -> None:
    """``torch.use_deterministic_algorithms(True, warn_only=True)`` without importing torch's compiler: the public
    function imports ``torch._inductor`` only to set its flag (about a second of every stage's start-up), and
    nothing here compiles. Where the compiler is already loaded its flag is set as the public function does."""
    if "torch._inductor.config" in sys.modules:
        sys.modules["torch._inductor.config"].deterministic = True
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None:  # another torch: the public way
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        setter(True, warn_only=True)


def set_threads(threads: int) -> int:
    """Set torch's intra-op thread count (0 = all cores, shared out among torchrun's processes on this
    machine); returns the count in use."""
    n = threads or max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    torch.set_num_threads(n)
    return n


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU. ``cuda`` without a GPU is an error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("base.device is 'cuda' but no CUDA device is available")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):  # torchrun: this process's GPU
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """``build()`` with the global torch RNG seeded by ``seed`` for the call, and left as it was after: a fresh
    network whose initial weights depend on ``seed`` only, not on what ran before."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


# ----------------------------------------------------------------------------- random streams
# Every random stream a run draws from besides the batch order has an id here, so that two uses never share one
# and a new use does not shift another's draws (np.random.SeedSequence([seed, id]) per stream). A plug-in may
# name a stream not listed: its id is then derived from the name (at or above 10,000, clear of these).
STREAMS: dict[str, int] = {
    "weighting": 1,  # SPADE / MentorMix: burn-in dropout, the sampling layer, mixup partners and ratios
    "folds": 41,  # cross-fitting (engine.folds): fold assignment, each fold's initial weights (41 + 1 + fold);
    #               cleanlab's final student's initial weights
    "mentor_refit": 1000,  # SPADE: mentor refit k draws from stream 1000 + k
    "joint": 2001,  # label correction, phase 1: batch order and augmentation
    "retrain": 2002,  # label correction, phase 2: batch order and augmentation
    "joint_init": 2003,  # label correction, phase 1 from scratch: initial weights
    "retrain_init": 2004,  # label correction, phase 2: initial weights
}


def stream_id(stream: int | str) -> int:
    """The numeric id of ``stream`` (a name of :data:`STREAMS`, another name, or an id)."""
    if isinstance(stream, int):
        return stream
    if stream in STREAMS:
        return STREAMS[stream]
    return 10_000 + int.from_bytes(hashlib.sha256(stream.encode()).digest()[:4], "big")


def derived_seed(seed: int, stream: int | str) -> int:
    """A 32-bit seed for the independent random stream ``stream`` of the run seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, stream_id(stream)]).generate_state(1)[0])


# ----------------------------------------------------------------------------- the ledger of trained networks
LEDGER_ENV = "LABELNOISE_LEDGER"  # a file: every fit appends a line (the benchmark's cost table); unset: nothing
_CURRENT_STAGE = {"name": ""}  # the stage this process runs (set by the CLI's stage runner)


def set_stage(name: str) -> None:
    """Name the stage this process runs, for the ledger."""
    _CURRENT_STAGE["name"] = name


def ledger(record: dict[str, Any]) -> None:
    """Append ``record`` (and the stage) as a JSON line to the file named by ``LABELNOISE_LEDGER``, if set: what
    each network of a run cost (the benchmark's cost table). Nothing otherwise."""
    path = os.environ.get(LEDGER_ENV)
    if not path:
        return
    import json

    with open(path, "a") as f:
        f.write(json.dumps({"stage": _CURRENT_STAGE["name"], **record}) + "\n")


# ----------------------------------------------------------------------------- numeric choices of the device
def precision_name(autocast_dtype: torch.dtype | None) -> str:
    """What :func:`resolve_precision` chose, as the params name it: ``bf16``, ``fp32`` (no autocast) or the dtype."""
    return "bf16" if autocast_dtype == torch.bfloat16 else "fp32" if autocast_dtype is None else str(autocast_dtype)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for a ``precision`` param (None = plain fp32).

    ``auto``: bf16 on CUDA (when supported); on CPU bf16 only when oneDNN has native bf16 (avx512_bf16 / AMX),
    where it is faster; fp32 elsewhere.
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
    """A ``channels_last`` param: ``auto`` → on for CUDA and CPU (oneDNN's NHWC convolutions are faster for the
    CNN on CPU too)."""
    if setting in ("on", "off"):
        return setting == "on"
    return device.type in ("cuda", "cpu")


class Stopped(KeyboardInterrupt):
    """A stop asked by a signal: Ctrl-C (SIGINT) or SIGTERM (``kill``, ``timeout``, schedulers, container stops).
    Handled like Ctrl-C everywhere (MLflow runs marked KILLED, no output half-written); the exit status is
    128 + ``signum``."""

    def __init__(self, message: str = "", signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = signum


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _StopState:
    """Whether a stage scope (:func:`stop_signals`) is open, and whether a stop is already being acted on."""

    scope = False
    under_way = False


def stop_under_way() -> bool:
    """True once a stop is being acted on inside a stage: every later SIGINT / SIGTERM is then ignored."""
    return _StopState.under_way


def begin_stop() -> None:
    """A stop is being acted on (a :class:`Stopped` is about to be raised): inside a stage, the signals that follow
    are ignored until the stage ends, so that the unwinding (the checkpoint, MLflow runs marked KILLED, the
    outputs put back) is not cut short by a second Ctrl-C. Outside a stage it changes nothing."""
    if _StopState.scope:
        _StopState.under_way = True


def _raise_stop(signum: int, frame: Any) -> None:
    if _StopState.under_way:
        return
    begin_stop()
    name = signal.Signals(signum).name
    raise Stopped(f"{name}: stopped", signum)


@contextmanager
def stop_signals() -> Iterator[None]:
    """A stage's signal dispositions. Inside: SIGINT and SIGTERM raise :class:`Stopped` at once (Python's default
    for SIGTERM would end the process on the spot, leaving no checkpoint and the MLflow runs RUNNING); the signals
    after the first are ignored until the block ends. The training loop sets its own handler for its duration
    (finish the step, save a checkpoint, then stop). An ignored signal (a job started in the background by a
    non-interactive shell, ``nohup``) stays ignored; only the main thread can own handlers. Afterwards the
    dispositions are as they were."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig, old in previous.items():
        if old != signal.SIG_IGN:
            signal.signal(sig, _raise_stop)
    _StopState.scope, _StopState.under_way = True, False
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        _StopState.scope, _StopState.under_way = False, False


def ignore_stop_signals() -> None:
    """SIGINT and SIGTERM ignored from now on: for a process that is ending after a stop (its exit handlers run
    unhurried, with no traceback from a second Ctrl-C)."""
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


def _child_after_fork() -> None:
    """A forked child (a library's worker pool) does not inherit this process's stop handlers: it gets the default
    dispositions, so that the pool's SIGTERM ends it. An ignored signal stays ignored."""
    _StopState.scope = _StopState.under_way = False
    for sig in STOP_SIGNALS:
        if callable(signal.getsignal(sig)):
            try:
                signal.signal(sig, signal.SIG_DFL)
            except ValueError:  # not the child's main thread
                pass


os.register_at_fork(after_in_child=_child_after_fork)
