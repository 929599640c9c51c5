"""Test helpers shared by several test modules: a user's Ctrl-C at a chosen training step, a live SIGINT, a NaN
at a chosen step, and the project's import graph (parsed, not imported).

A process started in the background by a non-interactive shell (``cmd &``, ``nohup``, many CI runners)
inherits SIGINT ignored; training then leaves it ignored (SIGTERM likewise). Tests that press Ctrl-C therefore
first give the process the disposition a terminal gives it (:func:`live_sigint`; a child: :func:`terminal_signals`),
and restore what they found.
"""

from __future__ import annotations

import ast
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn


@contextmanager
def live_sigint() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt inside the block (Python's default in a terminal), whatever was inherited."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def terminal_signals() -> None:
    """``preexec_fn`` of a child process that should react to SIGINT and SIGTERM as one started from a terminal
    does, whatever the launcher of the tests left ignored (a background job ignores SIGINT; some runners and
    process supervisors start their children with SIGTERM ignored too)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class SigintAt(nn.Module):
    """Wraps a model; sends SIGINT (a user's Ctrl-C), or ``sig``, to this process at the n-th training forward."""

    def __init__(self, model: nn.Module, at: int, sig: int = signal.SIGINT) -> None:
        super().__init__()
        self.model, self.at, self.sig, self.calls = model, at, sig, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            if self.calls == self.at:
                signal.raise_signal(self.sig)
        return self.model(x)


@contextmanager
def live_signals() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt and SIGTERM ends the process inside the block (a terminal's dispositions),
    whatever the launcher of the tests left ignored."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def nan_from(model: nn.Module, forward: int) -> nn.Module:
    """Make ``model``'s output NaN from its ``forward``-th training forward on (1-based), in place: a divergence
    at a step the test chooses, whatever the CPU's floating point does. The state dict keeps its keys."""
    calls = 0

    def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        if not module.training:
            return out
        calls += 1
        return out * float("nan") if calls >= forward else out

    model.register_forward_hook(hook)
    return model


REPO = Path(__file__).resolve().parent.parent


def project_modules(*packages: str) -> dict[str, Path]:
    """Dotted name → file of every module of ``packages`` (folders at the repository root)."""
    out = {}
    for package in packages:
        for path in (REPO / package).rglob("*.py"):
            rel = path.relative_to(REPO).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            out[".".join(parts)] = path
    return out


def import_graph(*packages: str) -> dict[str, set[str]]:
    """Module → the modules of ``packages`` it imports anywhere in its file (module level, functions,
    TYPE_CHECKING). A package's ``__init__`` importing its own modules is no edge back to the package."""
    modules = project_modules(*packages)
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                base = node.module
                if node.level:
                    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [node.module])
                targets = [base, *(f"{base}.{a.name}" for a in node.names)]
            found |= {t for t in targets if t in modules and t != name}
        if path.name == "__init__.py":
            found = {t for t in found if not t.startswith(name + ".")}
        graph[name] = found
    return graph


# ----------------------------------------------------------------------------- params overlays
RECIPE_KEYS = ("model", "pretrained", "epochs", "batch_size", "eval_batch_size", "lr", "momentum", "nesterov",
               "weight_decay", "schedule", "milestones", "lr_gamma", "warmup_epochs", "onecycle_pct_start", "augment",
               "crop_padding", "precision", "channels_last", "label_smoothing")


def _block_keys(method: str) -> set[str]:
    """The keys of the params block ``student.<method>`` (none for an unknown method or one without a block)."""
    import dataclasses

    from labelnoise.methods import get_method, method_names

    params = get_method(method).params if method in method_names() else None
    return {f.name for f in dataclasses.fields(params)} if params is not None else set()


def split_student(overlay: dict) -> dict:
    """A params overlay whose ``student`` section is written flat (recipe keys, method keys and method-block keys
    together, as a test states a run) → the params' own layout: recipe keys under ``train``, a method's keys in
    its block ``student.<method>`` (the mentor's weighting keys to ``student.spade``, which mentormix
    shares). Other sections pass through."""
    out = {k: v for k, v in overlay.items() if k != "student"}
    student = dict(overlay.get("student", {}))
    method = student.get("method", "spade")
    new: dict = {}
    for key, value in student.items():
        if key in RECIPE_KEYS:
            out.setdefault("train", {})[key] = value
        elif block := next((b for b in (method, "spade", "mentormix") if key in _block_keys(b)), None):
            new.setdefault(block, {})[key] = value  # the run's method's block first; spade's is mentormix's too
        else:
            new[key] = value
    if new:
        out["student"] = new
    return out


# ----------------------------------------------------------------------------- a user's own images on disk
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def write_digits(root: Path, *, layout: str, n: int = 1797, test_every: int = 5,
                 corrupt: tuple[int, ...] = ()) -> dict:
    """scikit-learn's digits (the first ``n``) as PNG files under ``root``, the way a user keeps images:

    - ``tree``: ``root/<class name>/<i>.png``, no test split;
    - ``split_tree``: ``root/train/<class>/...`` and ``root/test/<class>/...`` (every ``test_every``-th image is test);
    - ``manifest``: ``root/img/<i>.png`` and ``root/manifest.csv`` (path,label,split) with class names as labels.

    Images alternate in mode (8-bit grayscale, RGB, palette) and size (8x8, 16x16, 12x20) to show any is read.
    The files in ``corrupt`` (digit indices) hold bytes that are no image. Returns {"path": what data.path
    names, "classes": the class names in label order, "names": each image's name in the dataset's order, "labels":
    its true class index (same order), "n_train": images before the test part}."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images[:n] * 255 / 16).round().astype(np.uint8)  # (n, 8, 8)
    labels = d.target[:n].astype(np.int64)
    test = np.arange(n) % test_every == test_every - 1 if layout != "tree" else np.zeros(n, dtype=bool)
    rows = []
    for i, (img, y) in enumerate(zip(images, labels, strict=True)):
        cls = DIGIT_NAMES[y]
        split = "test" if test[i] else "train"
        name = {"tree": f"{cls}/{i:04d}.png", "split_tree": f"{split}/{cls}/{i:04d}.png",
                "manifest": f"img/{i:04d}.png"}[layout]
        file = root / name
        file.parent.mkdir(parents=True, exist_ok=True)
        if i in corrupt:
            file.write_bytes(b"not an image at all")
        else:
            im = Image.fromarray(img, mode="L")
            im = [im, im.convert("RGB"), im.convert("P")][i % 3].resize([(8, 8), (16, 16), (12, 20)][i // 3 % 3])
            im.save(file)
        rows.append((name, cls, split, y))
    if layout == "manifest":
        with open(root / "manifest.csv", "w") as f:
            f.write("path,label,split\n" + "".join(f"{p},{c},{s}\n" for p, c, s, _ in rows))
    # the dataset's order: train before test; in a tree by class folder (sorted names), then file name
    order = sorted(range(n), key=lambda i: (rows[i][2] == "test", rows[i][0] if layout != "manifest" else i))
    classes = sorted(DIGIT_NAMES)  # the folder's classes: its class names, sorted
    return {"path": root / "manifest.csv" if layout == "manifest" else root, "classes": classes,
            "names": [rows[i][0] for i in order],
            "labels": np.array([classes.index(DIGIT_NAMES[rows[i][3]]) for i in order], dtype=np.int64),
            "n_train": int((~test).sum())}


# ----------------------------------------------------------------------------- an MLflow store
_STORE_TEMPLATE: list[Path] = []


def new_store(folder: Path) -> str:
    """The URI of an empty SQLite MLflow store at ``folder``/mlflow.db, as a user's second run finds it: a copy of
    one store this process created through MLflow (its tables made once; creating them takes seconds), unless a
    store is there already."""
    import atexit
    import shutil
    import tempfile

    from mlflow.tracking import MlflowClient

    if not _STORE_TEMPLATE:
        home = tempfile.mkdtemp(prefix="labelnoise-store-")
        atexit.register(shutil.rmtree, home, ignore_errors=True)
        template = Path(home) / "mlflow.db"
        MlflowClient(f"sqlite:///{template}").search_experiments()  # creates the tables
        _STORE_TEMPLATE.append(template)
    target = Path(folder) / "mlflow.db"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_STORE_TEMPLATE[0], target)
    return f"sqlite:///{target}"


# ----------------------------------------------------------------------------- a workspace on the tiny preset
def tiny_workspace(root: Path, stages: tuple[str, ...]) -> Path:
    """``root`` with the tiny preset's params.yaml (``base.threads: 1`` written into it) and ``stages`` run through
    the CLI in this process, into root's own MLflow store; the working folder, the environment and torch's thread
    count are as before afterwards. Returns ``root``."""
    import pytest
    import yaml
    from typer.testing import CliRunner

    from cli import app

    repo = Path(__file__).resolve().parent.parent
    runner = CliRunner()
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    mp.setenv("MLFLOW_TRACKING_URI", new_store(root))
    previous = torch.get_num_threads()
    try:
        assert runner.invoke(app, ["preset", "tiny", "--params", str(repo / "params.yaml"),
                                   "--out", "params.yaml"]).exit_code == 0
        raw = yaml.safe_load((root / "params.yaml").read_text())
        raw["base"]["threads"] = 1
        (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        for stage in stages:
            result = runner.invoke(app, [stage])
            assert result.exit_code == 0, f"{stage}: {result.output}"
    finally:
        mp.undo()
        torch.set_num_threads(previous)
    return root
