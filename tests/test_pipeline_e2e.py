"""End to end: `dvc repro` of the tiny preset in a temporary copy of the repository.

Checks the outputs and the MLflow records through the MLflow client, that a second
`dvc repro` re-runs nothing and records nothing, and that `dvc exp run -S` is tracked.
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
    mlflow.pyfunc loads and which predicts what models/final.pt predicts."""
    import mlflow
    import torch

    from labelnoise.datasets import load_prepared
    from labelnoise.models import load_model

    root, _ = project
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

    prepared = load_prepared(root / "data" / "prepared.npz")
    images = prepared.images[prepared.test_idx]  # uint8 (n, C, H, W)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    try:
        loaded = mlflow.pyfunc.load_model("models:/labelnoise-digits@champion")
        predicted = np.asarray(loaded.predict(images)).argmax(axis=1)
    finally:
        mlflow.set_tracking_uri(previous)
    with torch.no_grad():
        expected = load_model(root / "models" / "final.pt")(torch.from_numpy(images)).argmax(dim=1).numpy()
    assert np.array_equal(predicted, expected)


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
