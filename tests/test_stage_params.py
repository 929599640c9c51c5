"""One map of what each stage reads (stages.STAGE_PARAMS), followed by dvc.yaml, the MLflow child runs and the CLI
help; dvc.yaml's code dependencies cover every module a stage imports."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli import app
from labelnoise.config import flatten, read_yaml
from stages import STAGE_PARAMS, STAGES, stage_params_help
from tests.helpers import import_graph

REPO = Path(__file__).resolve().parent.parent
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())
# Modules whose code does not change what a stage writes: the params schema (a changed value is a changed param),
# the MLflow logging and the run's name in it.
NOT_OUTPUT_CODE = {"labelnoise.config", "labelnoise.schema", "labelnoise.tracking", "labelnoise.describe"}


def test_dvc_yaml_lists_exactly_the_params_of_the_map() -> None:
    assert list(DVC["stages"]) == [s.name for s in STAGES]
    for stage, keys in STAGE_PARAMS.items():
        assert DVC["stages"][stage]["params"] == list(keys), stage


def test_dvc_yaml_outputs_are_the_records_outputs() -> None:
    """Every out, metric and plot of a stage in dvc.yaml is one of its record's outputs (a dvc.yaml var), and the
    reverse: the all-or-nothing commit and `dvc checkout` cover the same files."""
    for stage in STAGES:
        declared = [entry if isinstance(entry, str) else next(iter(entry))
                    for section in ("outs", "metrics", "plots") for entry in DVC["stages"][stage.name].get(section, [])]
        assert sorted(declared) == sorted(f"${{{var}}}" for var in stage.outputs), stage.name


def test_every_entry_of_the_map_is_a_param() -> None:
    raw = read_yaml(REPO / "params.yaml")
    keys = set(flatten(raw)) | set(raw)
    for stage, entries in STAGE_PARAMS.items():
        for entry in entries:
            assert entry in keys or any(k.startswith(entry + ".") for k in keys), f"{stage}: {entry}"


def _closure(start: str, graph: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        if module not in seen and module not in NOT_OUTPUT_CODE:
            seen.add(module)
            todo += graph[module]
    return seen


@pytest.mark.parametrize("stage", list(STAGE_PARAMS))
def test_dvc_yaml_depends_on_every_module_the_stage_imports(stage: str) -> None:
    """A change to any code the stage runs re-runs it (a package listed as its folder covers its modules)."""
    deps = {d for d in DVC["stages"][stage]["deps"] if not d.startswith("${")}
    graph = import_graph("labelnoise", "stages")
    missing = []
    for module in sorted(_closure(f"stages.{stage}", graph)):
        if module in ("labelnoise", "stages"):  # the packages' own __init__: no code a stage runs
            continue
        path = module.replace(".", "/")
        if not ({f"{path}.py", f"{path}/__init__.py"} & deps  # a module, or a package's own __init__
                or any(path.startswith(d + "/") or path == d for d in deps)):
            missing.append(module)
    assert missing == [], f"{stage}: add to dvc.yaml deps: {missing}"


def test_stage_runs_log_exactly_the_params_of_the_map() -> None:
    from stages.common import stage_params

    flat = {"base.seed": 0, "base.device": "auto", "data.dataset": "digits", "train.lr": 0.1, "train.epochs": 3,
            "student.method": "ce", "student.spade.burn_in": 0.2, "noise.rate": 0.4}
    chosen = stage_params(flat, ("train.lr", "student"))
    assert chosen == {"base.seed": 0, "base.device": "auto", "train.lr": 0.1, "student.method": "ce",
                      "student.spade.burn_in": 0.2}


@pytest.mark.parametrize("stage", list(STAGE_PARAMS))
def test_cli_help_names_the_params_the_stage_reads(stage: str) -> None:
    result = CliRunner().invoke(app, [stage.replace("_", "-"), "--help"], env={"COLUMNS": "400"})
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", result.output).replace("│", " ").split())
    assert stage_params_help(stage) in text
