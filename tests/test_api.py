"""The Python entry points (labelnoise.api): arrays in, the label-issues table out, no DVC or MLflow."""

from __future__ import annotations

import doctest
from pathlib import Path

import numpy as np
import pytest

import labelnoise
from labelnoise import api
from labelnoise.label_issues import COLUMNS


def _noisy_digits(rate: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true labels, pair-noise labels, cross-validated probabilities of a model trained on them): the digits."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    noisy = np.where(rng.random(len(y)) < rate, (y + 1) % 10, y)
    probs = cross_val_predict(LogisticRegression(max_iter=500, C=0.1), x / 16.0, noisy, cv=3, method="predict_proba")
    return y, noisy, probs


def test_the_docstring_examples_run() -> None:
    assert doctest.testmod(api).failed == 0


def test_the_table_ranks_every_label_and_flags_mostly_wrong_ones() -> None:
    y, noisy, probs = _noisy_digits(0.3)
    table = labelnoise.find_label_issues(noisy, probs, classes=[f"digit {i}" for i in range(10)])
    assert list(table.columns) == list(COLUMNS) and len(table) == len(y)
    assert sorted(table["index"]) == list(range(len(y))) and list(table["rank"]) == list(range(1, len(y) + 1))
    assert (np.diff(table["p_given"].to_numpy()) >= 0).all()  # most suspicious first
    assert (table.flagged == (table.given != table.suggested)).all()
    flagged = table.loc[table.flagged, "index"].to_numpy()
    wrong = noisy != y
    assert wrong[flagged].mean() > 2 * wrong.mean()  # flags are far likelier wrong than a random label
    estimate = table.attrs["noise_estimate"]
    assert estimate["use"] == "confident_joint" and 0.0 < estimate["rate"] < 1.0
    np.testing.assert_allclose(estimate["transition"].sum(axis=1), 1.0)


def test_trusted_labels_are_known_and_can_estimate_the_noise() -> None:
    y, noisy, probs = _noisy_digits(0.3)
    idx = np.arange(0, len(y), 3)  # a third checked by a person
    table = labelnoise.find_label_issues(noisy, probs, trusted=(idx, y[idx]), estimate="paired")
    rows = table.set_index("index").loc[idx]
    assert (rows.suggested.astype(int) == y[idx]).all() and (rows.p_suggested == 1.0).all()
    assert (rows.flagged == (noisy[idx] != y[idx])).all()  # a checked wrong label is flagged, a right one never
    realised = (noisy != y).mean()
    assert table.attrs["noise_estimate"]["use"] == "paired"
    assert abs(table.attrs["noise_estimate"]["rate"] - realised) < 0.1


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"labels": [0, 1], "pred_probs": np.full((3, 2), 0.5)}, "pred_probs must be"),
    ({"labels": [0, 2], "pred_probs": np.full((2, 2), 0.5)}, "labels must be integers"),
    ({"labels": [0, 1], "pred_probs": np.array([[0.5, 0.6], [0.5, 0.5]])}, "summing to 1"),
    ({"labels": [0, 1], "pred_probs": np.full((2, 2), 0.5), "classes": ["a"]}, "classes"),
    ({"labels": [0, 1], "pred_probs": np.full((2, 2), 0.5), "trusted": ([5], [0])}, "trusted"),
    ({"labels": [0, 1], "pred_probs": np.full((2, 2), 0.5), "trusted": [1, 2, 3]}, "trusted"),
    ({"labels": [0, 1], "pred_probs": np.full((2, 2), 0.5), "estimate": "paired"}, "trusted"),
    ({"labels": [0, 1], "pred_probs": np.full((2, 2), 0.5), "estimate": "glc"}, "estimate"),
])
def test_bad_input_is_one_line(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        labelnoise.find_label_issues(**kwargs)
    assert "\n" not in str(caught.value)


def test_importing_the_package_loads_no_training_code() -> None:
    import subprocess
    import sys

    code = "import sys, labelnoise; print(labelnoise.__version__); print('torch' in sys.modules)"
    repo = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=repo).stdout.split()
    assert out == [labelnoise.__version__, "False"]
    with pytest.raises(AttributeError):
        _ = labelnoise.no_such_entry_point
