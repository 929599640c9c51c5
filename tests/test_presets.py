"""The presets (the papers' GPU settings and the measured Fashion-MNIST ones, presets/*.yaml) cannot rot: each one's
tiny CPU counterpart (the same params on scikit-learn's digits, a few steps) runs through the real stages; the
official wide ResNet trains."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from cli import app
from labelnoise.config import load_config, merge, read_yaml
from labelnoise.models import create_model
from tests.helpers import new_store, split_student

REPO = Path(__file__).resolve().parent.parent
# every preset but tiny, whose counterpart runs on digits; a preset of given noisy labels needs its own dataset and
# file (cifar10n: tests/test_given_labels.py)
PRESETS = sorted(p.stem for p in (REPO / "presets").glob("*.yaml")
                 if p.stem != "tiny" and read_yaml(p).get("noise", {}).get("kind") != "given")


def tiny_counterpart(preset: dict[str, Any]) -> dict[str, Any]:
    """The preset's own settings on digits and a few steps. The big networks become small ones of their family (the
    wide ResNet, tested alone below, the thin PreAct ResNet-32; ResNet-18, whose shapes tests/test_models.py
    checks, the PreAct ResNet-20): on one core they would take minutes even on digits."""
    train = preset.get("train", {})
    model = {"wrn56_10": "preact_resnet32", "resnet18": "preact_resnet20"}.get(train.get("model", "cnn"),
                                                                              train.get("model", "cnn"))
    return merge(preset, split_student({
        "base": {"threads": 1, "device": "cpu"},
        "data": {"dataset": "digits", "download": False, "val_size": 0, "test_size": 360,
                 "trusted_size": 200 if preset.get("data", {}).get("trusted_size", 1) else 0},
        "estimate": {"epochs": 1},
        "trusted": {"epochs": 2},
        "mentor": {"dd_epochs": 1, "fit_steps": 30, "grid_size": 2000},
        "student": {"epochs": 1, "batch_size": 128, "eval_batch_size": 512,
                    "model": model},
        "correction": {"epochs": 2, "begin": 1, "buffer": 2, "retrain_epochs": 1, "teacher": "student"},
    }))


@pytest.mark.parametrize("name", PRESETS)
def test_preset_tiny_counterpart_runs_every_stage(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  one_thread: None) -> None:
    import yaml

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", new_store(tmp_path))
    preset = read_yaml(REPO / "presets" / f"{name}.yaml")
    params = merge(read_yaml(REPO / "params.yaml"), tiny_counterpart(preset))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    cfg = load_config(tmp_path / "params.yaml")
    assert cfg.student.method == preset["student"]["method"] and cfg.train.schedule == preset["train"]["schedule"]
    stages = ["download", "inject-noise", "estimate-noise", "pretrain-mentor", "train-student"]
    if preset.get("correction", {}).get("init") == "scratch":  # joint optimization: the correction is the method
        stages.append("correct-labels")
    runner = CliRunner()
    for stage in stages:
        result = runner.invoke(app, [stage])
        assert result.exit_code == 0, f"{stage}: {result.output[-2000:]}"
    assert (tmp_path / "models" / "student.pt").is_file()


def test_the_official_mentornet_wide_resnet_trains() -> None:
    torch.manual_seed(0)
    model = create_model("wrn56_10", num_classes=10, in_channels=3, image_size=32, mean=[0.5] * 3, std=[0.25] * 3)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 1 + 3 * 9 * 2  # stem + 3 stages x 9 blocks x 2 convs: depth 56 with the head
    assert [c.out_channels for c in convs[1::18]] == [160, 320, 640]
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())
