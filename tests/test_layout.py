"""The library's shape: no import circle, layers that only point down, and every module importable on its own."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import import_graph, project_modules

REPO = Path(__file__).resolve().parent.parent
LIB = REPO / "labelnoise"

# What each layer may not import (module names and package prefixes of labelnoise). Stages and the CLI sit above
# everything; the library never imports them.
FORBIDDEN = {
    # leaves: data, noise and the plumbing know no training. Noise corrupts a dataset: it reads the dataset registry
    # (shipped class maps, other sources' images), never the reverse; a model that trains a classifier is handed one
    "labelnoise.schema": ("labelnoise",),
    "labelnoise.io": ("labelnoise",),
    "labelnoise.runtime": ("labelnoise",),
    "labelnoise.distributed": ("labelnoise",),
    "labelnoise.noise": ("labelnoise.engine", "labelnoise.methods", "labelnoise.mentornet", "labelnoise.models",
                         "labelnoise.config", "labelnoise.tracking", "labelnoise.views", "labelnoise.reference"),
    "labelnoise.datasets": ("labelnoise.engine", "labelnoise.methods", "labelnoise.mentornet", "labelnoise.models",
                            "labelnoise.config", "labelnoise.tracking", "labelnoise.noise", "labelnoise.views"),
    "labelnoise.views": ("labelnoise.engine", "labelnoise.methods", "labelnoise.mentornet", "labelnoise.config",
                         "labelnoise.tracking"),
    "labelnoise.models": ("labelnoise.engine", "labelnoise.methods", "labelnoise.mentornet", "labelnoise.config",
                          "labelnoise.tracking"),
    # the engine knows no method, no params file, no tracking
    "labelnoise.engine": ("labelnoise.methods", "labelnoise.mentornet", "labelnoise.config", "labelnoise.tracking",
                          "labelnoise.models"),
    "labelnoise.mentornet": ("labelnoise.methods", "labelnoise.config", "labelnoise.tracking"),
    "labelnoise.trusted": ("labelnoise.methods", "labelnoise.config", "labelnoise.tracking"),
    "labelnoise.methods": ("labelnoise.config", "labelnoise.tracking", "labelnoise.correction",
                           "labelnoise.evaluation", "labelnoise.studies", "labelnoise.steps", "labelnoise.fitting"),
    "labelnoise.correction": ("labelnoise.config", "labelnoise.tracking", "labelnoise.evaluation",
                              "labelnoise.studies", "labelnoise.steps", "labelnoise.fitting"),
    "labelnoise.evaluation": ("labelnoise.config", "labelnoise.tracking", "labelnoise.studies", "labelnoise.steps",
                              "labelnoise.fitting"),
    # the pipeline's steps on data in memory: what the stages and labelnoise.fit call; they know no tracking
    "labelnoise.steps": ("labelnoise.config", "labelnoise.tracking", "labelnoise.fitting", "labelnoise.api"),
    "labelnoise.fitting": ("labelnoise.tracking",),
    # MLflow's layer sits below everything that describes runs: it knows no config, method or report
    "labelnoise.tracking": ("labelnoise.config", "labelnoise.studies", "labelnoise.describe", "labelnoise.methods",
                            "labelnoise.engine", "labelnoise.models", "labelnoise.mentornet", "labelnoise.datasets",
                            "labelnoise.noise", "labelnoise.correction", "labelnoise.evaluation", "labelnoise.views",
                            "labelnoise.auto"),
}


def _graph() -> dict[str, set[str]]:
    return import_graph("labelnoise")


def test_no_import_circle() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_layers_point_down() -> None:
    wrong = []
    for name, targets in _graph().items():
        for layer, forbidden in FORBIDDEN.items():
            if name == layer or name.startswith(layer + "."):
                wrong += [f"{name} imports {t}" for t in targets
                          if any(t == f or t.startswith(f + ".") for f in forbidden) and not t.startswith(layer)]
    assert wrong == []


def test_no_library_module_imports_stages_or_the_cli() -> None:
    for path in LIB.rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
        assert not any(n == "cli" or n.startswith(("stages", "cli.")) for n in names), path


def test_every_module_imports_on_its_own() -> None:
    """Each module imported first, with none of the project loaded (an import that only works after another module
    was loaded would fail here)."""
    names = sorted(project_modules("labelnoise"))
    # a fresh interpreter per module would take a minute; instead the project's modules are dropped from the
    # interpreter before each import (torch and the other third-party imports stay loaded)
    script = ("import importlib, sys\n"
              "import numpy, torch  # noqa: F401  project-independent, loaded once\n"
              "for name in sys.argv[1:]:\n"
              "    for m in [m for m in sys.modules if m == 'labelnoise' or m.startswith('labelnoise.')]:\n"
              "        del sys.modules[m]\n"
              "    importlib.import_module(name)\n")
    out = subprocess.run([sys.executable, "-c", script, *names], cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]


def test_no_code_outside_a_methods_file_branches_on_a_method_name() -> None:
    """A method's facts live in its registry entry: no comparison with a method's name anywhere else in the library,
    the stages or the CLI (``if method == "clean_only"``): code asks the registry instead."""
    from labelnoise.methods import method_names

    names = set(method_names())
    files = [p for p in LIB.rglob("*.py") if "methods" not in p.relative_to(LIB).parts]
    files += [*(REPO / "stages").glob("*.py"), REPO / "cli.py"]
    found = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                values = [node.left, *node.comparators]
                values += [e for v in node.comparators if isinstance(v, ast.Tuple | ast.List | ast.Set) for e in v.elts]
                found += [f"{path.relative_to(REPO)}:{node.lineno} {v.value!r}" for v in values
                          if isinstance(v, ast.Constant) and v.value in names]
    assert found == []


def test_make_clean_outputs_deletes_no_committed_file() -> None:
    """`make clean-outputs` removes pipeline outputs only: never a file in git (the committed study reports)."""
    import glob
    import shlex

    shown = subprocess.run(["make", "-s", "-n", "clean-outputs"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout
    words = [w for w in shlex.split(shown.replace("\\\n", " ")) if w not in ("rm", "-rf", "-f", "-r")]
    assert words, shown
    removed = {Path(p).relative_to(REPO).as_posix() for w in words for p in glob.glob(str(REPO / w))}
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    hit = [f for f in tracked.splitlines() if any(f == r or f.startswith(r + "/") for r in removed)]
    assert hit == [], f"make clean-outputs would delete committed files: {hit[:5]}"
