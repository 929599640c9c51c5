"""Method `cleanlab` (confident learning, the peer baseline): folds, the flagged labels against the truth,
prune and retrain on the tiny preset, evaluate's detection numbers from cleanlab's scores, fold resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli import app
from labelnoise.engine import load_weights
from labelnoise.engine.folds import stratified_folds
from labelnoise.io import load_json
from labelnoise.noise import load_noisy
from tests.helpers import new_store

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()
CLEANLAB = ["-S", "student.method=cleanlab", "-S", "student.cleanlab.folds=2", "-S", "base.threads=1"]


def test_stratified_folds_are_balanced_seeded_and_complete() -> None:
    labels = np.repeat(np.arange(3), [10, 7, 5])
    fold = stratified_folds(labels, 3, seed=0)
    assert fold.shape == labels.shape and set(fold.tolist()) == {0, 1, 2}
    for c in range(3):
        counts = np.bincount(fold[labels == c], minlength=3)
        assert counts.max() - counts.min() <= 1  # every class spread evenly over the folds
    assert np.bincount(fold).max() - np.bincount(fold).min() <= 1
    np.testing.assert_array_equal(fold, stratified_folds(labels, 3, seed=0))
    assert not np.array_equal(fold, stratified_folds(labels, 3, seed=1))
    with pytest.raises(ValueError, match="folds: must be >= 2"):
        stratified_folds(labels, 1, seed=0)


def test_trusted_examples_in_the_train_split_are_never_pruned(tmp_path: Path) -> None:
    from labelnoise.config import from_dict, merge, read_yaml
    from labelnoise.methods.cleanlab import CleanlabParams, prune_and_retrain
    from labelnoise.views import with_trusted
    from tests.test_spade import new_model, noisy_view

    view, _, _ = noisy_view(n_train=60, n_clean=30, rate=0.4)
    # the trusted labels made wrong on purpose: a prune by noise rate would flag them, but they are trusted
    view = with_trusted(view.__class__(**{**view.__dict__, "y_clean": (view.y_clean + 1) % 3}))
    recipe = from_dict(merge(read_yaml(REPO / "params.yaml"), {"train": {
        "epochs": 2, "batch_size": 16, "eval_batch_size": 64, "precision": "fp32", "channels_last": "off"}})).train
    with torch.random.fork_rng():
        result = prune_and_retrain(new_model, view, cfg=CleanlabParams(folds=2, filter_by="predicted_neq_given"),
                                   recipe=recipe, seed=0, device=torch.device("cpu"),
                                   checkpoint_path=tmp_path / "ckpt.pt", log=lambda line: None)
    assert result.issues.shape == (90,) and not result.issues[60:].any()
    assert result.issues[:60].any()  # the noisy examples are judged as before


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", new_store(tmp_path))
    previous = torch.get_num_threads()
    assert runner.invoke(app, ["preset", "tiny", "--params", str(REPO / "params.yaml"),
                                   "--out", "params.yaml"]).exit_code == 0
    for stage in ("download", "inject-noise", "estimate-noise"):
        result = runner.invoke(app, [stage, "-S", "base.threads=1"])
        assert result.exit_code == 0, result.output
    yield tmp_path
    torch.set_num_threads(previous)


def test_cleanlab_prunes_mostly_wrong_labels_and_evaluate_scores_it(workdir: Path) -> None:
    result = runner.invoke(app, ["train-student", *CLEANLAB])
    assert result.exit_code == 0, result.output
    assert "cross-validation fold 2/2" in result.output and "labels flagged" in result.output
    weights = load_weights("models/student_weights.npz")
    mask = load_noisy("data/noisy.npz").mask  # read here only, to judge; training never sees it
    quality = weights["weight"][-1]
    assert weights["method"] == "cleanlab" and quality.shape == mask.shape and np.isnan(weights["loss"]).all()
    # cleanlab's label-quality scores rank the corrupted labels low (40 % symmetric noise on digits)
    assert quality[mask].mean() < quality[~mask].mean() - 0.2

    for stage in ("correct-labels", "evaluate"):
        done = runner.invoke(app, [stage, *CLEANLAB])
        assert done.exit_code == 0, done.output
    metrics = load_json("reports/metrics.json")
    assert metrics["method"] == "cleanlab" and 0.5 < metrics["test_acc"] <= 1.0
    assert metrics["detection_auroc"] > 0.8
    table = runner.invoke(app, ["compare", "--methods"])  # every method on this setting, from the store
    assert table.exit_code == 0 and f"| Cleanlab | {metrics['test_acc']:.2%} |" in table.output, table.output


def test_cleanlab_restores_finished_folds_and_ends_identically(workdir: Path) -> None:
    first = runner.invoke(app, ["train-student", *CLEANLAB])
    assert first.exit_code == 0, first.output
    model = torch.load("models/student.pt", weights_only=True)["state_dict"]
    flagged = load_weights("models/student_weights.npz")["weight"]
    again = runner.invoke(app, ["train-student", *CLEANLAB])  # as after a kill in the final fit
    assert again.exit_code == 0, again.output
    assert again.output.count("predictions restored") == 2
    for key, value in torch.load("models/student.pt", weights_only=True)["state_dict"].items():
        assert torch.equal(value, model[key]), key
    np.testing.assert_array_equal(load_weights("models/student_weights.npz")["weight"], flagged)
    changed = runner.invoke(app, ["train-student", *CLEANLAB, "-S", "train.lr=0.04"])  # another config
    assert changed.exit_code == 0 and "predictions restored" not in changed.output


def test_cleanlab_flags_in_this_process_whatever_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """cleanlab's default n_jobs is the number of cores: a multiprocessing pool that forks this process (the suite's
    autouse guard fails a test that forks it). On 4 cores or 1 the flags and the scores are cleanlab's."""
    import psutil
    from cleanlab.filter import find_label_issues

    from labelnoise.methods.cleanlab import flag_issues

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 10, 3000)
    probs = rng.dirichlet(np.ones(10), 3000)
    probs[np.arange(3000), truth] += 1.0
    probs /= probs.sum(axis=1, keepdims=True)
    labels = np.where(rng.random(3000) < 0.2, rng.integers(0, 10, 3000), truth)  # about 18 % wrong
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 4)
    issues, quality = flag_issues(labels, probs, filter_by="prune_by_noise_rate")
    assert issues.dtype == bool and issues.shape == (3000,) and 0 < issues.sum() < 3000
    np.testing.assert_array_equal(issues, find_label_issues(labels, probs, filter_by="prune_by_noise_rate", n_jobs=1))
    assert quality.shape == (3000,) and ((quality >= 0) & (quality <= 1)).all()
