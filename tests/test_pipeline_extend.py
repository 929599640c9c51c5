"""End to end, in a project of its own: `dvc exp run` and a sweep through two queue workers are tracked, the DAG
follows the method, and a new method or noise model is one file and its params block (each test runs the tiny
pipeline again; they go in this order, each on what the one before left)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from labelnoise.scaffold import sh, tiny_project
from tests.test_pipeline_e2e import _client, _ran


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A copy of the project after `dvc repro` of the tiny preset."""
    root = tmp_path_factory.mktemp("extend")
    return root, tiny_project(root)


def test_dvc_experiment_is_tracked(project: tuple[Path, dict[str, str]]) -> None:
    """`dvc exp run` in the workspace is one pipeline run named after the experiment, with the stages DVC ran as its
    children (here only evaluate, the one stage that reads the param; the sweep below changes the noise)."""
    root, env = project
    sh(["dvc", "exp", "run", "-n", "lower-threshold", "-S", "evaluate.detection_threshold=0.4"], root, env)
    client, exp_id = _client(root)
    runs = client.search_runs([exp_id], "tags.dvc_exp_name = 'lower-threshold' and tags.`labelnoise.kind` = "
                              "'pipeline'")
    assert len(runs) == 1
    assert runs[0].data.params["evaluate.detection_threshold"] == "0.4"
    assert runs[0].info.run_name == "SPADE-DD · symmetric 40 % · digits · cnn · lower-threshold"  # another name
    children = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{runs[0].info.run_id}'")
    assert [r.info.run_name for r in children] == ["evaluate"]


def test_sweep_through_two_queue_workers_loses_no_run_and_reports(project: tuple[Path, dict[str, str]]) -> None:
    """`cli.py sweep` queues one `dvc exp` per point and starts two queue workers at once, both writing the
    repo-root SQLite store: both executions are recorded completely under the study tag (parent and the
    stages that ran, all FINISHED, with their test accuracy), and `cli.py report` builds the study report."""
    root, env = project
    out = sh([sys.executable, "cli.py", "sweep", "twoworkers", "noise.rate=0.25,0.35", "--jobs", "2"], root, env)
    assert out.stdout.count("queued twoworkers-") == 2
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        status = sh(["dvc", "queue", "status"], root, env).stdout
        if not any(word in status for word in ("Queued", "Running")):
            break
        time.sleep(2)
    assert status.count("Success") >= 2, status
    client, exp_id = _client(root)
    runs = client.search_runs([exp_id], "tags.study = 'twoworkers' and tags.`labelnoise.kind` = 'pipeline'")
    assert sorted(r.data.tags["dvc_exp_name"] for r in runs) == ["twoworkers-001", "twoworkers-002"]
    assert sorted(r.data.params["noise.rate"] for r in runs) == ["0.25", "0.35"]
    for parent in runs:
        assert parent.info.status == "FINISHED" and 0.0 < parent.data.metrics["test_acc"] <= 1.0
        children = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        # the stages that depend on noise.rate ran (rates no earlier run used: DVC's run cache has none of them); the
        # data split did not change, so DVC skips `download`; the mentor's auto settings read the new estimate
        assert sorted(r.info.run_name for r in children) == ["correct_labels", "estimate_noise", "evaluate",
                                                             "inject_noise", "pretrain_mentor", "train_student"]
        assert all(r.info.status == "FINISHED" for r in children)
        train = next(r for r in children if r.info.run_name == "train_student")
        assert [m.step for m in client.get_metric_history(train.info.run_id, "clean_acc")] == [1, 2, 3, 4]
    (a, b) = [(r.info.start_time, r.info.end_time) for r in runs]
    assert a[0] < b[1] and b[0] < a[1]  # the two executions really overlapped in time

    sh([sys.executable, "cli.py", "report", "twoworkers"], root, env)
    text = (root / "reports" / "twoworkers.md").read_text()
    assert "2 points from 2 finished pipeline runs" in text and "| noise.rate |" in text
    rows = [line for line in text.splitlines() if line.startswith("| 0.")]  # points in param order
    assert [row.split("|")[1].strip() for row in rows] == ["0.25", "0.35"]
    assert (root / "reports" / "twoworkers" / "noise_rate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


GCE = '''"""Method ``gce``: generalized cross-entropy (Zhang & Sabuncu, NeurIPS 2018), L_q = (1 - p_y^q) / q."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from labelnoise.engine import Task
from labelnoise.methods.base import Method, register
from labelnoise.schema import rng


@dataclass(frozen=True)
class GCEParams:  # params block student.gce
    q: float = rng(0.0, 1.0, lo_open=True)  # q -> 0: cross-entropy; q = 1: mean absolute error


class GCETask(Task):
    def __init__(self, q: float) -> None:
        super().__init__()
        self.q = q

    def __call__(self, model, xb, yb, *, step, idx=None):
        logits = model(xb).float()  # (B, K)
        p = F.softmax(logits, dim=1).gather(1, yb[:, None]).squeeze(1).clamp_min(1e-7)  # (B,) p of the given label
        per_example = (1.0 - p**self.q) / self.q  # (B,)
        return {"loss": per_example.mean(), "logits": logits, "per_example": per_example.detach()}


METHOD = register(Method(name="gce", display="GCE", summary="generalized cross-entropy", params=GCEParams,
                         task=lambda ctx: GCETask(ctx.params.q)))
'''


def test_the_pipeline_follows_the_method_a_ce_student_trains_no_mentor_and_ignores_its_params(
        project: tuple[Path, dict[str, str]]) -> None:
    """The DAG follows the method: a CE run trains no mentor (its record says there is none), and a change to a
    mentor param then leaves the CE student, its correction and evaluation up to date."""
    import yaml

    root, env = project
    saved = (root / "params.yaml").read_text()
    try:
        params = yaml.safe_load(saved)
        params["student"]["method"] = "ce"
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        assert "train_student" in _ran(sh(["dvc", "repro"], root, env).stdout)
        assert json.loads((root / "reports/mentor.json").read_text())["kind"] is None
        assert not list((root / "reports" / "mentor").glob("*.png"))
        params["mentor"]["hidden"] = params["mentor"]["hidden"] + 3  # a mentor param the CE student never reads
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        status = sh(["dvc", "status"], root, env).stdout
        assert "pretrain_mentor" in status and "train_student" not in status, status
        assert _ran(sh(["dvc", "repro"], root, env).stdout) == ["pretrain_mentor"]
    finally:
        (root / "params.yaml").write_text(saved)
        sh(["dvc", "repro"], root, env)  # the default run's outputs back, from DVC's run cache


def test_a_new_method_is_one_file_and_its_params_block(project: tuple[Path, dict[str, str]]) -> None:
    """A new file in labelnoise/methods/ and a `student.gce` block: `dvc repro` re-runs what depends on them and
    the method trains, is evaluated, logged and tabled like the shipped ones; no other file of the project changes."""
    import yaml

    root, env = project
    (root / "labelnoise" / "methods" / "gce.py").write_text(GCE)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["student"]["method"] = "gce"
    params["student"]["gce"] = {"q": 0.7}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = sh(["dvc", "repro"], root, env)
    assert "Running stage 'train_student'" in out.stdout
    assert json.loads((root / "reports/mentor.json").read_text())["kind"] is None  # gce uses no mentor: none trained
    metrics = json.loads((root / "reports/metrics.json").read_text())
    assert metrics["method"] == "gce" and metrics["test_acc"] > 0.5
    assert f"| GCE | {metrics['test_acc']:.2%} |" in sh([sys.executable, "cli.py", "compare", "--methods"], root,
                                                        env).stdout
    client, exp_id = _client(root)
    (train,) = client.search_runs([exp_id], "attributes.run_name = 'train_student' and params.`student.method` = 'gce'")
    assert train.data.params["student.gce.q"] == "0.7" and train.info.status == "FINISHED"
    code = sh(["git", "status", "--porcelain", "--untracked-files=all", "--", "cli.py", "dvc.yaml", "labelnoise",
               "stages", "presets"], root, env).stdout
    assert sorted(line[3:] for line in code.splitlines()) == ["labelnoise/methods/gce.py"], code
    assert sh(["git", "diff", "--name-only", "--", "params.yaml"], root, env).stdout.split() == ["params.yaml"]


UNIFORM = '''"""Noise model ``uniform``: a fraction ``level`` of each class gets a label drawn uniformly from all K
classes, the true one included."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from labelnoise.noise.base import Applied, NoiseInputs, NoiseModel, by_class, n_to_change, register
from labelnoise.schema import rng


@dataclass(frozen=True)
class UniformParams:  # the params block noise.uniform
    level: float = rng(0.0, 1.0)  # fraction of each class whose label is redrawn


def apply(inputs: NoiseInputs) -> Applied:
    k, level = inputs.num_classes, inputs.params.level

    def rule(c: int, n_c: int, gen: np.random.Generator) -> np.ndarray:  # (m_c,) new labels, c itself included
        return gen.integers(0, k, size=n_to_change(level, n_c))

    return Applied(by_class(inputs, rule), requested_rate=level * (k - 1) / k, rate_source="noise.uniform.level")


MODEL = register(NoiseModel(name="uniform", summary="labels redrawn uniformly from all K classes",
                            class_conditional=True, apply=apply, params=UniformParams))
'''


def test_a_new_noise_model_is_one_file_and_its_params_block(project: tuple[Path, dict[str, str]]) -> None:
    """A new file in labelnoise/noise/ and a `noise.uniform` block: `dvc repro` re-runs inject_noise and what follows,
    and the model is reported, logged and plotted like the shipped ones; no other file of the project changes."""
    root, env = project
    sh(["git", "add", "-A"], root, env)  # the project as the tests before left it
    sh(["git", "commit", "-qm", "before the new noise model", "--allow-empty"], root, env)
    (root / "labelnoise" / "noise" / "uniform.py").write_text(UNIFORM)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["noise"]["kind"] = "uniform"
    params["noise"]["uniform"] = {"level": 0.5}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    plot = root / "reports" / "noise_transition.png"
    plot.unlink()
    out = sh(["dvc", "repro"], root, env)
    assert "Running stage 'inject_noise'" in out.stdout and "Running stage 'train_student'" in out.stdout
    report = json.loads((root / "reports" / "noise.json").read_text())
    assert report["kind"] == "uniform" and report["rate_source"] == "noise.uniform.level"
    assert report["requested_rate"] == pytest.approx(0.45)  # 0.5 x 9/10 of the redrawn labels change
    assert 0.35 < report["realised_rate"] < 0.55
    noisy = np.load(root / "data" / "noisy.npz")
    assert report["n_changed"] == int(noisy["mask"].sum())
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    client, exp_id = _client(root)
    runs = client.search_runs([exp_id], "attributes.run_name = 'inject_noise' and params.`noise.kind` = 'uniform'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["noise.uniform.level"] == "0.5" and runs[0].data.tags["noise"] == "uniform"
    code = sh(["git", "status", "--porcelain", "--untracked-files=all", "--", "cli.py", "dvc.yaml", "labelnoise",
               "stages", "presets"], root, env).stdout
    assert sorted(line[3:] for line in code.splitlines()) == ["labelnoise/noise/uniform.py"], code
    assert sh(["git", "diff", "--name-only", "--", "params.yaml"], root, env).stdout.split() == ["params.yaml"]
