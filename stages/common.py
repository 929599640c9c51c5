"""What every stage shares: output paths (owned by dvc.yaml's `vars`), config loading, set-up."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from labelnoise import runtime
from labelnoise.config import Config

# re-exported: the stages read their map and their paths from here
from stages import PATHS, STAGE_PARAMS, get_stage, project_root, stage_outputs  # noqa: F401


def require(*paths: Path) -> None:
    """A stage run before its inputs exist: one clear line instead of a traceback."""
    for p in paths:
        if not Path(p).exists():
            raise FileNotFoundError(f"{p} does not exist: run the stage that produces it first (dvc repro)")


def setup(cfg: Config) -> None:
    """Once per stage, before any work: under torchrun join the process group; the MLflow store must be
    usable (rank 0 talks to it); then threads, and seeds for a stage that declares base.seed."""
    from labelnoise import distributed, tracking
    from labelnoise.config import declares

    device = cfg.base.device if declares(cfg, "base.device") else "cpu"
    distributed.init(runtime.resolve_device(device).type)
    if distributed.is_main():
        tracking.check_store(cfg.base.tracking_uri, cfg.base.experiment)
    runtime.set_threads(cfg.base.threads)
    if declares(cfg, "base.seed"):
        runtime.seed_everything(cfg.base.seed, deterministic=cfg.base.deterministic)
    if declares(cfg, "train.precision") and distributed.is_main():
        print(f"{how_it_runs(cfg)['runtime.precision_note']}", file=sys.stderr, flush=True)


def how_it_runs(cfg: Config) -> dict[str, Any]:
    """The machine's resolution of the stage's settings, logged with its params: the device, the threads and, for a
    stage that trains, the precision (``train.precision: auto`` is bf16 only where the CPU has it natively)."""
    from labelnoise.config import declares

    device = runtime.resolve_device(cfg.base.device if declares(cfg, "base.device") else "cpu")
    out: dict[str, Any] = {"runtime.device": str(device), "runtime.threads": torch.get_num_threads()}
    if declares(cfg, "train.precision"):
        amp = runtime.resolve_precision(cfg.train.precision, device)
        precision = runtime.precision_name(amp)
        why = ("" if cfg.train.precision != "auto" or device.type != "cpu" else
               " (this CPU has native bf16)" if amp is not None else
               " (this CPU has no native bf16: fp32 is its fast path; docs/gpu-and-speed.md: the speed of both)")
        out |= {"runtime.precision": precision,
                "runtime.precision_note": f"training on {device} with {out['runtime.threads']} threads in "
                                          f"{precision}{why}"}
    return out


def execution(cfg: Config) -> Any:
    """The pipeline execution ``cfg`` belongs to, as MLflow records it (labelnoise.tracking.Execution): its parent
    run's name says what ran (``SPADE-DD · symmetric 40 % · fashion_mnist · cnn``), its tags and params are every
    param's. Read from the whole config: it describes the execution, no stage computes from it."""
    from labelnoise import tracking
    from labelnoise.config import flatten, unrestricted
    from labelnoise.describe import run_name

    whole = unrestricted(cfg)
    flat = flatten(whole.to_dict())
    tags = {"dataset": whole.data.dataset, "noise": whole.noise.kind, "method": whole.student.method,
            "model": whole.train.model, **({"study": whole.base.study} if whole.base.study else {})}
    return tracking.Execution(tracking_uri=whole.base.tracking_uri, experiment=whole.base.experiment,
                              name=run_name(flat),
                              tags=tags, params=flat)


def stage_run(stage: str, cfg: Config) -> Any:
    """The MLflow child run of ``stage`` (a context manager yielding labelnoise.tracking.StageRun): the params it
    logs are ``base`` and the stage's own (its record)."""
    from labelnoise import tracking

    whole = execution(cfg)
    return tracking.stage_run(stage, whole, params={**stage_params(whole.params, get_stage(stage).params),
                                                    **how_it_runs(cfg)})


def stage_params(flat: dict[str, Any], entries: tuple[str, ...]) -> dict[str, Any]:
    """The params a stage's run logs: every ``base.*`` key and those of ``entries`` (sections or dotted keys)."""
    return {k: v for k, v in flat.items()
            if k.startswith("base.") or any(k == e or k.startswith(e + ".") for e in entries)}


def training_data(cfg: Config) -> dict[str, str]:
    """The files the student trains from, by the name MLflow shows as its dataset inputs (names describe the
    execution: read from the whole config)."""
    from labelnoise.config import unrestricted

    whole = unrestricted(cfg)
    return {whole.data.dataset: PATHS.prepared,
            f"{whole.data.dataset} noisy labels ({whole.noise.kind})": PATHS.noisy}


def registered_name(cfg: Config) -> str:
    """The MLflow registered model a pipeline's models are versions of: one per dataset."""
    from labelnoise.config import unrestricted

    return f"labelnoise-{unrestricted(cfg).data.dataset}"

