"""What every stage shares: output paths (owned by dvc.yaml's `vars`), config loading, set-up."""

from __future__ import annotations

from pathlib import Path

import yaml

from labelnoise import runtime
from labelnoise.config import Config
from stages import STAGE_PARAMS  # noqa: F401  (re-exported: the stages read their map from here)

DVC_FILE = Path(__file__).resolve().parent.parent / "dvc.yaml"


def _load_paths(dvc_file: str | Path = "dvc.yaml") -> dict[str, Path]:
    """Output paths as declared once in dvc.yaml's ``vars`` (relative to the working directory)."""
    spec = yaml.safe_load(Path(dvc_file).read_text())
    paths: dict[str, Path] = {}
    for block in spec.get("vars", []):
        paths.update({k: Path(v) for k, v in block.items()})
    return paths


def stage_outputs(stage: str, dvc_file: str | Path = DVC_FILE) -> list[Path]:
    """Every path stage ``stage`` declares in dvc.yaml (outs, metrics, plots), ``${var}`` resolved."""
    spec = yaml.safe_load(Path(dvc_file).read_text())
    variables = {k: str(v) for k, v in _load_paths(dvc_file).items()}
    declared = spec["stages"][stage]
    paths = []
    for section in ("outs", "metrics", "plots"):
        for entry in declared.get(section, []):
            name = next(iter(entry)) if isinstance(entry, dict) else entry
            for key, value in variables.items():
                name = name.replace("${" + key + "}", value)
            paths.append(Path(name))
    return paths


class _Paths:
    """Lazy view of dvc.yaml's vars, so importing a stage never touches the disk."""

    def __getattr__(self, name: str) -> Path:
        paths = _load_paths(DVC_FILE)
        if name not in paths:
            raise AttributeError(name)
        return paths[name]


PATHS = _Paths()


def require(*paths: Path) -> None:
    """A stage run before its inputs exist: one clear line instead of a traceback."""
    for p in paths:
        if not Path(p).exists():
            raise FileNotFoundError(f"{p} does not exist: run the stage that produces it first (dvc repro)")


def setup(cfg: Config) -> None:
    """Once per stage, before any work: under torchrun join the process group; the MLflow store must be
    usable (rank 0 talks to it); then threads and seeds."""
    from labelnoise import distributed, tracking

    distributed.init(runtime.resolve_device(cfg.base.device).type)
    if distributed.is_main():
        tracking.check_store(cfg)
    runtime.set_threads(cfg.base.threads)
    runtime.seed_everything(cfg.base.seed, deterministic=cfg.base.deterministic)



def training_data(cfg: Config) -> dict[str, str]:
    """The files the student trains from, by the name MLflow shows as its dataset inputs."""
    return {cfg.data.dataset: PATHS.prepared, f"{cfg.data.dataset} noisy labels ({cfg.noise.kind})": PATHS.noisy}


def registered_name(cfg: Config) -> str:
    """The MLflow registered model a pipeline's models are versions of: one per dataset."""
    return f"labelnoise-{cfg.data.dataset}"
