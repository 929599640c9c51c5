"""Noisy labels given as a file (noise.kind: given, noise.given.file): the safe readers, the alignment with the
dataset's order, the refusals, and the CIFAR-10N preset on a small CIFAR-10 archive and a CIFAR-10_human.pt of the
same format."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from cli import app
from labelnoise.config import merge, read_yaml
from labelnoise.noise import given
from tests.helpers import new_store
from tests.test_datasets import patch_cifar, write_cifar

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()


# ----------------------------------------------------------------------------- readers
def test_each_file_kind_reads_its_labels(tmp_path: Path) -> None:
    labels = np.array([3, 0, 2, 2, 1])
    np.save(tmp_path / "a.npy", labels)
    torch.save({"worse_label": labels, "clean_label": np.zeros(5, dtype=np.int64)}, tmp_path / "b.pt")
    torch.save({"worse_label": torch.from_numpy(labels)}, tmp_path / "c.pt")
    with open(tmp_path / "d.pkl", "wb") as f:
        pickle.dump({"worse_label": labels}, f)
    (tmp_path / "e.csv").write_text("index,label\n2,owl\n0,dog\n1,cat\n3,owl\n4,ant\n")  # any order, class names
    for name in ("a.npy", "b.pt", "c.pt", "d.pkl"):
        got = given.read_label_file(tmp_path / name, key="" if name.endswith("npy") else "worse_label")
        assert got.dtype == np.int64 and got.tolist() == labels.tolist(), name
    got = given.read_label_file(tmp_path / "e.csv", classes=["cat", "ant", "owl", "dog"])
    assert got.tolist() == labels.tolist()


def test_a_pt_file_pickled_before_numpy_2_reads(tmp_path: Path) -> None:
    """CIFAR-10N's CIFAR-10_human.pt names numpy's array builder as numpy.core.multiarray._reconstruct (numpy < 2)."""
    labels = np.array([3, 0, 2, 2, 1])
    path = tmp_path / "old.pt"
    torch.save({"worse_label": labels}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    assert b"numpy._core.multiarray" in data  # protocol 2: the name is text, so it can be renamed in place
    path.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert given.read_label_file(path, key="worse_label").tolist() == labels.tolist()


class RunsCode:
    def __reduce__(self):
        return (print, ("this would have run",))


@pytest.mark.parametrize(("name", "write", "key", "says"), [
    ("x.pkl", lambda p: p.write_bytes(pickle.dumps({"worse_label": RunsCode()})), "worse_label",
     "refused builtins.print"),
    ("x.npy", lambda p: np.save(p, np.array([object()], dtype=object), allow_pickle=True), "", "cannot be read"),
    ("x.pt", lambda p: torch.save({"a": np.arange(3)}, p), "", "holds a dict (a): set noise.given.key"),
    ("x.pt", lambda p: torch.save({"a": np.arange(3)}, p), "b", "noise.given.key: 'b' is not in"),
    ("x.npy", lambda p: np.save(p, np.zeros((2, 2))), "", "not a 1-d array of integer labels"),
    ("x.csv", lambda p: p.write_text("index,label\n0,zebra\n"), "", "neither a class index nor a class name"),
    ("x.csv", lambda p: p.write_text("index,label\n0,1\n0,2\n"), "", "must hold 0..1, each once"),
    ("x.txt", lambda p: p.write_text("1\n2\n"), "", "unknown kind '.txt'"),
    ("x.pt", lambda p: p.write_bytes(b"not a file"), "", "cannot be read"),
    ("x.pt", lambda p: torch.save({"worse_label": RunsCode()}, p), "worse_label",
     "holds Python objects beyond tensors and plain values, refused: loading them could run code)"),
])
def test_bad_files_are_one_line(tmp_path: Path, name: str, write, key: str, says: str) -> None:
    path = tmp_path / name
    write(path)
    with pytest.raises(ValueError, match=says.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        given.read_label_file(path, key=key, classes=["a", "b"])


def test_a_code_carrying_torch_file_is_refused_without_advice_to_load_it_unsafely(tmp_path: Path) -> None:
    """torch's own refusal ends in how to load the file with weights_only=False (which would run its code); the
    one line says what the file holds and why it is refused, for a label file and for a model file alike."""
    from labelnoise.io import read_torch

    path = tmp_path / "student.pt"
    torch.save({"state_dict": RunsCode()}, path)
    for read in (lambda: given.read_label_file(path, key="state_dict", classes=["a", "b"]),
                 lambda: read_torch(path, remedy="run train-student")):
        with pytest.raises(ValueError) as caught:
            read()
        assert "could run code" in str(caught.value) and "weights_only" not in str(caught.value)
        assert "\n" not in str(caught.value)


def test_given_takes_the_labels_of_the_train_positions() -> None:
    file_labels = np.array([0, 1, 2, 0, 1, 2])
    nl = given.given_labels(file_labels, np.array([5, 1, 3]), true=np.array([2, 0, 0]), num_classes=3)
    assert nl.labels.tolist() == [2, 1, 0] and nl.mask.tolist() == [False, True, False]
    unknown = given.given_labels(file_labels, np.array([5, 1]), true=None, num_classes=3)
    assert not unknown.mask.any()
    with pytest.raises(ValueError, match="label 2 is outside"):
        given.given_labels(file_labels, np.array([2]), true=None, num_classes=2)


# ----------------------------------------------------------------------------- CIFAR-10N
HUMAN_KEYS = ("clean_label", "worse_label", "aggre_label", "random_label1", "random_label2", "random_label3")


@pytest.fixture
def cifar10n(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict, dict[str, np.ndarray]]:
    """A workspace on the cifar10n preset: a small CIFAR-10 archive in a mirror folder and a CIFAR-10_human.pt of
    CIFAR-N's format (a dict of one numpy label array per annotation, one label per train image)."""
    archive, contents = write_cifar(tmp_path / "mirror", "cifar10", per_batch=30)  # 150 train, 30 test images
    patch_cifar(monkeypatch, "cifar10", archive, contents)
    clean = contents["labels"][: contents["n_train"]].astype(np.int64)
    rng = np.random.default_rng(5)
    human = {"clean_label": clean}
    for key, rate in (("worse_label", 0.4), ("aggre_label", 0.1), ("random_label1", 0.2), ("random_label2", 0.2),
                      ("random_label3", 0.2)):
        wrong = rng.random(clean.size) < rate
        human[key] = np.where(wrong, (clean + rng.integers(1, 10, clean.size)) % 10, clean)
    (tmp_path / "data" / "own").mkdir(parents=True)
    torch.save(human, tmp_path / "data" / "own" / "CIFAR-10_human.pt")
    preset = read_yaml(REPO / "presets" / "cifar10n.yaml")
    params = merge(merge(read_yaml(REPO / "params.yaml"), preset), {
        "base": {"threads": 1}, "data": {"mirrors": {"cifar10": [str(tmp_path / "mirror")]}, "download": False,
                                         "trusted_size": 20, "root": str(tmp_path / "raw")}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", new_store(tmp_path))
    monkeypatch.delenv("DVC_ROOT", raising=False)
    return tmp_path, contents, human


@pytest.mark.parametrize("key", ["worse_label", "aggre_label"])
def test_cifar10n_preset_trains_on_the_annotators_labels(cifar10n, key: str) -> None:
    root, contents, human = cifar10n
    for args in (["download"], ["inject-noise", "-S", f"noise.given.key={key}"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    prepared = np.load(root / "data" / "prepared.npz")
    train_idx = prepared["train_idx"]
    noisy = np.load(root / "data" / "noisy.npz")
    np.testing.assert_array_equal(noisy["labels"], human[key][train_idx])  # the file's labels, in its order
    np.testing.assert_array_equal(noisy["mask"], human[key][train_idx] != human["clean_label"][train_idx])
    report = json.loads((root / "reports" / "noise.json").read_text())
    assert report["kind"] == "given" and report["key"] == key and report["rate_source"] == "noise.given.file"
    assert report["realised_rate"] == pytest.approx(noisy["mask"].mean()) and report["requested_rate"] is None
    assert report["n_file_labels"] == contents["n_train"] and len(report["file_sha256"]) == 64
    assert np.array_equal(prepared["labels"][prepared["clean_idx"]],
                          human["clean_label"][prepared["clean_idx"]])  # the trusted subset keeps the true labels
    # and the file's labels of the trusted images are kept beside them: the pairs the noise estimate counts
    np.testing.assert_array_equal(noisy["trusted"], human[key][prepared["clean_idx"]])
    assert report["n_trusted_labelled"] == prepared["clean_idx"].size


def test_cifar10n_refusals_are_one_line_and_write_nothing(cifar10n) -> None:
    root, _, human = cifar10n
    assert runner.invoke(app, ["download"]).exit_code == 0
    torch.save({k: v[:-1] for k, v in human.items()}, root / "data" / "short.pt")
    for args, says in (
            (["-S", "noise.given.key=majority"], "noise.given.key: 'majority' is not in"),
            (["-S", "noise.given.file=data/short.pt"], "holds 149 labels; cifar10 has 150 or 180"),
            (["-S", "noise.given.file=data/missing.pt"], "does not exist")):
        result = runner.invoke(app, ["inject-noise", *args])
        lines = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert result.exit_code == 1 and len(lines) == 1 and says in lines[0], result.output
        assert not (root / "data" / "noisy.npz").exists()


def test_human_noise_is_estimated_and_learnt_from_the_trusted_images_own_given_labels(cifar10n) -> None:
    """The file labels the trusted images too: the noise estimate counts those labels against the verified ones
    (``paired``, the rate the trusted subset shows, whatever the noise depends on) and the DD mentor learns on them
    (the real noise, image by image) instead of a copy corrupted by a matrix."""
    root, _, human = cifar10n
    fast = ["-S", "estimate.epochs=1", "-S", "estimate.trusted_folds=0", "-S", "train.epochs=1",
            "-S", "mentor.dd_epochs=1", "-S", "mentor.fit_steps=20"]
    for args in (["download", "-S", "data.trusted_size=60"], ["inject-noise", "-S", "noise.given.key=worse_label"],
                 ["estimate-noise", "-S", "data.trusted_size=60", *fast],
                 ["pretrain-mentor", "-S", "data.trusted_size=60", *fast]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    clean_idx = np.load(root / "data" / "prepared.npz")["clean_idx"]
    wrong = human["worse_label"][clean_idx] != human["clean_label"][clean_idx]
    estimate = json.loads((root / "reports" / "noise_estimate.json").read_text())
    assert estimate["use"] == "paired" and {"paired", "confusion"} <= set(estimate["estimates"])
    t = np.asarray(estimate["transition"])
    per_class = [wrong[human["clean_label"][clean_idx] == c].mean() for c in range(10)]
    np.testing.assert_allclose(1.0 - np.diag(t), per_class)  # each class's share of wrong given labels
    mentor = json.loads((root / "reports" / "mentor.json").read_text())
    assert mentor["dd_noise_kind"] == "given" and mentor["dd_realised_rate"] == pytest.approx(wrong.mean())
