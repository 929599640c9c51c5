"""labelnoise.fit: the pipeline's steps on arrays or image files a user already has, no DVC, no MLflow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import labelnoise
from labelnoise.fitting import config
from labelnoise.label_issues import COLUMNS

# a few epochs of everything: the digits are 8x8
# (the tiny preset's settings: after a few epochs on 8x8 digits the student's probabilities are too soft for the
# posterior under the estimated channel to move labels; a low weight on the given label does)
FAST = {"train": {"epochs": 4, "batch_size": 64, "lr": 0.05}, "estimate.epochs": 2, "estimate.trusted_folds": 0,
        "mentor": {"dd_epochs": 4, "fit_steps": 300}, "trusted": {"epochs": 10, "augment": "none"},
        "correction": {"retrain_epochs": 4, "noisy_label_weight": 0.1}}


def _digits(rate: float = 0.3) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(images uint8 (n, 8, 8), true labels, given labels with ``rate`` of them wrong, which are wrong)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images * 255 / 16).round().astype(np.uint8)
    rng = np.random.default_rng(0)
    wrong = rng.random(len(x)) < rate
    given = np.where(wrong, (d.target + rng.integers(1, 10, len(x))) % 10, d.target)
    return x, d.target.astype(np.int64), given.astype(np.int64), wrong


def test_fit_on_arrays_with_a_trusted_subset_flags_the_wrong_labels_and_corrects_them(tmp_path: Path) -> None:
    x, true, given, wrong = _digits()
    n, trusted = 1400, np.arange(0, 1400, 7)  # every seventh image checked by a person
    result = labelnoise.fit(x[:n], given[:n], trusted=(trusted, true[trusted]), test=(x[n:], true[n:]),
                            classes=[f"digit {c}" for c in range(10)], params=FAST, log=lambda line: None)
    table = result.label_issues
    assert list(table.columns) == list(COLUMNS)
    assert sorted(table["index"]) == sorted(set(range(n)) - set(trusted))  # every label but the checked ones
    assert (table["index"] == table["dataset_index"]).all() and (table["rank"] == np.arange(1, len(table) + 1)).all()
    flagged = table.loc[table.flagged, "index"].to_numpy()
    assert wrong[flagged].mean() > 0.6  # the base rate is 0.3
    assert wrong[flagged].sum() / wrong[np.setdiff1d(np.arange(n), trusted)].sum() > 0.6
    assert (result.corrected_labels[trusted] == true[trusted]).all()  # a checked label is never changed
    assert (result.corrected_labels == true[:n]).mean() > (given[:n] == true[:n]).mean() + 0.1
    assert result.soft_labels.shape == (n, 10) and np.allclose(result.soft_labels.sum(axis=1), 1.0, atol=1e-4)
    assert result.noise_estimate["use"] == "paired"  # the checked images' given labels show the noise
    assert abs(result.noise_estimate["rate"] - wrong[:n].mean()) < 0.1
    assert 0.5 < result.metrics["corrected_test_acc"] <= 1.0 and 0.5 < result.metrics["test_acc"] <= 1.0
    assert result.config.student.method == "spade" and result.config.mentor.kind == "dd"  # the pipeline's defaults

    saved = result.save(tmp_path / "model.pt")  # a model file of the pipeline: predict reads it
    preds = labelnoise.predict(saved, x[n:][:, None])
    assert preds["predicted"].str.startswith("digit ").all()
    assert (preds["predicted"] == [f"digit {c}" for c in true[n:]]).mean() == pytest.approx(
        result.metrics["corrected_test_acc"])


def test_fit_on_image_files_equals_fit_on_their_pixels(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Paths are read as the pipeline reads a folder (data.image_size, data.channels); without a trusted subset
    and a test split, the noise is estimated from the labels alone and no accuracy is reported."""
    from PIL import Image

    x, _, given, _ = _digits()
    n = 400
    files = []
    for i in range(n):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(x[i]).save(files[-1])
    params = {**FAST, "data": {"image_size": 8, "channels": 1}}
    names = [str(c) for c in given[:n]]  # labels as class names
    from_files = labelnoise.fit(files, names, method="ce", params=params, log=lambda line: None)
    from_array = labelnoise.fit(x[:n], given[:n], method="ce", params=params, log=lambda line: None)
    assert capfd.readouterr().err == ""  # every progress line went to `log`
    assert from_files.classes == from_array.classes == [str(c) for c in range(10)]
    assert from_files.label_issues.equals(from_array.label_issues)
    assert np.array_equal(from_files.corrected_labels, from_array.corrected_labels)
    assert from_files.noise_estimate["use"] == "confident_joint"
    table = labelnoise.find_label_issues(given[:n], images=x[:n], params={**params, "student.method": "ce"})
    assert table.equals(from_array.label_issues)  # the table alone, from the same steps
    assert np.isnan(from_files.metrics["test_acc"])


def test_config_is_the_pipelines_defaults_with_the_changes_given() -> None:
    cfg = config("ce", {"train.epochs": 2, "trusted": {"epochs": 5}}, trusted=False)
    assert cfg.student.method == "ce" and cfg.train.epochs == 2 and cfg.trusted.epochs == 5
    assert config(trusted=False).mentor.kind == "pd"  # no trusted subset to learn a data-driven mentor from
    assert config(trusted=False, params={"mentor.kind": "dd"}).mentor.kind == "dd"  # unless asked for


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"images": np.zeros((4, 8, 8), dtype=np.float32)}, "uint8"),
    ({"labels": [0, 1, 2]}, "3 labels for 4 images"),
    ({"labels": [0, 1, 2, 1.5]}, "integers or class names"),
    ({"labels": ["a", "b", "c", "z"], "classes": ["a", "b", "c"]}, "'z' is not one of the classes"),
    ({"trusted": ([0, 9], [1, 1])}, "trusted: indices must be distinct positions"),
    ({"params": {"train.epochs": -1}}, "train.epochs"),
])
def test_bad_input_is_one_line(kwargs: dict, says: str) -> None:
    args = {"images": np.zeros((4, 8, 8), dtype=np.uint8), "labels": [0, 1, 0, 1], **kwargs}
    with pytest.raises(Exception, match=says.replace(".", r"\.").replace("(", r"\(")) as e:
        labelnoise.fit(args.pop("images"), args.pop("labels"), **args)
    assert "\n" not in str(e.value)
