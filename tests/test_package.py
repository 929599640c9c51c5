"""The project as a package: the wheel installs the library and the `labelnoise` command, usable outside the
repository (a fresh venv; its dependencies are the project venv's, so nothing is downloaded)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SOURCES = ["pyproject.toml", "README.md", "requirements.txt", "requirements-dev.txt", "cli.py", "labelnoise", "stages"]


def _run(args: list[str], cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _copy_sources(dest: Path) -> Path:
    """The package's sources copied to ``dest`` (so building leaves no build/ or egg-info in the checkout)."""
    dest.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, dest / name)
    return dest


def _fresh_venv(path: Path, cwd: Path) -> Path:
    """A new venv at ``path`` that sees the project venv's packages (torch & co., not installed again, and the
    build backend): its python. It has no pip or setuptools of its own (an old one would shadow the project's):
    :func:`_pip_install` installs into it with the project's pip."""
    _run([sys.executable, "-m", "venv", "--without-pip", str(path)], cwd)
    python = path / "bin" / "python"
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd).strip())
    (purelib / "project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def _pip_install(python: Path, *args: str, cwd: Path) -> None:
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", *args],
         cwd)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a fresh venv with the wheel installed, the wheel): built from a copy of the sources, so the checkout gets
    no build/ or egg-info."""
    tmp = tmp_path_factory.mktemp("package")
    src = _copy_sources(tmp / "src")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", str(tmp / "dist"), str(src)], tmp)
    wheel = next((tmp / "dist").glob("labelnoise-*.whl"))
    venv = tmp / "venv"
    python = _fresh_venv(venv, tmp)
    _pip_install(python, str(wheel), cwd=tmp)
    return venv, wheel


def test_the_wheel_names_the_dependencies_and_the_command(installed: tuple[Path, Path]) -> None:
    _, wheel = installed
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    requires = [line.split(": ", 1)[1] for line in meta.splitlines() if line.startswith("Requires-Dist: ")]
    assert "torch==2.14.1" in requires and "torchvision==0.29.1" in requires
    assert 'pytest==9.2.0; extra == "dev"' in requires  # the tools are an extra, not a dependency
    assert not any(r.startswith("aiohttp") for r in requires)  # the lock file's transitive pins are not
    assert "labelnoise = cli:main" in entry
    assert "labelnoise/api.py" in names and "stages/train_student.py" in names and "cli.py" in names
    assert "labelnoise/params.yaml" in names  # labelnoise.fit's defaults: the pipeline's params
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)


def test_the_command_and_the_library_work_outside_the_repository(installed: tuple[Path, Path], tmp_path: Path) -> None:
    venv, _ = installed
    import labelnoise

    version = _run([str(venv / "bin" / "labelnoise"), "--version"], tmp_path).strip()
    assert version == f"labelnoise {labelnoise.__version__}"
    assert "inject-noise" in _run([str(venv / "bin" / "labelnoise"), "--help"], tmp_path)
    code = ("import numpy as np, labelnoise; "
            "t = labelnoise.find_label_issues([0, 1, 1], np.array([[.9, .1], [.2, .8], [.9, .1]])); "
            "print(labelnoise.__file__); print(t.loc[t.flagged, 'index'].tolist())")
    where, flagged = _run([str(venv / "bin" / "python"), "-c", code], tmp_path).split()
    assert Path(where).is_relative_to(venv) and flagged == "[2]"  # the installed copy, not the checkout


def test_fit_runs_from_the_installed_package_on_the_digits(installed: tuple[Path, Path], tmp_path: Path) -> None:
    """labelnoise.fit with the defaults the wheel ships (no params.yaml where it runs), a few epochs; the model it
    saves classifies image files with the installed `labelnoise predict`."""
    venv, _ = installed
    code = """
import numpy as np, labelnoise
from sklearn.datasets import load_digits
d = load_digits()
x, y = (d.images * 255 / 16).round().astype("uint8"), d.target.copy()
y[::4] = (y[::4] + 3) % 10  # a quarter of the labels wrong
params = {"train": {"epochs": 2, "batch_size": 64, "lr": 0.05}, "estimate.epochs": 1, "estimate.trusted_folds": 0,
          "mentor": {"dd_epochs": 2, "fit_steps": 100}, "trusted.epochs": 4, "correction.retrain_epochs": 2}
r = labelnoise.fit(x[:1000], y[:1000], trusted=(np.arange(150), d.target[:150]), params=params, log=lambda s: None)
print(len(r.label_issues), r.config.student.method, r.noise_estimate["use"])
r.save("model.pt")
from PIL import Image
for i in (1000, 1001):
    Image.fromarray(x[i]).resize((32, 32)).save(f"{i}.png")
"""
    assert not (tmp_path / "params.yaml").exists()
    assert _run([str(venv / "bin" / "python"), "-c", code], tmp_path).split() == ["850", "spade", "paired"]
    out = _run([str(venv / "bin" / "labelnoise"), "predict", "1000.png", "1001.png", "--model", "model.pt"], tmp_path)
    header, *rows = out.splitlines()
    assert header == "path,predicted,probability,top_k" and [r.split(",")[0] for r in rows] == ["1000.png", "1001.png"]


def test_an_editable_install_runs_the_sources_in_place(tmp_path: Path) -> None:
    """`pip install -e .`: the command and the library come from the clone, so an edit there is what runs."""
    src = _copy_sources(tmp_path / "src")
    python = _fresh_venv(tmp_path / "venv", tmp_path)
    _pip_install(python, "--no-build-isolation", "-e", str(src), cwd=tmp_path)
    away = tmp_path / "elsewhere"
    away.mkdir()
    where = _run([str(python), "-c", "import labelnoise; print(labelnoise.__file__)"], away).strip()
    assert Path(where).resolve().is_relative_to(src.resolve())
    pyproject = src / "pyproject.toml"
    pyproject.write_text(re.sub(r'(?m)^version = "[^"]*"', 'version = "9.9.9"', pyproject.read_text()))
    assert _run([str(tmp_path / "venv" / "bin" / "labelnoise"), "--version"], away).strip() == "labelnoise 9.9.9"
