"""Data-parallel training through torchrun (2 CPU processes, gloo): one global batch split over 2 ranks computes
what one process computes on it (exactly, up to float rounding, for a model without batch norm); train-student,
the DD mentor's pretraining and label correction run under torchrun with rank 0 alone writing and logging; the
stages that refuse it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn
from typer.testing import CliRunner

from labelnoise import distributed
from labelnoise.scaffold import clean_env
from tests.helpers import new_store

REPO = Path(__file__).resolve().parent.parent
TORCHRUN = Path(sys.executable).parent / "torchrun"


def _env(root: Path) -> dict[str, str]:
    return clean_env() | {"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", "OMP_NUM_THREADS": "1",
                          "PYTHONPATH": str(REPO)}


def _torchrun(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node=2", *args], cwd=root, env=_env(root),
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny preset up to a trained student (stages run in this process, one thread)."""
    from cli import app

    root = tmp_path_factory.mktemp("ddp")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    mp.setenv("MLFLOW_TRACKING_URI", new_store(root))
    previous = torch.get_num_threads()
    try:
        runner = CliRunner()
        assert runner.invoke(app, ["preset", "tiny", "--params", str(REPO / "params.yaml"),
                                   "--out", "params.yaml"]).exit_code == 0
        for stage in ("download", "inject-noise", "estimate-noise", "pretrain-mentor", "train-student"):
            result = runner.invoke(app, [stage, "-S", "base.threads=1"])
            assert result.exit_code == 0, f"{stage}: {result.output}"
    finally:
        mp.undo()
        torch.set_num_threads(previous)
    return root


# ----------------------------------------------------------------------------- one step, split or not
class Linear(nn.Module):
    """No batch norm: a rank's half of the batch contributes to the gradient exactly what it does unsplit."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.float().flatten(1) / 255.0)  # (B, 3)


def equivalence_case(method: str) -> dict[str, Any]:
    """Two epochs of ``method`` (fp32, 6 global batches of 16 an epoch, PD mentor refitted every epoch, the
    sampling layer on); what one process or a torchrun group computes. Returns rank 0's weights and records."""
    from tests.test_spade import config, new_mentor, noisy_view, run_fit

    distributed.init("cpu")
    cfg = config({"method": method, "epochs": 2, "mentor_update": "every_k", "mentor_update_every": 1,
                  "sample_weights": True, "weights_at": [0.5, 1.0]}, {"kind": "pd"})
    data, _, _ = noisy_view(rate=0.3)
    torch.manual_seed(0)
    result = run_fit(cfg, data, new_mentor(cfg), model=Linear())
    return {"model": result.model.state_dict(), "history": result.history, "weights": result.weights,
            "refits": result.extra.get("mentor_updates", [])}


WORKER = """import sys
from pathlib import Path
import torch
from labelnoise import distributed
from tests.test_distributed import equivalence_case

out = equivalence_case(sys.argv[1])
if distributed.is_main():
    torch.save(out, Path(sys.argv[2]))
"""


@pytest.mark.parametrize("method", ["ce", "spade"])
def test_two_ranks_compute_what_one_process_computes(method: str, tmp_path: Path, one_thread: None) -> None:
    """Each global mini-batch split over 2 gloo ranks: averaged gradients, the mentor's l_pt, weights, sampling
    draws and refits on the gathered batch, and the per-example records merged, equal one process's."""
    (tmp_path / "worker.py").write_text(WORKER)
    out = _torchrun(tmp_path, "worker.py", method, "two.pt")
    assert out.returncode == 0, out.stderr[-3000:]
    two = torch.load(tmp_path / "two.pt", weights_only=False)
    one = equivalence_case(method)
    for key, value in one["model"].items():
        torch.testing.assert_close(two["model"][key], value, rtol=1e-4, atol=1e-6)
    assert len(two["history"]) == len(one["history"]) == 2
    for a, b in zip(two["history"], one["history"], strict=True):
        assert a.keys() == b.keys()
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6)
    for key in ("loss", "loss_diff", "weight"):  # every example seen by one rank, merged on all
        np.testing.assert_allclose(two["weights"][key], one["weights"][key], rtol=1e-4, atol=1e-6)
    assert len(two["refits"]) == len(one["refits"])


def test_train_student_under_torchrun(workspace: Path, tmp_path: Path) -> None:
    """SPADE on the tiny preset with 2 ranks: it learns, rank 0 alone logs and writes, every per-example record is
    merged from both ranks, one MLflow stage run."""
    root = tmp_path / "copy"
    shutil.copytree(workspace, root, ignore=shutil.ignore_patterns("mlflow.db", "checkpoints"))
    out = _torchrun(root, str(REPO / "cli.py"), "train-student")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stderr.count("epoch 4/4") == 1  # rank 0 alone logs
    last = (root / "reports" / "curves" / "train_student.csv").read_text().strip().splitlines()[-1].split(",")
    assert float(last[3]) > 0.5  # clean-subset accuracy far above chance (0.1): 40 % of the labels are wrong
    weights = np.load(root / "models" / "student_weights.npz")
    assert not np.isnan(weights["weight"]).any() and not np.isnan(weights["loss"]).any()
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("labelnoise")
    runs = client.search_runs([exp.experiment_id], filter_string="attributes.run_name = 'train_student'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert not list(root.rglob("*.tmp*"))


def test_the_dd_mentor_pretrains_under_torchrun(workspace: Path, tmp_path: Path) -> None:
    """The DD mentor's feature-recording student trains data-parallel; rank 0 alone writes and logs."""
    root = tmp_path / "copy"
    shutil.copytree(workspace, root, ignore=shutil.ignore_patterns("mlflow.db", "mentor*", "checkpoints"))
    out = _torchrun(root, str(REPO / "cli.py"), "pretrain-mentor")
    assert out.returncode == 0, out.stderr[-3000:]
    assert (root / "models" / "mentor.pt").is_file() and (root / "reports" / "mentor.json").is_file()
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("labelnoise").experiment_id])[:1]
    runs = client.search_runs([run.info.experiment_id], filter_string="attributes.run_name = 'pretrain_mentor'")
    assert len(runs) == 1 and 0.0 <= runs[0].data.metrics["auroc"] <= 1.0


def test_label_correction_under_torchrun(workspace: Path, tmp_path: Path) -> None:
    """Both phases of joint optimization train data-parallel: every example's softmax merged into the label
    buffer, rank 0 alone writes the corrected labels and the final model and logs one stage run."""
    root = tmp_path / "copy"
    shutil.copytree(workspace, root, ignore=shutil.ignore_patterns("mlflow.db", "checkpoints"))
    out = _torchrun(root, str(REPO / "cli.py"), "correct-labels")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stderr.count("retrain 4/4") == 1
    corrected = np.load(root / "data" / "corrected.npz")
    assert np.isfinite(corrected["soft"]).all() and np.allclose(corrected["soft"].sum(axis=1), 1.0, atol=1e-4)
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("labelnoise")
    runs = client.search_runs([exp.experiment_id], filter_string="attributes.run_name = 'correct_labels'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"


def test_stages_without_distributed_support_refuse_torchrun(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cli import app

    monkeypatch.chdir(workspace)
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun sets for every rank
    result = CliRunner().invoke(app, ["evaluate"])
    assert result.exit_code == 2
    assert "error: stage evaluate runs in one process: start it without torchrun" in result.output
