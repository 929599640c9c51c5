"""A throw-away git + DVC copy of the repository on the tiny preset (scikit-learn's digits): what the end-to-end
tests and the benchmark suite run `dvc repro` in, so neither touches the working tree's outputs or store.

    env = tiny_project(Path("/tmp/p"))          # copied, preset tiny, git + dvc init, committed, one `dvc repro`
    sh(["dvc", "repro"], Path("/tmp/p"), env)   # a command there (raises with its output when it fails)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COPY = ["cli.py", "params.yaml", "dvc.yaml", "stages", "labelnoise", "presets", "studies", ".dvcignore", ".gitignore",
        "data/own/README.md"]  # data/own: a dependency of the first stages (the user's images), its README only


def clean_env() -> dict[str, str]:
    """This process's environment without MLflow, DVC and project variables (a run elsewhere must not reach the
    caller's store), with this interpreter's bin first on PATH (dvc, torchrun). ``LABELNOISE_CPU_BF16`` (what
    precision ``auto`` means on this CPU) is kept: it describes the machine, not a run."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "DVC_", "LABELNOISE_")) or k == "LABELNOISE_CPU_BF16"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def sh(args: list[str], cwd: Path, env: dict[str, str], *, timeout: float = 1500) -> subprocess.CompletedProcess[str]:
    """Run ``args`` in ``cwd``; a non-zero exit raises RuntimeError with the end of stdout and stderr; past
    ``timeout`` seconds (a whole tiny pipeline on a busy machine needs minutes) subprocess's TimeoutExpired."""
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def tiny_project(root: Path, *, repro: bool = True) -> dict[str, str]:
    """Copy the repository's code and params to ``root``, apply the tiny preset, `git init` + `dvc init`, commit,
    and (``repro``) run `dvc repro` once. Returns the environment to run commands there with (this
    interpreter's bin first on PATH, MLflow / DVC variables of the caller removed, a git identity)."""
    return project(root, preset="tiny", repro=repro)


def project(root: Path, *, preset: str | None = None, repro: bool = True, extra: dict[str, str] | None = None
            ) -> dict[str, str]:
    """:func:`tiny_project` with any preset, or none (the params as they are: the default pipeline); ``extra``:
    variables to add to the returned environment (and to the first `dvc repro`)."""
    for name in COPY:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / name)
    env = clean_env()
    # a git identity of its own, and none of the machine's git settings (a global commit.gpgsign, hooks)
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t",
               GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1")
    env.update(extra or {})
    sh(["git", "init", "-q"], root, env)
    if preset:
        sh([sys.executable, "cli.py", "preset", preset, "--apply"], root, env)
    sh(["dvc", "init", "-q"], root, env)
    sh(["dvc", "config", "core.analytics", "false"], root, env)
    sh(["git", "add", "-A"], root, env)
    sh(["git", "commit", "-qm", preset or "default"], root, env)
    if repro:
        sh(["dvc", "repro"], root, env)
    return env
