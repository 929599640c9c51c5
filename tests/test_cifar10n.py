"""CIFAR-10N laid out from the two public snapshots (labelnoise/cifar10n.py, `cli.py prepare-cifar10n`), on a small
stand-in: PNG files whose pixels encode each image's official index, and a CIFAR-10_human.pt of its labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cli import app
from labelnoise.cifar10n import ANNOTATIONS, CLASSES, prepare_cifar10n
from labelnoise.datasets.folder import list_tree, load_image
from tests.helpers import new_store

runner = CliRunner()
PER_CLASS = 3  # train images of each class in the stand-in (CIFAR-10: 5,000)


def write_snapshots(root: Path, *, seed: int = 0) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """A stand-in of both snapshots: ``images/train/<class>/NNNN.png`` whose gray value is 8 x its official index
    (the k-th file of a class is the k-th image of that class in the official order), ``images/test/<class>/``
    one image each, and ``human.pt`` with clean_label (shuffled official order) and every annotation."""
    rng = np.random.default_rng(seed)
    k = len(CLASSES)
    clean = rng.permutation(np.repeat(np.arange(k), PER_CLASS)).astype(np.int64)  # official order
    labels = {"clean_label": clean}
    for key in ANNOTATIONS.values():
        noisy = clean.copy()
        flip = rng.random(clean.size) < 0.4
        noisy[flip] = (clean[flip] + rng.integers(1, k, flip.sum())) % k
        labels[key] = noisy
    images = root / "images"
    for c, cls in enumerate(CLASSES):
        for rank, i in enumerate(np.flatnonzero(clean == c)):
            (images / "train" / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((4, 4, 3), 8 * i, dtype=np.uint8)).save(images / "train" / cls / f"{rank:04d}.png")
        (images / "test" / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(images / "test" / cls / "0000.png")
    human = root / "human.pt"
    torch.save(labels, human)
    return images, human, labels


def test_each_annotation_is_written_in_the_folder_datasets_order(tmp_path: Path) -> None:
    images, human, labels = write_snapshots(tmp_path)
    out = tmp_path / "cifar10n"
    summary = prepare_cifar10n(images, human, out)
    assert summary["n_train"] == PER_CLASS * len(CLASSES) and summary["n_test"] == len(CLASSES)
    train = [e for e in list_tree(out / "images") if e.split == "train"]  # the folder dataset's order
    official = [int(load_image(e.file, size=4, channels=3)[0, 0, 0]) // 8 for e in train]  # decoded from pixels
    assert sorted(official) == list(range(len(train)))
    for name, key in ANNOTATIONS.items():
        written = np.load(out / "labels" / f"{name}.npy")
        assert written.dtype == np.int64 and written.tolist() == labels[key][official].tolist(), name
        wrong = float((labels[key] != labels["clean_label"]).mean())
        assert summary["wrong"][name] == pytest.approx(wrong, abs=1e-6)
    assert [CLASSES.index(e.label) for e in train] == labels["clean_label"][official].tolist()


def test_files_that_are_not_the_labelled_images_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    images, human, _ = write_snapshots(tmp_path)
    (images / "train" / "cat" / "0000.png").unlink()  # one image of a class missing: the order is off from there
    out = tmp_path / "cifar10n"
    with pytest.raises(ValueError, match=r"train/cat: 2 files, but .* has 3 images of class 3 \(cat\)"):
        prepare_cifar10n(images, human, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["human.pt", "images"]  # no out, no staging


def test_an_existing_layout_is_replaced_only_when_asked(tmp_path: Path) -> None:
    images, human, _ = write_snapshots(tmp_path)
    out = tmp_path / "cifar10n"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    result = runner.invoke(app, ["prepare-cifar10n", str(images), str(human), "--out", str(out)])
    assert result.exit_code == 1 and "exists: remove it or pass --force" in result.output
    assert (out / "mine.txt").read_text() == "keep"
    result = runner.invoke(app, ["prepare-cifar10n", str(images), str(human), "--out", str(out), "--force"])
    assert result.exit_code == 0, result.output
    assert "30 train and 10 test images; wrong labels: worse" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["cifar10n.json", "images", "labels"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar10n", "human.pt", "images"]  # no staging left


def test_a_label_file_of_another_length_is_one_line(tmp_path: Path) -> None:
    images, human, labels = write_snapshots(tmp_path)
    torch.save({**labels, "worse_label": labels["worse_label"][:-1]}, human)
    result = runner.invoke(app, ["prepare-cifar10n", str(images), str(human), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "[worse_label]: 29 labels" in result.output


def test_the_preset_trains_on_each_train_images_own_annotation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """prepare-cifar10n, then the cifar10n_jpeg preset's download and inject-noise: every noisy train image carries
    the annotation of its own official index (read back from its pixels), the trusted subset CIFAR-10's label."""
    import json

    import yaml

    from labelnoise.config import merge, read_yaml
    from tests.conftest import REPO

    images, human, labels = write_snapshots(tmp_path / "snapshots")
    prepare_cifar10n(images, human, tmp_path / "data" / "own" / "cifar10n")
    params = merge(merge(read_yaml(REPO / "params.yaml"), read_yaml(REPO / "presets" / "cifar10n_jpeg.yaml")),
                   {"base": {"threads": 1}, "data": {"trusted_size": 10}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", new_store(tmp_path))
    monkeypatch.delenv("DVC_ROOT", raising=False)
    for stage in ("download", "inject-noise"):
        result = runner.invoke(app, [stage])
        assert result.exit_code == 0, result.output
    prepared, noisy = np.load(tmp_path / "data" / "prepared.npz"), np.load(tmp_path / "data" / "noisy.npz")
    official = prepared["images"][:, 0, 0, 0].astype(np.int64) // 8  # (N,) each image's official index (train)
    train, clean = prepared["train_idx"], prepared["clean_idx"]
    assert noisy["labels"].tolist() == labels["worse_label"][official[train]].tolist()
    assert noisy["mask"].tolist() == (labels["worse_label"] != labels["clean_label"])[official[train]].tolist()
    assert prepared["labels"][clean].tolist() == labels["clean_label"][official[clean]].tolist()
    report = json.loads((tmp_path / "reports" / "noise.json").read_text())
    assert report["realised_rate"] == pytest.approx(noisy["mask"].mean())
