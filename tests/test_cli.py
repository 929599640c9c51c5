"""The typer CLI through CliRunner: help, one-line errors with exit codes, compare, ui, preset."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli import app
from labelnoise import tracking
from labelnoise.config import load_config
from stages.common import stage_run

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    return tmp_path


@pytest.mark.parametrize("command", ["download", "inject-noise", "train-student", "evaluate", "compare", "preset"])
def test_help_explains_every_command(command: str) -> None:
    # typer colours its help where a CI or the user asks for colour (GITHUB_ACTIONS, FORCE_COLOR) and wraps it
    # to the terminal's width: read it as a person would, without the escape codes, on a normal-width terminal
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0
    text = re.sub(r"\x1b\[[0-9;]*m", "", result.output)
    assert "Usage" in text
    if command != "compare" and command != "preset":
        assert "--set" in text and "--params" in text


def test_bad_param_is_one_line_exit_2_and_writes_nothing(workdir: Path) -> None:
    result = runner.invoke(app, ["download", "-S", "data.trusted_size=-1"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["error: data.trusted_size: must be >= 0, got -1"]
    assert sorted(p.name for p in workdir.iterdir()) == ["params.yaml"]


def test_unknown_key_in_params_file(workdir: Path) -> None:
    raw = yaml.safe_load((workdir / "params.yaml").read_text())
    raw["student"]["learning_rate"] = 0.1
    (workdir / "params.yaml").write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["train-student"])
    assert result.exit_code == 2
    assert "student.learning_rate: unknown parameter" in result.output


def test_stage_before_its_inputs_is_one_line_exit_1(workdir: Path) -> None:
    result = runner.invoke(app, ["train-student"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "does not exist" in lines[0] and "prepared" in lines[0]
    assert sorted(p.name for p in workdir.iterdir()) == ["params.yaml"]


def test_preset_shows_applies_keeping_comments_stacks_and_goes_back(workdir: Path) -> None:
    import subprocess

    from labelnoise.scaffold import clean_env

    listed = runner.invoke(app, ["preset", "--list"])
    assert listed.exit_code == 0 and re.search(r"^tiny +Tiny preset", listed.output, re.M), listed.output
    assert re.search(r"^default +", listed.output, re.M) and runner.invoke(app, ["preset"]).output == listed.output
    original = (workdir / "params.yaml").read_text()
    nothing = runner.invoke(app, ["preset", "default"])  # not in git here: one line
    assert nothing.exit_code == 1 and "no committed version in git" in nothing.output, nothing.output
    env = clean_env() | {"GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    for git in (["init", "-q"], ["add", "params.yaml"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm",
                                                          "shipped"]):  # as in a fresh clone
        subprocess.run(["git", *git], cwd=workdir, env=env, check=True, capture_output=True)
    shown = runner.invoke(app, ["preset", "tiny"])  # what it would change; nothing written
    assert shown.exit_code == 0 and "data.dataset: fashion_mnist -> digits" in shown.output, shown.output
    assert (workdir / "params.yaml").read_text() == original
    assert runner.invoke(app, ["preset", "tiny", "--out", "tiny.yaml"]).exit_code == 0
    assert load_config(workdir / "tiny.yaml").data.dataset == "digits"
    assert (workdir / "params.yaml").read_text() == original
    applied = runner.invoke(app, ["preset", "tiny", "--apply"])
    assert applied.exit_code == 0 and "preset tiny: 14 settings changed" in applied.output, applied.output
    text = (workdir / "params.yaml").read_text()
    assert text == (workdir / "tiny.yaml").read_text() and load_config(workdir / "params.yaml").train.epochs == 4
    assert [line.partition("#")[2] for line in text.splitlines()] == [  # every comment kept, where it was
        line.partition("#")[2] for line in original.splitlines()]
    assert runner.invoke(app, ["preset", "mentormix_cifar10_40", "--apply"]).exit_code == 0  # presets stack
    stacked = load_config(workdir / "params.yaml")
    assert (stacked.data.dataset, stacked.student.method, stacked.mentor.fit_steps) == ("cifar10", "mentormix", 300)
    back = runner.invoke(app, ["preset", "default", "--apply"])  # the file as committed: the shipped one
    assert back.exit_code == 0 and (workdir / "params.yaml").read_text() == original, back.output
    for args, says in ((["preset", "nope"], "unknown preset 'nope'"),
                       (["preset", "tiny", "--apply", "--out", "x.yaml"], "not both")):
        bad = runner.invoke(app, args)
        assert bad.exit_code == 2 and says in bad.output, bad.output


def test_ui_serves_the_store_params_or_the_environment_name(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cli

    served: list[list[str]] = []
    monkeypatch.setattr(cli.os, "execv", lambda path, args: served.append(args))  # not the real server
    done = runner.invoke(app, ["ui", "--port", "5055"])
    assert done.exit_code == 0, done.output
    (command,) = served
    assert command[:3] == [sys.executable, "-m", "mlflow"]  # this interpreter's MLflow, wherever it is installed
    assert command[3:] == ["ui", "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}", "--host", "127.0.0.1",
                           "--port", "5055"]  # MLFLOW_TRACKING_URI (the fixture's) over params.yaml
    assert "http://127.0.0.1:5055" in done.output
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    raw = yaml.safe_load((workdir / "params.yaml").read_text())
    raw["base"]["tracking_uri"] = "sqlite:///runs/store.db"  # relative: to the project's root
    (workdir / "params.yaml").write_text(yaml.safe_dump(raw))
    assert runner.invoke(app, ["ui"]).exit_code == 0
    assert served[-1][5] == f"sqlite:///{(REPO / 'runs' / 'store.db').resolve()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://user:secret@mlflow.example:5000")
    server = runner.invoke(app, ["ui"])  # a server has its own UI: its address, no password, nothing served
    assert server.exit_code == 0 and len(served) == 2 and "mlflow.example:5000" in server.output
    assert "secret" not in server.output


def test_compare_shows_differing_params_and_accuracy(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = runner.invoke(app, ["compare"])  # no store yet (or a mistyped one): one line, no empty store made
    assert missing.exit_code == 1 and "error: no MLflow store at" in missing.output, missing.output
    assert not list(workdir.glob("*.db")) and not (workdir / "mlruns").exists()
    for i, lr in enumerate((0.1, 0.02)):
        monkeypatch.setenv("LABELNOISE_PIPELINE_ID", f"test-{i}")
        cfg = load_config(workdir / "params.yaml", [f"train.lr={lr}"])
        with stage_run("evaluate", cfg) as run:
            run.log_metrics({"test_acc": 0.5 + i / 10}, on_parent=True)
    result = runner.invoke(app, ["compare", "-n", "2"])
    assert result.exit_code == 0, result.output
    assert "train.lr" in result.output and "0.02" in result.output
    assert "0.6000" in result.output and "0.5000" in result.output
    assert "data.dataset" not in result.output  # equal params are not shown
    assert result.output.count("SPADE-DD · symmetric 40 % · fashion_mnist · cnn") == 2  # the runs' names
    as_json = runner.invoke(app, ["compare", "-n", "2", "--json"])  # for scripts: newest first
    assert as_json.exit_code == 0, as_json.output
    runs = json.loads(as_json.output)
    assert [(r["params"], r["metrics"]["test_acc"]) for r in runs] == [({"train.lr": "0.02"}, 0.6),
                                                                       ({"train.lr": "0.1"}, 0.5)]


def test_sweep_grid_parsing_and_points() -> None:
    from labelnoise.studies import grid_points, parse_grid

    grid = parse_grid(["noise.rate=0.2,0.4", "noise.transition.matrix=[[1, 0], [0, 1]],[[0, 1], [1, 0]]",
                       "train.batch_size= 32 "])
    assert grid == {"noise.rate": ["0.2", "0.4"], "noise.transition.matrix": ["[[1, 0], [0, 1]]", "[[0, 1], [1, 0]]"],
                    "train.batch_size": ["32"]}
    points = grid_points(grid)
    assert len(points) == 4 and points[0] == ["noise.rate=0.2", "noise.transition.matrix=[[1, 0], [0, 1]]",
                                              "train.batch_size=32"]
    assert points[1][1] == "noise.transition.matrix=[[0, 1], [1, 0]]"  # the last key varies fastest
    for bad in (["rate=1,2"], ["noise.rate"], ["noise.rate=0.1,,0.2"], ["noise.rate=1", "noise.rate=2"], []):
        with pytest.raises(ValueError, match="sweep"):
            parse_grid(bad)


@pytest.mark.parametrize(("args", "says"), [
    (["sweep", "s1", "noise.rate=0.2,1.5"], "noise.rate: must be <= 1.0"),  # every point validated first
    (["sweep", "s1", "noise.ratio=0.2"], "noise.ratio: unknown parameter"),
    (["sweep", "bad name", "noise.rate=0.2"], "study name 'bad name'"),
    (["sweep", "s1", "rate=0.2"], "not section.key=value1,value2"),
])
def test_sweep_bad_input_queues_nothing(workdir: Path, args: list[str], says: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and says in result.output
    assert "queued" not in result.output
    assert sorted(p.name for p in workdir.iterdir()) == ["params.yaml"]


def test_report_without_runs_is_one_line(workdir: Path) -> None:
    missing = runner.invoke(app, ["report", "nothing-here"])  # no store at all: none is created by reading
    assert missing.exit_code == 1 and missing.output.startswith(f"error: no MLflow store at {workdir / 'mlflow.db'}")
    assert not (workdir / "mlflow.db").exists()
    tracking.check_store(f"sqlite:///{workdir / 'mlflow.db'}", "labelnoise")  # a store, with no run in it
    result = runner.invoke(app, ["report", "nothing-here"])
    assert result.exit_code == 1
    assert [line for line in result.output.splitlines() if " INFO " not in line] == [
        f"error: no finished pipeline runs tagged study='nothing-here' in experiment 'labelnoise' at "
        f"sqlite:///{workdir / 'mlflow.db'}"]


@pytest.mark.parametrize(("args", "query"), [(["compare"], "last_pipelines"), (["report", "s1"], "study_runs")])
def test_compare_and_report_ask_a_tracking_server_once(workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                                       args: list[str], query: str) -> None:
    """A server that does not answer is one line in seconds: the store is read with MLflow's HTTP retries off
    (its default, 7 retries with back-off, held `compare` for minutes), as the stages' store check does."""

    seen: list[str | None] = []

    def unreachable(uri: str, *rest: object) -> list[dict]:
        seen.append(os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES"))
        raise ConnectionError("Connection refused")

    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setattr(tracking, query, unreachable)
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "error: cannot read MLflow store" in result.output and seen == ["0"]
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # set for the query only


@pytest.mark.parametrize(("args", "says"), [
    (["compare", "-n", "0"], "error: Invalid value for '--last' / '-n'"),
    (["compare", "-n", "-1"], "error: Invalid value for '--last' / '-n'"),
    (["compare", "--bogus"], "error: No such option: --bogus"),
    (["no-such-command"], "error: No such command 'no-such-command'"),
    (["preset", "tiny", "--out"], "error: Option '--out' requires an argument"),
    (["study", "comparison", "-v", "small"], "error: No such option: -v"),  # -v would read as verbose: none
])
def test_a_mistyped_command_line_is_one_error_line(args: list[str], says: str, tmp_path: Path) -> None:
    """The program (not CliRunner, which keeps click's own handling) answers a usage mistake with one `error:` line
    naming the help to read, and exit status 2."""
    import subprocess
    import sys

    from labelnoise.scaffold import clean_env

    out = subprocess.run([sys.executable, str(REPO / "cli.py"), *args], cwd=tmp_path, env=clean_env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stdout == "", out.stderr
    assert out.stderr.startswith(says) and out.stderr.count("\n") == 1 and "--help`" in out.stderr


def test_the_champion_alias_moves_only_to_a_better_model_on_the_same_test_split(workdir: Path) -> None:
    """The model alias (champion) moves only to a version with a strictly higher test accuracy on the same test split
    (a tie keeps it; another split is not comparable and keeps it); MLflow's `models:/NAME/latest` is the newest."""
    from mlflow import MlflowClient

    from labelnoise.io import save_torch
    from labelnoise.models import create_model, model_record

    cfg = load_config(workdir / "params.yaml")
    kwargs = dict(num_classes=2, in_channels=1, image_size=8, mean=[0.0], std=[1.0])
    model = workdir / "model.pt"
    save_torch(model, model_record(create_model("cnn", **kwargs), model_name="cnn", model_kwargs=kwargs, epoch=1,
                                   clean_acc=0.5, config={}, classes=["a", "b"]))
    cases = [("0.5000", "a", "1"), ("0.4000", "a", "1"), ("0.5000", "a", "1"), ("0.6000", "a", "4"),
             ("0.9000", "b", "4")]  # (test_acc, test split, the champion's version after it)
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    for i, (acc, split, champion) in enumerate(cases, start=1):
        with stage_run("correct_labels", cfg) as run:
            version = run.log_model(model, registered="labelnoise-test", alias="champion",
                                    tags={"kind": "label-corrected", "test_acc": acc, "test_split": split})
        assert version == str(i)
        assert str(client.get_model_version_by_alias("labelnoise-test", "champion").version) == champion, (acc, split)


def test_a_queued_run_is_given_the_untracked_inputs_it_reads(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`dvc exp run --queue` builds each run from what git tracks: the images and label files of data/own the
    params name are copied in (`-C`), the rest is not (absolute paths, missing ones, the data the run fetches)."""
    import cli

    monkeypatch.setattr(cli, "ROOT", workdir)
    (workdir / "data" / "own" / "photos").mkdir(parents=True)
    (workdir / "data" / "own" / "labels.npy").write_bytes(b"")
    cfg = load_config(workdir / "params.yaml", ["data.dataset=folder", "data.path=data/own/photos",
                                                "noise.kind=given", "noise.given.file=data/own/labels.npy"])
    assert cli._inputs_in_repo(cfg) == ["data/own/labels.npy", "data/own/photos"]
    elsewhere = load_config(workdir / "params.yaml", ["data.dataset=folder", f"data.path={workdir / 'data/own/photos'}",
                                                      "noise.kind=given", "noise.given.file=data/own/missing.npy"])
    assert cli._inputs_in_repo(elsewhere) == []
    assert cli._inputs_in_repo(load_config(workdir / "params.yaml")) == []
