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


# ----------------------------------------------------------------------------- predict
CLASSES = ["circle", "square", "cross"]


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    """A small RGB model record as the pipeline writes one, with its class names."""
    import torch

    from labelnoise.io import save_torch
    from labelnoise.models import create_model, model_record

    torch.manual_seed(0)
    kwargs = {"num_classes": 3, "in_channels": 3, "image_size": 16}
    net = create_model("cnn", **kwargs)
    return save_torch(tmp_path / "final.pt", model_record(net, model_name="cnn", model_kwargs=kwargs, epoch=1,
                                                          clean_acc=0.5, config={}, classes=CLASSES))


def _images(folder: Path) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, (w, h, mode) in enumerate([(40, 24, "RGB"), (16, 16, "L"), (31, 57, "RGBA")]):
        a = rng.integers(0, 256, (h, w, len(mode)) if mode != "L" else (h, w), dtype=np.uint8)
        files.append(folder / f"img{i}.png")
        Image.fromarray(a, mode).save(files[-1])
    return files


def test_predict_converts_any_image_as_training_did_and_names_the_classes(model_file: Path, tmp_path: Path) -> None:
    from labelnoise.datasets.folder import load_image

    files = _images(tmp_path / "imgs")
    table = labelnoise.predict(model_file, files, top_k=2)
    assert list(table.columns) == ["path", "predicted", "probability", "top_k"]
    assert list(table.path) == [str(f) for f in files] and set(table.predicted) <= set(CLASSES)
    x = np.stack([load_image(f, size=16, channels=3) for f in files])
    same = labelnoise.predict(model_file, x, top_k=2)  # the array form: the same classes and probabilities
    assert list(same.predicted) == list(table.predicted) and np.allclose(same.probability, table.probability)
    for row in table.itertuples():
        first, second = row.top_k.split("; ")
        assert first.startswith(row.predicted) and float(second.split()[-1]) <= row.probability
    assert labelnoise.predict(model_file, x.transpose(0, 2, 3, 1), top_k=2).equals(same)  # channels last: the same
    twice = x.repeat(2, axis=2).repeat(2, axis=3)  # (N, 3, 32, 32): converted to the model's 16 x 16 as a file is
    assert list(labelnoise.predict(model_file, twice).predicted) == list(table.predicted)
    with pytest.raises(ValueError, match=r"a uint8 array \(N, H, W\)"):
        labelnoise.predict(model_file, x.astype(np.float32))


def test_the_predict_command_reads_files_a_folder_or_a_manifest(model_file: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import csv

    from typer.testing import CliRunner

    from cli import app
    from tests.helpers import new_store

    monkeypatch.setenv("MLFLOW_TRACKING_URI", new_store(tmp_path / "store"))  # an empty store: no model registered

    runner = CliRunner()
    files = _images(tmp_path / "imgs")
    manifest = tmp_path / "imgs" / "manifest.csv"
    manifest.write_text("path\n" + "\n".join(f.name for f in files) + "\n")
    out = tmp_path / "preds.csv"
    results = {}
    for how in ([str(f) for f in files], ["--folder", str(tmp_path / "imgs")], ["--manifest", str(manifest)]):
        done = runner.invoke(app, ["predict", *how, "--model", str(model_file), "--out", str(out), "-k", "1"])
        assert done.exit_code == 0, done.output
        rows = list(csv.DictReader(out.open()))
        results[how[0]] = [(Path(r["path"]).name, r["predicted"]) for r in rows]
        assert [r["top_k"].split()[0] for r in rows] == [r["predicted"] for r in rows]
    assert len(set(map(tuple, results.values()))) == 1  # the three forms agree
    for args, code, message in (
            (["--folder", str(tmp_path), "--manifest", str(manifest)], 2, "one way"),
            ([str(files[0]), "--model", str(tmp_path / "none.pt")], 1, "does not exist"),
            ([str(files[0]), "--model", "models:/labelnoise-none@champion"], 1, "no such MLflow model"),
            ([str(manifest), "--model", str(model_file)], 1, "cannot be read as an image"),
            (["--manifest", str(model_file), "--model", str(model_file)], 2, "manifest")):
        done = runner.invoke(app, ["predict", *args])
        assert done.exit_code == code and message in done.output, done.output
        assert len(done.output.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- export
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_an_exported_model_gives_pytorchs_logits_and_names_its_classes(model_file: Path, tmp_path: Path,
                                                                         fmt: str) -> None:
    import json

    import torch
    from typer.testing import CliRunner

    from cli import app
    from labelnoise.models import load_model

    out = tmp_path / f"model.{fmt}"
    done = CliRunner().invoke(app, ["export", str(out), "--format", fmt, "--model", str(model_file)])
    assert done.exit_code == 0, done.output
    x = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (5, 3, 16, 16), dtype=np.uint8))  # another batch
    expected = load_model(model_file)(x).detach().numpy()
    if fmt == "onnx":
        import onnx
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = session.run(["logits"], {"images": x.numpy()})[0]
        meta = {p.key: json.loads(p.value) for p in onnx.load(str(out)).metadata_props}
    else:
        files = {"labelnoise.json": ""}
        got = torch.jit.load(str(out), _extra_files=files)(x).detach().numpy()
        meta = json.loads(files["labelnoise.json"])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert meta["classes"] == CLASSES and meta["channels"] == 3 and meta["image_size"] == 16


def test_export_refuses_what_it_cannot_read_in_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli import app

    done = CliRunner().invoke(app, ["export", str(tmp_path / "m.onnx"), "--model", str(tmp_path / "none.pt")])
    assert done.exit_code == 1 and "does not exist" in done.output and not (tmp_path / "m.onnx").exists()
    done = CliRunner().invoke(app, ["export", str(tmp_path / "m.onnx"), "--format", "tflite"])
    assert done.exit_code == 2
