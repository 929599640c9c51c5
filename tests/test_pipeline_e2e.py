"""End to end: `dvc repro` of the tiny preset in two temporary copies of the repository, at once.

In the first: the outputs and the MLflow records (through the MLflow client), a second `dvc repro` that re-runs
and records nothing, special files in data/own, outputs brought back by `dvc checkout`. Both: the same params and
seeds give identical outputs. Then in the second: `dvc exp run` and a sweep through two queue workers are tracked,
a new method is one file and its params block (and the DAG follows it: no mentor for a method that uses none),
and so is a new noise model.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from labelnoise.scaffold import sh, tiny_project

STAGES = ["download", "inject_noise", "estimate_noise", "pretrain_mentor", "train_student", "correct_labels",
          "evaluate"]


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory) -> tuple[tuple[Path, dict[str, str]], Path]:
    """Two independent copies of the project, each after its own `dvc repro` of the same params (run at the same
    time: most of a tiny stage is one core's interpreter start-up). The first is the one the tests work in."""
    first, second = tmp_path_factory.mktemp("project"), tmp_path_factory.mktemp("second")
    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(tiny_project, first), pool.submit(tiny_project, second)]
        env, _ = (run.result() for run in runs)
    return (first, env), second


@pytest.fixture(scope="module")
def project(projects: tuple[tuple[Path, dict[str, str]], Path]) -> tuple[Path, dict[str, str]]:
    return projects[0]


def _ran(out: str) -> list[str]:
    """The stages a `dvc repro` ran, but own_files (it lists data/own at every repro)."""
    return [m for m in re.findall(r"Running stage '(\w+)'", out) if m != "own_files"]


def _client(root: Path) -> tuple[MlflowClient, str]:
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("labelnoise")
    assert exp is not None, "experiment not created in the repo-root store"
    return client, exp.experiment_id


def test_outputs_and_metrics(project: tuple[Path, dict[str, str]]) -> None:
    root, env = project
    for rel in ["data/prepared.npz", "data/noisy.npz", "models/mentor.pt", "models/student.pt",
                "models/student_best.pt", "models/student_weights.npz", "data/corrected.npz", "models/final.pt",
                "reports/mentor.json",
                "reports/correction.json", "reports/noise.json", "reports/noise_transition.png",
                "reports/noise_estimate.json", "reports/noise_estimate.png", "reports/plots/noise_estimate.png",
                "reports/curves/train_student.csv", "reports/plots/confusion.png", "reports/plots/curves.png",
                "reports/label_issues.csv", "reports/plots/label_issues.png"]:
        assert (root / rel).is_file(), rel
    metrics = json.loads((root / "reports/metrics.json").read_text())
    # 10 classes, 40% symmetric noise, a few epochs on digits: well above chance
    assert 0.5 < metrics["test_acc"] <= 1.0
    assert 0.0 < metrics["test_acc_best_clean"] <= 1.0
    assert 0.5 < metrics["corrected_test_acc"] <= 1.0 and 0.0 <= metrics["detection_auroc"] <= 1.0
    table = sh([sys.executable, "cli.py", "compare", "--methods"], root, env).stdout  # every method on the setting
    assert f"| SPADE-DD | {metrics['test_acc']:.2%} |" in table  # the default method: this run
    noise = json.loads((root / "reports/noise.json").read_text())
    assert abs(noise["realised_rate"] - 0.4) < 0.01
    # the noise estimate, made without the truth, is near the realised rate (the confusion inversion's)
    assert metrics["noise_estimate"]["use"] == "confusion" and abs(metrics["estimated_rate_error"]) < 0.1
    # the default's auto settings come from it: the DD mentor's percentile and its copy's noise
    estimate = json.loads((root / "reports/noise_estimate.json").read_text())
    mentor = json.loads((root / "reports/mentor.json").read_text())
    assert mentor["auto"]["mentor.percentile"] == pytest.approx(min(max(1 - estimate["rate"], 0.5), 0.8))
    assert mentor["dd_noise_kind"] == "transition" and "mentor.dd_noise_kind" in mentor["auto"]
    # the label-issues table: every train label once, and its flags find most of the injected wrong labels
    with open(root / "reports/label_issues.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    mask = np.load(root / "data/noisy.npz")["mask"]
    assert sorted(int(r["index"]) for r in rows) == list(range(mask.size))
    flagged = np.array([int(r["index"]) for r in rows if r["flagged"] == "yes"])
    assert mask[flagged].mean() > 0.8 and mask[flagged].sum() > 0.6 * mask.sum()  # precision, recall
    assert metrics["label_issues_precision"] == pytest.approx(mask[flagged].mean())
    for png in (root / "reports").rglob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# Timing and machine facts in the reports: the only values allowed to differ between two identical runs.
VOLATILE_KEYS = ("time_s", "seconds", "timings", "throughput", "device")
# methods.md quotes each row's MLflow run id and start time
VOLATILE_TEXT = re.compile(r"`[0-9a-f]{8}`|\d{4}-\d{2}-\d{2} \d{2}:\d{2}")


def _output_digests(root: Path) -> dict[str, str]:
    """sha256 of every output file (data/, models/ without resume checkpoints, reports/); JSON reports
    without their timing keys."""
    digests = {}
    for top in ("data", "models", "reports"):
        for path in sorted((root / top).rglob("*")):
            rel = path.relative_to(root).as_posix()
            if not path.is_file() or rel.startswith(("models/checkpoints/", "data/raw/")):
                continue
            data = path.read_bytes()
            if path.suffix == ".json":
                data = json.dumps(_without_volatile(json.loads(data)), sort_keys=True).encode()
            elif path.suffix == ".md":
                data = VOLATILE_TEXT.sub("", data.decode()).encode()
            digests[rel] = hashlib.sha256(data).hexdigest()
    return digests


def _without_volatile(obj: object) -> object:
    if isinstance(obj, dict):
        return {k: _without_volatile(v) for k, v in obj.items() if not any(w in k for w in VOLATILE_KEYS)}
    if isinstance(obj, list):
        return [_without_volatile(v) for v in obj]
    return obj


def _pipeline_metrics(root: Path) -> dict[str, dict[str, float]]:
    """Every metric of every run of the (only) pipeline execution, by stage; timing metrics left out."""
    client, exp_id = _client(root)
    (parent,) = client.search_runs([exp_id], "tags.`labelnoise.kind` = 'pipeline'")
    children = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    return {run.info.run_name: {k: v for k, v in run.data.metrics.items() if not any(w in k for w in VOLATILE_KEYS)}
            for run in [parent, *children]}


def test_same_params_and_seeds_give_identical_outputs_and_metrics(
        projects: tuple[tuple[Path, dict[str, str]], Path]) -> None:
    """Determinism: a second, independent `dvc repro` of the same params in a fresh copy gives bit-identical
    data, noisy labels, mentor, models, plots and reports, and the same value of every MLflow metric."""
    (first, _), second = projects
    a, b = _output_digests(first), _output_digests(second)
    assert len(a) >= 20 and a.keys() == b.keys()
    assert [rel for rel in a if a[rel] != b[rel]] == []
    assert _pipeline_metrics(first) == _pipeline_metrics(second)


def test_mlflow_parent_and_stage_runs(project: tuple[Path, dict[str, str]]) -> None:
    root, _ = project
    client, exp_id = _client(root)
    parents = client.search_runs([exp_id], "tags.`labelnoise.kind` = 'pipeline'")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["train.lr"] == "0.05" and parent.data.params["data.dataset"] == "digits"
    assert parent.data.tags["dataset"] == "digits" and parent.data.tags["noise"] == "symmetric"
    assert len(parent.data.tags["git_commit"]) == 40
    assert "test_acc" in parent.data.metrics
    children = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    by_name = {r.info.run_name: r for r in children}
    assert sorted(by_name) == sorted(STAGES)
    assert all(r.info.status == "FINISHED" for r in children)
    train = by_name["train_student"]
    assert train.data.params["train.epochs"] == "4"
    history = client.get_metric_history(train.info.run_id, "clean_acc")
    assert [m.step for m in history] == [1, 2, 3, 4]
    artifacts = {a.path for a in client.list_artifacts(by_name["evaluate"].info.run_id)}
    assert "metrics.json" in artifacts and any(a.endswith("confusion.png") for a in artifacts)
    assert client.list_artifacts(by_name["inject_noise"].info.run_id)


def test_mlflow_training_view_names_datasets_and_registered_models(project: tuple[Path, dict[str, str]]) -> None:
    """What the MLflow UI and downstream tools see: a model-training experiment, a parent run named after what
    ran, the data as dataset inputs (digest = the file's md5, as in dvc.lock), and the student and the final
    model registered as versions of labelnoise-digits, the final one under the alias `champion`, which
    mlflow.pyfunc loads and which predicts what models/final.pt and `labelnoise predict` predict."""
    import mlflow
    import torch

    from labelnoise.datasets import load_prepared
    from labelnoise.models import load_model

    root, env = project
    client, exp_id = _client(root)
    assert client.get_experiment(exp_id).tags["mlflow.experimentKind"] == "custom_model_development"
    (parent,) = client.search_runs([exp_id], "tags.`labelnoise.kind` = 'pipeline'")
    assert parent.info.run_name == "SPADE-DD · symmetric 40 % · digits · cnn"
    assert parent.data.tags["mlflow.source.git.commit"] == parent.data.tags["git_commit"]
    for key in ("test_acc", "corrected_test_acc", "detection_auroc", "recovered_label_acc", "estimated_rate_error"):
        assert key in parent.data.metrics, key
    inputs = {d.dataset.name: d.dataset.digest for d in client.get_run(parent.info.run_id).inputs.dataset_inputs}
    md5 = {rel: hashlib.md5((root / rel).read_bytes()).hexdigest() for rel in ("data/prepared.npz",
                                                                             "data/noisy.npz",
                                                                             "data/corrected.npz")}
    assert inputs == {"digits": md5["data/prepared.npz"], "digits noisy labels (symmetric)": md5["data/noisy.npz"],
                      "digits corrected labels": md5["data/corrected.npz"]}
    versions = client.search_model_versions("name = 'labelnoise-digits'")
    assert sorted(v.tags["kind"] for v in versions) == ["label-corrected", "student"]
    champion = client.get_model_version_by_alias("labelnoise-digits", "champion")
    assert champion.tags["kind"] == "label-corrected"
    assert float(champion.tags["test_acc"]) == pytest.approx(parent.data.metrics["corrected_test_acc"], abs=1e-4)
    assert champion.description == (root / "reports" / "model_card.md").read_text()  # the card goes with it

    # the registered model, `labelnoise predict` and models/final.pt agree: on arrays, and on image files of
    # another size (each converted as the training images were)
    from PIL import Image

    import labelnoise

    prepared = load_prepared(root / "data" / "prepared.npz")
    images = prepared.images[prepared.test_idx]  # uint8 (n, C, H, W)
    with torch.no_grad():
        expected = load_model(root / "models" / "final.pt")(torch.from_numpy(images)).argmax(dim=1).numpy()
    files = []
    for i, image in enumerate(images[:6]):
        files.append(root / f"digit{i}.png")
        Image.fromarray(image[0]).resize((24, 24), Image.Resampling.NEAREST).save(files[-1])
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    try:
        loaded = mlflow.pyfunc.load_model("models:/labelnoise-digits@champion")
        table = loaded.predict(images)
        from_files = loaded.predict(pd.DataFrame({"path": [str(f) for f in files]}))
    finally:
        mlflow.set_tracking_uri(previous)
    assert list(table["predicted"]) == [prepared.classes[i] for i in expected]
    by_file = labelnoise.predict(root / "models" / "final.pt", files)
    assert from_files.equals(by_file)
    out = sh([sys.executable, "cli.py", "predict", *map(str, files), "--model", "models:/labelnoise-digits@champion"],
             root, env).stdout
    assert [row.split(",")[1] for row in out.splitlines()[1:]] == list(by_file["predicted"])


def test_second_repro_reruns_nothing(project: tuple[Path, dict[str, str]]) -> None:
    root, env = project
    client, exp_id = _client(root)
    before = len(client.search_runs([exp_id]))
    out = sh(["dvc", "repro"], root, env)
    assert _ran(out.stdout) == []
    assert len(client.search_runs([exp_id])) == before


def test_a_named_pipe_or_a_device_in_data_own_is_refused_and_dvc_never_waits_on_it(
        project: tuple[Path, dict[str, str]]) -> None:
    """DVC would read a file it hashes to the end: a named pipe blocks it, a link to /dev/zero never ends. The
    stages that read data/own depend on its listing instead; the listing refuses such a file in one line."""
    import os
    import subprocess

    root, env = project
    own = root / "data" / "own"
    specials = ((own / "labels.csv", "a named pipe (FIFO)"), (own / "images" / "x.png", "a character device"))
    for special, kind in specials:
        special.parent.mkdir(exist_ok=True)
        os.mkfifo(special) if kind.startswith("a named pipe") else special.symlink_to("/dev/zero")
        try:
            status = subprocess.run(["dvc", "status"], cwd=root, env=env, capture_output=True, text=True, timeout=120)
            assert status.returncode == 0, status.stderr
            repro = subprocess.run(["dvc", "repro"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
            assert repro.returncode != 0
            errors = [line for line in (repro.stdout + repro.stderr).splitlines() if line.startswith("error:")]
            assert errors == [f"error: data/own: {special} is {kind}, not a file: remove it from {own} or replace "
                              "it by the file itself"], repro.stdout + repro.stderr
        finally:
            special.unlink()
    assert _ran(sh(["dvc", "repro"], root, env).stdout) == []


def test_outputs_of_a_failed_or_killed_repro_come_back_with_dvc_checkout(project: tuple[Path, dict[str, str]]) -> None:
    """DVC deletes a stage's outputs before it runs the stage's command, so a stage that then fails or is killed
    under `dvc repro` leaves them missing (the stage's own all-or-nothing write never gets its chance). Every
    output is cached (none is `cache: false`), so `dvc checkout` brings all of them back, byte for byte."""
    import os
    import signal
    import subprocess

    root, env = project
    before, params = _output_digests(root), (root / "params.yaml").read_text()
    try:
        broken = yaml.safe_load(params)
        broken["train"]["epochs"] = 0
        (root / "params.yaml").write_text(yaml.safe_dump(broken, sort_keys=False))
        failed = subprocess.run(["dvc", "repro"], cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert failed.returncode != 0 and "train.epochs: must be >= 1" in failed.stdout + failed.stderr
    finally:
        (root / "params.yaml").write_text(params)
    assert _output_digests(root) != before  # what DVC does: the failed stage's outputs are gone
    sh(["dvc", "checkout"], root, env)
    assert _output_digests(root) == before

    ckpt = root / "models" / "checkpoints" / "train_student.pt"
    ckpt.unlink(missing_ok=True)
    proc = subprocess.Popen(["dvc", "repro", "-f", "-s", "train_student"], cwd=root, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # dvc and the stage's process, mid-training
    proc.wait(timeout=60)
    assert not (root / "models" / "student.pt").exists()
    sh(["dvc", "checkout"], root, env)
    assert _output_digests(root) == before
    assert _ran(sh(["dvc", "repro"], root, env).stdout) == []


# ----------------------------------------------------------------------------- extending the second project
# The tests below work in the second copy, once the determinism test above has compared it: they go in this
# order, each on what the one before left (`dvc exp run`, a sweep through two queue workers, the DAG following the
# method, a new method and a new noise model as one file and a params block each).
@pytest.fixture(scope="module")
def second(projects: tuple[tuple[Path, dict[str, str]], Path]) -> tuple[Path, dict[str, str]]:
    (_, env), root = projects
    return root, env


def test_dvc_experiment_is_tracked(second: tuple[Path, dict[str, str]]) -> None:
    """`dvc exp run` in the workspace is one pipeline run named after the experiment, with the stages DVC ran as its
    children (here only evaluate, the one stage that reads the param; the sweep below changes the noise)."""
    root, env = second
    sh(["dvc", "exp", "run", "-n", "lower-threshold", "-S", "evaluate.detection_threshold=0.4"], root, env)
    client, exp_id = _client(root)
    runs = client.search_runs([exp_id], "tags.dvc_exp_name = 'lower-threshold' and tags.`labelnoise.kind` = "
                              "'pipeline'")
    assert len(runs) == 1
    assert runs[0].data.params["evaluate.detection_threshold"] == "0.4"
    assert runs[0].info.run_name == "SPADE-DD · symmetric 40 % · digits · cnn · lower-threshold"  # another name
    children = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{runs[0].info.run_id}'")
    assert [r.info.run_name for r in children] == ["evaluate"]


def test_sweep_through_two_queue_workers_loses_no_run_and_reports(second: tuple[Path, dict[str, str]]) -> None:
    """`cli.py sweep` queues one `dvc exp` per point and starts two queue workers at once, both writing the
    repo-root SQLite store: both executions are recorded completely under the study tag (parent and the
    stage that ran, all FINISHED, with their test accuracy), and `cli.py report` builds the study report. The
    swept param is one only `evaluate` reads, so each point runs one stage (DVC checks the others out). Whether
    the two executions overlap depends on the machine's load (on a loaded 2-core machine one can end before the
    other starts), so it is not asserted."""
    root, env = second
    out = sh([sys.executable, "cli.py", "sweep", "twoworkers", "evaluate.detection_threshold=0.3,0.35", "--jobs",
              "2"], root, env)
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
    assert sorted(r.data.params["evaluate.detection_threshold"] for r in runs) == ["0.3", "0.35"]
    for parent in runs:
        assert parent.info.status == "FINISHED" and 0.0 < parent.data.metrics["test_acc"] <= 1.0
        children = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        # thresholds no earlier run used (DVC's run cache has none of them): evaluate ran, nothing else did
        assert [(r.info.run_name, r.info.status) for r in children] == [("evaluate", "FINISHED")]

    sh([sys.executable, "cli.py", "report", "twoworkers"], root, env)
    text = (root / "reports" / "twoworkers.md").read_text()
    assert "2 points from 2 finished pipeline runs" in text and "| evaluate.detection_threshold |" in text
    rows = [line for line in text.splitlines() if line.startswith("| 0.")]  # points in param order
    assert [row.split("|")[1].strip() for row in rows] == ["0.3", "0.35"]
    assert (root / "reports" / "twoworkers" / "evaluate_detection_threshold.png").read_bytes()[:8] == \
        b"\x89PNG\r\n\x1a\n"


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


def test_a_new_method_is_one_file_and_its_params_block_and_the_dag_follows_it(
        second: tuple[Path, dict[str, str]]) -> None:
    """A new file in labelnoise/methods/ and a `student.gce` block: `dvc repro` re-runs what depends on them and
    the method trains, is evaluated, logged and tabled like the shipped ones; no other file of the project changes.
    The DAG follows the method: gce uses no mentor, so none is trained (the record says there is none), and a
    change to a mentor param then leaves the student, its correction and evaluation up to date."""
    root, env = second
    (root / "labelnoise" / "methods" / "gce.py").write_text(GCE)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["student"]["method"] = "gce"
    params["student"]["gce"] = {"q": 0.7}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = sh(["dvc", "repro"], root, env)
    assert "Running stage 'train_student'" in out.stdout
    assert json.loads((root / "reports/mentor.json").read_text())["kind"] is None  # gce uses no mentor: none trained
    assert not list((root / "reports" / "mentor").glob("*.png"))
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
    params["mentor"]["hidden"] = params["mentor"]["hidden"] + 3  # a mentor param the gce student never reads
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = sh(["dvc", "status"], root, env).stdout
    assert "pretrain_mentor" in status and "train_student" not in status, status
    assert _ran(sh(["dvc", "repro"], root, env).stdout) == ["pretrain_mentor"]


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


def test_a_new_noise_model_is_one_file_and_its_params_block(second: tuple[Path, dict[str, str]]) -> None:
    """A new file in labelnoise/noise/ and a `noise.uniform` block: `dvc repro` re-runs inject_noise, DVC then
    finds every stage that follows out of date (they read the new labels), and the model is reported, logged and
    plotted like the shipped ones; no other file of the project changes."""
    root, env = second
    sh(["git", "add", "-A"], root, env)  # the project as the tests before left it
    sh(["git", "commit", "-qm", "before the new noise model", "--allow-empty"], root, env)
    (root / "labelnoise" / "noise" / "uniform.py").write_text(UNIFORM)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["noise"]["kind"] = "uniform"
    params["noise"]["uniform"] = {"level": 0.5}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    plot = root / "reports" / "noise_transition.png"
    plot.unlink()
    assert _ran(sh(["dvc", "repro", "inject_noise"], root, env).stdout) == ["inject_noise"]
    status = sh(["dvc", "status"], root, env).stdout
    assert all(f"{stage}:" in status for stage in STAGES[2:]), status  # each reads data/noisy.npz
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
