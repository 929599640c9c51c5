"""Stage `pretrain_mentor` on the tiny preset (digits): outputs, MLflow records, the clean-subset-only
rule for DD, and failures before anything is written."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

from labelnoise import datasets
from labelnoise.config import Config, ConfigError, from_dict, merge, read_yaml
from labelnoise.mentornet.pretrain import DD_PLOT_NAME, PD_PLOT_NAME
from labelnoise.noise import NoisyLabels, save_noisy

REPO = Path(__file__).resolve().parent.parent

# Small budgets: the stage's logic, not its accuracy, is under test here.
FAST = {"base": {"threads": 1, "experiment": "test-mentor"},
        "mentor": {"grid_size": 4000, "fit_steps": 200, "fit_batch_size": 128, "dd_epochs": 3}}


@pytest.fixture()
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    for var in ("DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME", "LABELNOISE_PIPELINE_ID"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def config(**mentor: Any) -> Config:
    raw = merge(read_yaml(REPO / "params.yaml"), read_yaml(REPO / "presets" / "tiny.yaml"))
    return from_dict(merge(merge(raw, FAST), {"mentor": mentor}))


def write_prepared(cfg: Config) -> datasets.Prepared:
    """What stage `download` writes for the tiny preset (without its MLflow run)."""
    from stages.common import PATHS

    raw = datasets.load_dataset(cfg.data)
    d = cfg.data
    splits = datasets.make_splits(raw.labels, n_official_train=raw.n_official_train, trusted_size=d.trusted_size,
                                  val_size=d.val_size, test_size=d.test_size, train_limit=d.train_limit,
                                  seed=d.split_seed)
    prepared = datasets.Prepared(images=raw.images, labels=raw.labels, train_idx=splits.train_idx,
                                 clean_idx=splits.clean_idx, val_idx=splits.val_idx, test_idx=splits.test_idx,
                                 classes=raw.classes, dataset=raw.dataset)
    datasets.save_prepared(PATHS.prepared, prepared)
    return prepared


def stage_runs(tmp: Path) -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name("test-mentor")
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], filter_string="tags.`mlflow.runName` = 'pretrain_mentor'")


def assert_png(path: Path) -> None:
    img = mpimg.imread(path)  # (H, W, 3 or 4)
    assert img.shape[0] >= 200 and img.shape[1] >= 300 and img[..., :3].std() > 0.05


def state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def test_pd_stage_writes_outputs_and_logs(in_tmp: Path) -> None:
    from mlflow.tracking import MlflowClient

    from labelnoise.mentornet import load_mentor
    from stages import pretrain_mentor
    from stages.common import PATHS

    cfg = config(kind="pd", curriculum="self_paced", percentile=0.7)  # settled: the student reads it from the record
    write_prepared(cfg)
    logged = pretrain_mentor.run(cfg)

    report = json.loads(Path(PATHS.mentor_report).read_text())
    assert report["kind"] == "pd" and report["curriculum"] == "self_paced" and report["fit_loss"] == "bce"
    assert report["n_rows"] == 4000 and report["n_holdout"] == round(cfg.mentor.holdout * 4000)
    assert 0 <= report["mae_train"] < 0.5 and 0 <= report["mae_holdout"] < 0.5 and report["time_s"] >= 0
    assert logged["mae_holdout"] == pytest.approx(report["mae_holdout"])
    mentor = load_mentor(PATHS.mentor_model)
    assert mentor.num_classes == 10
    assert [p.name for p in Path(PATHS.mentor_plots).iterdir()] == [PD_PLOT_NAME]
    assert_png(Path(PATHS.mentor_plots) / PD_PLOT_NAME)

    (run,) = stage_runs(in_tmp)
    assert run.info.status == "FINISHED" and run.data.tags["mentor"] == "pd"
    assert run.data.metrics["mae_holdout"] == pytest.approx(report["mae_holdout"])
    assert run.data.params["mentor.kind"] == "pd" and "student.spade.burn_in" not in run.data.params
    # the stage's params (its record): the mentor, whether the student uses one, the recipe a dd mentor's student
    # trains with
    assert "train.lr" in run.data.params and "train.epochs" not in run.data.params
    client = MlflowClient(tracking_uri=f"sqlite:///{in_tmp}/mlflow.db")
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert top == {"mentor.json", "mentor"}
    assert {a.path for a in client.list_artifacts(run.info.run_id, "mentor")} == {"mentor/pd_weights.png"}


def test_dd_stage_writes_outputs_and_logs(in_tmp: Path) -> None:
    from mlflow.tracking import MlflowClient

    from labelnoise.mentornet import load_mentor
    from stages import pretrain_mentor
    from stages.common import PATHS

    cfg = config(kind="dd", dd_noise_kind="symmetric", percentile=0.6)
    prepared = write_prepared(cfg)
    n_clean = len(prepared.clean_idx)
    logged = pretrain_mentor.run(cfg)

    report = json.loads(Path(PATHS.mentor_report).read_text())
    assert report["kind"] == "dd" and report["dd_noise_kind"] == "symmetric"
    assert report["dd_realised_rate"] == pytest.approx(cfg.mentor.dd_noise_rate, abs=0.02)
    assert report["n_examples"] == n_clean and report["n_rows"] == n_clean * 3
    assert report["n_holdout"] == report["n_holdout_examples"] * 3 == round(cfg.mentor.holdout * n_clean) * 3
    assert 0.0 <= report["auroc"] <= 1.0 and 0.0 <= report["auroc_loss"] <= 1.0
    assert [row["epoch"] for row in report["per_epoch"]] == [1, 2, 3]
    assert logged["auroc"] == pytest.approx(report["auroc"])
    assert load_mentor(PATHS.mentor_model).num_classes == 10
    assert_png(Path(PATHS.mentor_plots) / DD_PLOT_NAME)

    (run,) = stage_runs(in_tmp)
    assert run.info.status == "FINISHED" and run.data.tags["mentor"] == "dd"
    assert run.data.metrics["auroc"] == pytest.approx(report["auroc"])
    assert run.data.params["train.model"] == "cnn"  # dd trains a student: its params are recorded
    client = MlflowClient(tracking_uri=f"sqlite:///{in_tmp}/mlflow.db")
    curve = client.get_metric_history(run.info.run_id, "auroc_epoch")  # per epoch, step = epoch
    assert sorted(m.step for m in curve) == [1, 2, 3]

    # the folder holds this kind's figure only: a pd run afterwards replaces it
    pretrain_mentor.run(dataclasses.replace(cfg, mentor=dataclasses.replace(cfg.mentor, kind="pd")))
    assert [p.name for p in Path(PATHS.mentor_plots).iterdir()] == [PD_PLOT_NAME]


def test_a_dd_mentor_that_is_no_curriculum_is_learnt_again_on_the_fallback_copy(
        in_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A learnt DD mentor whose weight climbs with the loss by more than mentor.dd_max_rise is learnt again on a
    copy with symmetric noise at mentor.dd_fallback_rate: the report keeps the first one's figures, the saved
    mentor's params name the copy it was learnt on (SPADE's refits use it), one line says so."""
    from labelnoise import mentornet as mn
    from labelnoise.mentornet import read_mentor
    from stages import pretrain_mentor
    from stages.common import PATHS

    rises = iter([0.4, 0.0])  # the first mentor a band, the second a curriculum
    monkeypatch.setattr(mn, "weight_rise", lambda *args, **kwargs: next(rises))
    cfg = config(kind="dd", dd_noise_kind="symmetric", dd_noise_rate=0.8, percentile=0.6, dd_max_rise=0.05,
                 dd_fallback_rate=0.2)
    write_prepared(cfg)
    pretrain_mentor.run(cfg)
    report = json.loads(Path(PATHS.mentor_report).read_text())
    assert report["fallback_from"]["dd_noise_rate"] == 0.8 and report["fallback_from"]["weight_rise"] == 0.4
    assert report["dd_noise_rate"] == 0.2 and report["dd_realised_rate"] == pytest.approx(0.2, abs=0.02)
    assert report["weight_rise"] == 0.0
    _, saved, _ = read_mentor(PATHS.mentor_model)
    assert (saved.dd_noise_kind, saved.dd_noise_rate) == ("symmetric", 0.2)
    assert "learnt again on a copy with symmetric noise 0.2" in capsys.readouterr().err
    (run,) = stage_runs(in_tmp)
    assert run.data.tags["mentor_fallback"] == "symmetric copy"


def test_dd_never_reads_the_train_pool_labels(in_tmp: Path) -> None:
    """Scrambling the train pool's labels in the prepared file leaves the dd mentor bit for bit the same."""
    from stages import pretrain_mentor
    from stages.common import PATHS

    cfg = config(kind="dd", fit_steps=50, dd_noise_kind="symmetric", percentile=0.6)
    prepared = write_prepared(cfg)
    pretrain_mentor.run(cfg)
    first = state(PATHS.mentor_model)

    labels = prepared.labels.copy()
    rng = np.random.default_rng(0)
    labels[prepared.train_idx] = rng.integers(0, len(prepared.classes), size=len(prepared.train_idx))
    assert (labels[prepared.train_idx] != prepared.labels[prepared.train_idx]).any()
    datasets.save_prepared(PATHS.prepared, dataclasses.replace(prepared, labels=labels))
    pretrain_mentor.run(cfg)
    second = state(PATHS.mentor_model)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)

    # ... while the clean subset's labels do matter
    labels = prepared.labels.copy()
    labels[prepared.clean_idx] = rng.permutation(labels[prepared.clean_idx])
    datasets.save_prepared(PATHS.prepared, dataclasses.replace(prepared, labels=labels))
    pretrain_mentor.run(cfg)
    third = state(PATHS.mentor_model)
    assert not all(torch.equal(first[k], third[k]) for k in first)


@pytest.mark.parametrize("mentor, match", [
    ({"kind": "dd", "holdout": 0.0}, "mentor.holdout"),
    ({"kind": "pd", "holdout": 1.0}, "mentor.holdout"),
    ({"kind": "pd", "grid_size": 2_000_000}, "mentor.grid_size"),
    ({"kind": "dd", "dd_noise_kind": "symmetric", "dd_noise_rate": 0.0}, "mentor.dd_noise_rate"),
])
def test_bad_params_fail_before_anything_is_written(in_tmp: Path, mentor: dict[str, Any], match: str) -> None:
    from stages import pretrain_mentor
    from stages.common import PATHS

    cfg = config(**mentor)
    write_prepared(cfg)
    with pytest.raises(ConfigError, match=match):
        pretrain_mentor.run(cfg)
    assert not Path(PATHS.mentor_model).exists() and not Path(PATHS.mentor_report).exists()
    assert not Path(PATHS.mentor_plots).exists()
    assert stage_runs(in_tmp) == []


def test_missing_input_fails_before_anything_is_written(in_tmp: Path) -> None:
    from stages import pretrain_mentor
    from stages.common import PATHS

    with pytest.raises(FileNotFoundError, match="prepared"):
        pretrain_mentor.run(config(kind="pd"))
    assert not Path(PATHS.mentor_model).exists() and not (in_tmp / "mlflow.db").exists()


def test_dd_without_clean_subset_is_refused(in_tmp: Path) -> None:
    from stages import pretrain_mentor

    cfg = config(kind="dd")
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, trusted_size=0))
    write_prepared(cfg)
    with pytest.raises(ConfigError, match="clean"):
        pretrain_mentor.run(cfg)


def test_dd_auto_learns_on_the_estimated_noise(in_tmp: Path) -> None:
    from labelnoise.io import save_json
    from stages import pretrain_mentor
    from stages.common import PATHS

    cfg = config(kind="dd")  # the defaults: percentile and the copy's noise auto
    prepared = write_prepared(cfg)
    with pytest.raises(FileNotFoundError, match="mentor.dd_noise_kind, mentor.percentile = auto"):
        pretrain_mentor.run(cfg)
    pair = 0.7 * np.eye(10) + 0.3 * np.roll(np.eye(10), 1, axis=1)  # what estimate_noise found: pair noise, 30 %
    save_json(PATHS.noise_estimate, {"rate": 0.3, "transition": pair.tolist(), "use": "confusion"})
    with pytest.raises(FileNotFoundError, match="noisy.npz"):  # where the noise source labelled the trusted images
        pretrain_mentor.run(cfg)
    train = prepared.labels[prepared.train_idx]  # synthetic noise: no labels of the trusted images (trusted None)
    save_noisy(PATHS.noisy, NoisyLabels(train.copy(), np.zeros(train.shape, dtype=bool)))
    pretrain_mentor.run(cfg)
    report = json.loads(Path(PATHS.mentor_report).read_text())
    assert report["dd_noise_kind"] == "transition" and report["dd_noise_rate"] is None
    assert report["dd_realised_rate"] == pytest.approx(0.3, abs=0.02)
    assert report["auto"]["mentor.percentile"] == pytest.approx(0.7)
