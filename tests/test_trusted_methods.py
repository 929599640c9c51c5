"""The trusted-data baselines (issue 20): ``clean_only``, ``ce_then_finetune`` and ``glc`` (gold loss correction):
the corruption estimate and the corrected loss as mathematics, then each method through stage train_student on
the tiny preset, with the phase reuse that makes a killed run cheap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from cli import app
from labelnoise.engine import load_weights
from labelnoise.io import load_json
from labelnoise.methods.glc import GoldCorrectedTask
from labelnoise.noise import load_noisy
from labelnoise.noise_estimate import glc_transition
from tests.helpers import new_store, tiny_workspace

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()


# ----------------------------------------------------------------------------- GLC's estimate and loss
def test_the_estimate_recovers_a_known_corruption_and_its_rows_sum_to_one() -> None:
    t = np.array([[0.6, 0.4, 0.0], [0.0, 0.8, 0.2], [0.1, 0.1, 0.8]])
    labels = np.repeat(np.arange(3), [5, 7, 4])
    probs = t[labels]  # a noisy-label model that is exactly p(ỹ | y) for every trusted example
    np.testing.assert_allclose(glc_transition(probs, labels, 3), t)
    rng = np.random.default_rng(0)
    noisy = rng.dirichlet(np.ones(3), size=labels.size)
    c = glc_transition(noisy, labels, 3)
    np.testing.assert_allclose(c.sum(axis=1), 1.0)
    np.testing.assert_allclose(c[1], noisy[labels == 1].mean(axis=0))
    # a class without trusted examples: nothing is known of it, so it is left uncorrupted
    np.testing.assert_array_equal(glc_transition(noisy[labels != 2], labels[labels != 2], 3)[2], [0, 0, 1])


class Fixed(nn.Module):
    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[x.long().view(-1)]


def test_the_corrected_loss_is_cross_entropy_through_c_for_noisy_and_plain_for_trusted() -> None:
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3, 1, 2])
    x, idx = torch.arange(6), torch.arange(6)  # positions 0..3 noisy, 4..5 trusted
    c = np.random.default_rng(1).dirichlet(np.ones(4), size=4)
    out = GoldCorrectedTask(c, n_noisy=4)(Fixed(logits), x, labels, step=0, idx=idx)
    p = torch.softmax(logits, dim=1)
    noisy = -torch.log((p @ torch.as_tensor(c, dtype=torch.float32))[torch.arange(6), labels])
    plain = F.cross_entropy(logits, labels, reduction="none")
    expected = torch.cat([noisy[:4], plain[4:]])
    torch.testing.assert_close(out["per_example"], expected)
    torch.testing.assert_close(out["loss"], expected.mean())
    # with C the identity the correction is no correction: plain cross-entropy for everyone
    same = GoldCorrectedTask(np.eye(4), n_noisy=4)(Fixed(logits), x, labels, step=0, idx=idx)
    torch.testing.assert_close(same["loss"], plain.mean())


# ----------------------------------------------------------------------------- the methods on the tiny preset
@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny preset's data, noisy labels and mentor (digits, 40 % symmetric noise, 200 trusted examples)."""
    root = tiny_workspace(tmp_path_factory.mktemp("trusted"), ("download", "inject-noise", "estimate-noise",
                                                                "pretrain-mentor"))
    return root


@pytest.fixture
def workdir(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tiny)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", new_store(tiny))
    previous = torch.get_num_threads()
    yield tiny
    torch.set_num_threads(previous)


def _stage(stage: str, method: str) -> str:
    result = runner.invoke(app, [stage, "-S", f"student.method={method}", "-S", "base.threads=1"])
    assert result.exit_code == 0, result.output[-3000:]
    return result.output


@pytest.mark.parametrize("method", ["clean_only", "ce_then_finetune", "glc"])
def test_each_trusted_data_method_learns_and_is_evaluated(method: str, workdir: Path) -> None:
    _stage("train-student", method)
    weights = load_weights("models/student_weights.npz")
    mask = load_noisy("data/noisy.npz").mask  # judged here only; training never sees it
    assert weights["method"] == method and weights["loss"].shape[1] == mask.size  # records of the noisy examples
    for stage in ("correct-labels", "evaluate"):
        _stage(stage, method)
    metrics = load_json("reports/metrics.json")
    assert metrics["method"] == method and 0.8 < metrics["test_acc"] <= 1.0  # CE reaches about 0.9 here
    if method == "glc":  # its score (the given label's probability under the estimated corruption) finds the noise
        assert metrics["detection_auroc"] > 0.9
    else:
        assert metrics["detection_auroc"] is None


def test_a_rerun_reuses_the_finished_first_phase(workdir: Path) -> None:
    _stage("train-student", "ce_then_finetune")
    (workdir / "models/checkpoints/train_student.pt").unlink()  # as after a kill before the fine-tune's checkpoint
    again = _stage("train-student", "ce_then_finetune")
    assert "reusing the finished run" in again and "finetune 1/3" in again
    glc = _stage("train-student", "glc")
    assert "glc: estimated corruption matrix" in glc
    assert "reusing the finished run" in _stage("train-student", "glc")
