"""What every stage shares: output paths (owned by dvc.yaml's `vars`), config loading, set-up."""

from __future__ import annotations

from pathlib import Path

import yaml

from labelnoise import runtime
from labelnoise.config import Config


def _load_paths(dvc_file: str | Path = "dvc.yaml") -> dict[str, Path]:
    """Output paths as declared once in dvc.yaml's ``vars`` (relative to the working directory)."""
    spec = yaml.safe_load(Path(dvc_file).read_text())
    paths: dict[str, Path] = {}
    for block in spec.get("vars", []):
        paths.update({k: Path(v) for k, v in block.items()})
    return paths


class _Paths:
    """Lazy view of dvc.yaml's vars, so importing a stage never touches the disk."""

    def __getattr__(self, name: str) -> Path:
        paths = _load_paths(Path(__file__).resolve().parent.parent / "dvc.yaml")
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
    """Threads and seeds, once per stage."""
    runtime.set_threads(cfg.base.threads)
    runtime.seed_everything(cfg.base.seed, deterministic=cfg.base.deterministic)
