"""Your own data (``data.dataset: folder``): image trees and manifests read from disk, a trusted subset given as a
file, and datasets without true train labels, from the reader up to `dvc repro` of the whole pipeline.

The images are scikit-learn's digits written as PNG files of mixed modes and sizes (tests.helpers.write_digits),
so the tests know every true label and can check what the pipeline recovers without telling it.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import shutil
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from labelnoise import datasets
from labelnoise.config import load_config
from labelnoise.datasets.folder import load_image
from labelnoise.io import read_label_csv
from labelnoise.scaffold import sh, tiny_project
from stages.download import read_trusted_file
from tests.helpers import write_digits

REPO = Path(__file__).resolve().parent.parent


def _data(path: Path, **kw: object) -> datasets.DataConfig:
    cfg = load_config(REPO / "params.yaml", ["data.dataset=folder", "data.image_size=8", "data.channels=1"])
    return dataclasses.replace(cfg.data, path=str(path), **kw)


# ----------------------------------------------------------------------------- reading images
def test_an_8x8_grayscale_png_is_read_back_exactly(tmp_path: Path) -> None:
    pixels = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    Image.fromarray(pixels, mode="L").save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_image(tmp_path / "a.png", size=8, channels=1), pixels[None])
    rgb = load_image(tmp_path / "a.png", size=8, channels=3)  # gray → RGB: three equal channels
    assert rgb.shape == (3, 8, 8) and (rgb == pixels[None]).all()


def test_reading_many_images_shows_a_bar_in_a_terminal_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import sys

    from labelnoise.datasets.folder import load_images

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    for i in range(3):
        Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8), mode="L").save(tmp_path / f"{i}.png")
    files = sorted(tmp_path.glob("*.png"))
    shown = {}
    for stream in (Terminal(), io.StringIO()):  # a terminal, then a pipe or a log file
        monkeypatch.setattr(sys, "stderr", stream)
        images = load_images(files, size=8, channels=1)
        shown[stream.isatty()] = stream.getvalue()
    assert images.shape == (3, 1, 8, 8) and [int(x[0, 0, 0]) for x in images] == [0, 40, 80]
    assert "reading 3 images" in shown[True] and shown[False] == ""


def test_resize_and_centre_crop(tmp_path: Path) -> None:
    """A 40x20 image (left half black, right half white) becomes 8x8 from its centre: the shorter side is scaled
    to 8 (→ 16x8) and the middle 8 columns kept, half black, half white."""
    img = np.zeros((20, 40, 3), dtype=np.uint8)
    img[:, 20:] = 255
    Image.fromarray(img, mode="RGB").save(tmp_path / "wide.png")
    out = load_image(tmp_path / "wide.png", size=8, channels=1)
    assert out.shape == (1, 8, 8)
    assert (out[0, :, :3] < 10).all() and (out[0, :, 5:] > 245).all()


@pytest.mark.parametrize("layout", ["tree", "split_tree", "manifest"])
def test_every_layout_gives_the_images_labels_names_and_split(layout: str, tmp_path: Path) -> None:
    own = write_digits(tmp_path, layout=layout, n=200)
    raw = datasets.load_dataset(_data(own["path"]))
    assert raw.classes == own["classes"]  # class names kept, in label order
    np.testing.assert_array_equal(raw.labels, own["labels"])
    assert raw.paths == own["names"] and raw.n_official_train == own["n_train"]
    assert raw.images.shape == (200, 1, 8, 8) and raw.images.dtype == np.uint8
    assert raw.source == f"folder:{own['path']}"


def test_modes_and_sizes_all_become_the_same_digit(tmp_path: Path) -> None:
    """write_digits saves each digit as 8x8, 16x16 or 12x20 and as L, RGB or P: read back at 8x8 grayscale, the
    8x8 ones are exact and the rest stay close to the original digit."""
    from sklearn.datasets import load_digits

    own = write_digits(tmp_path, layout="manifest", n=90, test_every=1000)
    raw = datasets.load_dataset(_data(own["path"]))
    original = (load_digits().images[:90] * 255 / 16).round()
    order = [int(Path(n).stem) for n in raw.paths]
    err = np.abs(raw.images[:, 0].astype(float) - original[order]).mean(axis=(1, 2))  # (90,) mean abs error
    exact = np.array([i // 3 % 3 == 0 for i in order])  # saved at 8x8
    assert (err[exact] == 0).all() and err[~exact].mean() < 30


def test_parquet_manifest_and_given_class_order(tmp_path: Path) -> None:
    import pandas as pd

    own = write_digits(tmp_path, layout="manifest", n=100)
    rows = pd.read_csv(own["path"])
    rows.to_parquet(tmp_path / "manifest.parquet")
    order = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    raw = datasets.load_dataset(_data(tmp_path / "manifest.parquet", classes=order))
    assert raw.classes == order
    assert [order[k] for k in raw.labels] == [own["classes"][k] for k in own["labels"]]


def test_skip_bad_images_leaves_them_out_and_reports_them(tmp_path: Path) -> None:
    own = write_digits(tmp_path, layout="tree", n=100, corrupt=(3, 40))
    raw = datasets.load_dataset(_data(own["path"], skip_bad_images=True))
    assert len(raw.images) == 98 and len(raw.rejected) == 2
    assert all("cannot be read as an image" in line for line in raw.rejected)
    bad = {n for n in own["names"] if int(Path(n).stem) in (3, 40)}  # e.g. three/0003.png
    assert bad == {line.split(":")[0] for line in raw.rejected} and not bad & set(raw.paths)


def test_trusted_file_by_index_or_by_path(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("index,label\n4,two\n0,1\n")
    (tmp_path / "b.csv").write_text("path,label\nx/b.png,two\nx/a.png,one\n")
    classes, paths = ["zero", "one", "two"], ["x/a.png", "x/b.png"]
    idx, labels = read_trusted_file(str(tmp_path / "a.csv"), classes=classes, paths=None, n=5)
    assert idx.tolist() == [4, 0] and labels.tolist() == [2, 1]
    idx, labels = read_trusted_file(str(tmp_path / "b.csv"), classes=classes, paths=paths, n=2)
    assert idx.tolist() == [1, 0] and labels.tolist() == [2, 1]
    for text, says in (("index,label\n5,one\n", "not one of the dataset's 0..4"), ("index,label\n1,3\n", "outside"),
                       ("index,label\n1,one\n1,two\n", "each once"), ("index,label\n1,seven\n", "neither")):
        (tmp_path / "c.csv").write_text(text)
        with pytest.raises(ValueError, match=says):
            read_trusted_file(str(tmp_path / "c.csv"), classes=classes, paths=None, n=5)


def test_a_given_clean_subset_is_the_clean_split_and_never_overlaps() -> None:
    labels = np.arange(100) % 5
    s = datasets.make_splits(labels, n_official_train=80, trusted_size=0, val_size=0, test_size=0, train_limit=0,
                             seed=0, clean_idx=np.array([3, 7, 11]))
    assert s.clean_idx.tolist() == [3, 7, 11] and not set(s.train_idx) & {3, 7, 11}
    assert s.test_idx.tolist() == list(range(80, 100))
    with pytest.raises(ValueError, match="index 85 is the test split"):
        datasets.make_splits(labels, n_official_train=80, trusted_size=0, val_size=0, test_size=0, train_limit=0,
                             seed=0, clean_idx=np.array([3, 85]))


# ----------------------------------------------------------------------------- files that are not what they seem
def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` 8-bit grayscale pixels and holds none (what a decompression bomb's
    header looks like: PIL refuses it from the header alone)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def _manifest(folder: Path, rows: list[str], *, images: tuple[str, ...] = ("a.png", "b.png", "c.png", "d.png"),
              text: str | None = None) -> Path:
    """``folder/m.csv`` with ``rows`` (after the header path,label,split), and 8x8 images ``images`` beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in images:
        Image.fromarray(np.full((8, 8), 100, dtype=np.uint8)).save(folder / name)
    (folder / "m.csv").write_text(text if text is not None else "path,label,split\n" + "\n".join(rows) + "\n")
    return folder / "m.csv"


def test_16_bit_images_are_scaled_by_the_full_16_bit_range(tmp_path: Path) -> None:
    """A 16-bit PNG (mode I;16) and a 32-bit integer TIFF (mode I) holding 0..65535 come out as v * 255 / 65535,
    rounded: the whole grey scale, not 0 and 255 only. Values a 16-bit range cannot hold, or floating point
    pixels, are refused in one line."""
    values = (np.arange(64).reshape(8, 8) * 1040).astype(np.uint16)  # 0 .. 65520
    expected = np.round(values * (255 / 65535)).astype(np.uint8)
    Image.fromarray(values).save(tmp_path / "a.png")
    Image.fromarray(values.astype(np.int32)).save(tmp_path / "b.tif")
    assert Image.open(tmp_path / "a.png").mode == "I;16" and Image.open(tmp_path / "b.tif").mode == "I"
    for name in ("a.png", "b.tif"):
        np.testing.assert_array_equal(load_image(tmp_path / name, size=8, channels=1), expected[None])
        rgb = load_image(tmp_path / name, size=8, channels=3)
        assert rgb.shape == (3, 8, 8) and (rgb == expected[None]).all()
    Image.fromarray(np.full((8, 8), 70000, dtype=np.int32)).save(tmp_path / "c.tif")
    Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32)).save(tmp_path / "d.tif")
    for name, says in (("c.tif", "outside 0..65535"), ("d.tif", "floating-point")):
        with pytest.raises(ValueError, match=says):
            load_image(tmp_path / name, size=8, channels=1)


@pytest.mark.parametrize(("folders", "classes"), [
    (["5", "7"], ["5", "7"]), (["10", "9", "100"], ["9", "10", "100"]), (["0", "1", "2"], ["0", "1", "2"]),
    (["b", "10", "a"], ["10", "a", "b"])])
def test_class_folders_named_by_numbers_are_names(tmp_path: Path, folders: list[str], classes: list[str]) -> None:
    """The classes are the folders found (integers sorted as numbers), never 0..max: no empty class appears."""
    for name in folders:
        (tmp_path / name).mkdir()
        Image.fromarray(np.full((8, 8), 10 * len(name), dtype=np.uint8)).save(tmp_path / name / "x.png")
    raw = datasets.load_dataset(_data(tmp_path, test_size=1))
    assert raw.classes == classes
    assert [raw.classes[k] for k in raw.labels] == [p.split("/")[0] for p in raw.paths]


def test_one_class_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "5").mkdir()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "5" / "x.png")
    with pytest.raises(ValueError, match=r"has 1 class \(5\); a classifier needs at least 2"):
        datasets.load_dataset(_data(tmp_path, test_size=1))


def test_manifest_labels_are_names_and_an_index_needs_data_classes(tmp_path: Path) -> None:
    """A mistyped label 1000000 is one more class, not a million; an integer label is a class index only when
    data.classes names the classes (and none of them is an integer)."""
    path = _manifest(tmp_path, ["a.png,3,", "b.png,1000000,", "c.png,3,test", "d.png,3,"])
    raw = datasets.load_dataset(_data(path))
    assert raw.classes == ["3", "1000000"] and raw.labels.tolist() == [0, 1, 0, 0]
    path = _manifest(tmp_path, ["a.png,1,", "b.png,cat,", "c.png,0,test", "d.png,dog,"])
    raw = datasets.load_dataset(_data(path, classes=["cat", "dog"]))
    assert raw.labels.tolist() == [1, 0, 1, 0]
    with pytest.raises(ValueError, match=r"row 4 \(c.png\) has the unknown class '7'"):
        datasets.load_dataset(_data(_manifest(tmp_path, ["a.png,1,", "b.png,cat,", "c.png,7,", "d.png,dog,"]),
                                    classes=["cat", "dog"]))
    with pytest.raises(ValueError, match="has the unknown class '0'"):  # integer names: a label is one of them
        datasets.load_dataset(_data(_manifest(tmp_path, ["a.png,10,", "b.png,20,", "c.png,0,", "d.png,10,"]),
                                    classes=["10", "20"]))


@pytest.mark.parametrize(("rows", "says"), [
    (["a.png,x,train", "b.png,y,", "a.png,x,test"], r"row 2 \(a.png\) and row 4 \(a.png\) are the same image, in "
                                                   r"train and test"),
    (["a.png,x,", "b.png,y,", "./sub/../a.png,x,"], r"row 2 \(a.png\) and row 4 \(./sub/../a.png\) are the same image"),
    (["a.png,x,", "b.png,y,", "link.png,x,test"], r"row 2 \(a.png\) and row 4 \(link.png\) are the same image, in "
                                                  "train and test"),
])
def test_a_manifest_lists_each_image_once(tmp_path: Path, rows: list[str], says: str) -> None:
    path = _manifest(tmp_path, rows)
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.png").symlink_to(tmp_path / "a.png")
    with pytest.raises(ValueError, match=says):
        datasets.load_dataset(_data(path))


def test_a_tree_refuses_the_same_file_in_train_and_test(tmp_path: Path) -> None:
    own = write_digits(tmp_path / "own", layout="split_tree", n=30)
    first = own["path"] / own["names"][0]  # train/<class>/<i>.png
    (own["path"] / own["names"][-1]).with_name("copy.png").symlink_to(first)  # in a test class folder
    with pytest.raises(ValueError, match=f"{own['names'][0]} and test/.*/copy.png are the same image, in train and "
                                         "test"):
        datasets.load_dataset(_data(own["path"]))


@pytest.mark.parametrize("where", ["relative", "absolute", "link", "passwd", "link_folder"])
def test_every_image_lies_inside_the_data_folder(tmp_path: Path, where: str) -> None:
    """A path that leaves the manifest's folder (``..``, absolute, or a link to a file elsewhere) is one line, before
    any file is opened; an absolute path inside it is fine."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(outside / "z.png")
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    (folder / "link.png").symlink_to(outside / "z.png")
    (folder / "sub" / "far").symlink_to(outside)
    bad = {"relative": "../elsewhere/z.png", "absolute": str(outside / "z.png"), "link": "link.png",
           "passwd": "../../../../../../../../etc/passwd", "link_folder": "sub/far/z.png"}[where]
    path = _manifest(folder, ["a.png,x,", f"{bad},y,", "c.png,y,", f"{folder / 'd.png'},x,test"])
    with pytest.raises(ValueError, match=rf"row 3 \({re.escape(bad)}\) is outside {re.escape(str(folder))} "):
        datasets.load_dataset(_data(path, skip_bad_images=True))
    path = _manifest(folder, ["a.png,x,", "b.png,y,", "c.png,y,", f"{folder / 'd.png'},x,test"])
    assert datasets.load_dataset(_data(path)).paths[-1] == str(folder / "d.png")


def test_a_tree_refuses_a_link_out_of_it(tmp_path: Path) -> None:
    own = write_digits(tmp_path / "own", layout="tree", n=30)
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "z.png")
    (own["path"] / "zero" / "z.png").symlink_to(tmp_path / "z.png")
    with pytest.raises(ValueError, match=r"zero/z.png is outside .*own .*resolves to .*z.png"):
        datasets.load_dataset(_data(own["path"]))


@pytest.mark.parametrize("pixels", [30000, 10000])  # over twice PIL's limit (its error), over it (its warning)
def test_a_decompression_bomb_is_a_bad_image(tmp_path: Path, pixels: int) -> None:
    own = write_digits(tmp_path, layout="tree", n=40)
    bomb = own["path"] / own["names"][5]
    bomb.write_bytes(_png_header(pixels, pixels))
    with pytest.raises(ValueError, match=rf"{re.escape(str(bomb))} cannot be read as an image \(.*exceeds limit"):
        datasets.load_dataset(_data(own["path"], test_size=5))
    raw = datasets.load_dataset(_data(own["path"], test_size=5, skip_bad_images=True))
    assert len(raw.images) == 39 and raw.rejected == [f"{own['names'][5]}: skipped, cannot be read as an image "
                                                      f"(Image size ({pixels * pixels} pixels) exceeds limit of "
                                                      f"{Image.MAX_IMAGE_PIXELS * (2 if pixels == 30000 else 1)} "
                                                      "pixels, could be decompression bomb DOS attack.)"]


def test_manifest_with_a_byte_order_mark_or_without_rows(tmp_path: Path) -> None:
    path = _manifest(tmp_path, [], text="\ufeffpath,label\na.png,x\nb.png,y\nc.png,x\nd.png,y\n")
    assert datasets.load_dataset(_data(path, test_size=2)).classes == ["x", "y"]
    for text, says in (("path,label,split\n", "has a header row but no image rows"),
                       ("", r"needs a header row with the columns path,label\[,split\] \(found: nothing\)"),
                       ("file,class\na.png,x\n", r"needs a header row .*\(found: file, class\)")):
        with pytest.raises(ValueError, match=rf"data.path: {re.escape(str(path))} {says}"):
            datasets.load_dataset(_data(_manifest(tmp_path, [], text=text)))


def test_a_missing_parquet_cell_is_empty_not_a_class_named_none(tmp_path: Path) -> None:
    import pandas as pd

    _manifest(tmp_path, [])
    pd.DataFrame({"path": ["a.png", "b.png", "c.png"], "label": ["x", None, "y"]}).to_parquet(tmp_path / "m.parquet")
    with pytest.raises(ValueError, match=r"row 3: needs a path, a label .* got 'b.png', '', 'train'"):
        datasets.load_dataset(_data(tmp_path / "m.parquet"))


# ----------------------------------------------------------------------------- label files
def test_a_trusted_file_names_the_image_it_repeats(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text("path,label\nx/b.png,two\nx/a.png,one\nx/b.png,one\n")
    with pytest.raises(ValueError, match="lists the image 'x/b.png' 2 times: list each once"):
        read_trusted_file(str(tmp_path / "c.csv"), classes=["zero", "one", "two"], paths=["x/a.png", "x/b.png"], n=2)


@pytest.mark.parametrize(("text", "says"), [
    ("index,label\n", "has a header row but no rows of labels"),
    ("", r"needs a header row with the columns index and label \(found: nothing\)"),
    ("index,label\n0,99999999999999999999999\n", "row 2: label '99999999999999999999999' is too large to be a class "
                                                 "index"),
    ("index,label\n0,one\n1,\u00b2\n", r"row 3: label '\u00b2' is neither a class index nor a class name"),
    ("index,label\n\u00b2,one\n", r"row 2: index '\u00b2' is not a non-negative integer"),
    ("index,label\n99999999999999999999999,one\n", "row 2: index '99999999999999999999999' is too large"),
    ("index,label\n0,one\n\n1,two\n1,x\n", r"row 5: label 'x' is neither"),  # a blank line is a row too
    (b"\x89PNG\r\n\x1a\n\x00\x00", r"cannot be read \(not UTF-8 text: .utf-8. codec"),
])
def test_label_csv_errors_name_the_file_and_row(tmp_path: Path, text: str | bytes, says: str) -> None:
    path = tmp_path / "labels.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError, match=rf"^data.trusted_file: {re.escape(str(path))}:? .*{says}"):
        read_label_csv(path, param="data.trusted_file", classes=["zero", "one", "two"])


def test_label_csv_with_a_byte_order_mark_and_integer_class_names(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_bytes("\ufeffindex,label\n0,two\n1,0\n".encode())
    assert read_label_csv(path, param="p", classes=["zero", "one", "two"])[0] == "index"
    assert read_label_csv(path, param="p", classes=["zero", "one", "two"])[2].tolist() == [2, 0]
    path.write_text("index,label\n0,10\n1,0\n")  # class names that are integers: a label is one of them
    with pytest.raises(ValueError, match=r"row 3: label '0' is not a class name \(classes: 10, 20\)"):
        read_label_csv(path, param="p", classes=["10", "20"])


# ----------------------------------------------------------------------------- the pipeline on your own data
WRONG = 0.3  # fraction of train labels the tests make wrong


def _flip(labels: np.ndarray, rate: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels with round(rate * n) of them changed to another class, the mask of those)."""
    rng = np.random.default_rng(seed)
    wrong = np.zeros(labels.size, dtype=bool)
    wrong[rng.permutation(labels.size)[: round(rate * labels.size)]] = True
    return np.where(wrong, (labels + rng.integers(1, 10, labels.size)) % 10, labels), wrong


def _params(root: Path, **data: object) -> dict:
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["data"].update(dataset="folder", image_size=8, channels=1, trusted_size=0, **data)
    return raw


def _with_truth(root: Path) -> dict:
    """A tree with its own test split and true labels; the noisy labels come as a file (path,label), the trusted
    subset as another (index,label)."""
    env = tiny_project(root, repro=False)
    own = write_digits(root / "data/own/images", layout="split_tree")
    n_train, classes = own["n_train"], own["classes"]
    given, wrong = _flip(own["labels"][:n_train], WRONG, seed=1)
    given = np.concatenate([given, own["labels"][n_train:]])  # one label per image; the test part keeps its own
    with open(root / "data/own/noisy_labels.csv", "w") as f:
        f.write("path,label\n" + "".join(f"{p},{classes[y]}\n" for p, y in zip(own["names"], given, strict=True)))
    trusted = np.random.default_rng(2).permutation(n_train)[:150]
    (root / "data/own/clean.csv").write_text("index,label\n" + "".join(f"{i},{own['labels'][i]}\n" for i in trusted))
    raw = _params(root, path="data/own/images", trusted_file="data/own/clean.csv", test_size=0)
    raw["noise"]["kind"] = "given"
    raw["noise"]["given"]["file"] = "data/own/noisy_labels.csv"
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    sh(["dvc", "repro"], root, env)
    trusted_names = {own["names"][i] for i in trusted}  # the trusted subset is not train data
    return {"env": env, "own": own, "wrong": {n: w for n, w in zip(own["names"][:n_train], wrong, strict=True)
                                              if n not in trusted_names}}


def _without_truth(root: Path) -> dict:
    """A manifest whose train labels are the noisy ones (data.truth: false), a labelled test split, and a trusted
    subset as a path,label file; nothing is injected (noise.kind: none)."""
    env = tiny_project(root, repro=False)
    own = write_digits(root / "data/own", layout="manifest")
    names, classes, n_train = own["names"], own["classes"], own["n_train"]
    given, wrong = _flip(own["labels"][:n_train], WRONG, seed=3)
    label_of = {n: classes[y] for n, y in zip(names[:n_train], given, strict=True)}
    rows = list(csv.DictReader(open(own["path"])))
    with open(own["path"], "w") as f:
        f.write("path,label,split\n" + "".join(f"{r['path']},{label_of.get(r['path'], r['label'])},{r['split']}\n"
                                               for r in rows))
    trusted = np.random.default_rng(4).permutation(n_train)[:150]
    (root / "data/own/clean.csv").write_text(
        "path,label\n" + "".join(f"{names[i]},{classes[own['labels'][i]]}\n" for i in trusted))
    raw = _params(root, path="data/own/manifest.csv", trusted_file="data/own/clean.csv", truth=False)
    raw["noise"]["kind"] = "none"
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    sh(["dvc", "repro"], root, env)
    trusted_names = {names[i] for i in trusted}
    return {"env": env, "own": own, "wrong": {n: w for n, w in zip(names[:n_train], wrong, strict=True)
                                              if n not in trusted_names}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    """Both projects after their `dvc repro`, run at the same time."""
    roots = {"truth": tmp_path_factory.mktemp("truth"), "no_truth": tmp_path_factory.mktemp("no_truth")}
    with ThreadPoolExecutor(2) as pool:
        futures = {k: pool.submit(make, roots[k]) for k, make in (("truth", _with_truth), ("no_truth", _without_truth))}
        return {k: (roots[k], f.result()) for k, f in futures.items()}


def _issues(root: Path) -> list[dict[str, str]]:
    with open(root / "reports/label_issues.csv", newline="") as f:
        return list(csv.DictReader(f))


def _flags_recover_the_wrong_labels(rows: list[dict[str, str]], wrong: dict[str, bool]) -> tuple[float, float]:
    """Precision and recall of the table's flags against the labels the test made wrong (rows found by path)."""
    assert {r["path"] for r in rows} == set(wrong)  # one row per train image, named by its file
    flagged = {r["path"] for r in rows if r["flagged"] == "yes"}
    bad = {p for p, w in wrong.items() if w}
    precision, recall = len(flagged & bad) / len(flagged), len(flagged & bad) / len(bad)
    assert precision > 0.8 and recall > 0.6, (precision, recall)
    return precision, recall


def test_with_true_labels_the_table_finds_the_wrong_labels_and_the_reports_measure_it(runs: dict) -> None:
    root, run = runs["truth"]
    metrics = json.loads((root / "reports/metrics.json").read_text())
    noise = json.loads((root / "reports/noise.json").read_text())
    data = json.loads((root / "reports/data.json").read_text())
    assert data["sizes"]["clean"] == 150 and data["sizes"]["test"] == len(run["own"]["names"]) - run["own"]["n_train"]
    assert data["classes"] == run["own"]["classes"] and all(data["true_labels"].values())
    # the realised rate of the given file, over the train split (the trusted 150 keep their labels)
    assert noise["realised_rate"] == pytest.approx(np.mean(list(run["wrong"].values())))
    precision, recall = _flags_recover_the_wrong_labels(_issues(root), run["wrong"])
    assert metrics["label_issues_precision"] == pytest.approx(precision)
    assert metrics["label_issues_recall"] == pytest.approx(recall)
    assert 0.5 < metrics["test_acc"] <= 1 and set(metrics["per_class"]) == set(run["own"]["classes"])
    assert metrics["detection_auroc"] is not None and "notes" not in metrics


def test_without_true_labels_nothing_truth_based_is_reported(runs: dict) -> None:
    root, run = runs["no_truth"]
    metrics = json.loads((root / "reports/metrics.json").read_text())
    noise = json.loads((root / "reports/noise.json").read_text())
    correction = json.loads((root / "reports/correction.json").read_text())
    data = json.loads((root / "reports/data.json").read_text())
    assert data["true_labels"] == {"train": False, "clean": True, "val": True, "test": True}
    assert noise["realised_rate"] is None and noise["transition"] is None and noise["true_labels"] is False
    # the manifest labels the trusted images too: beside their checked labels they show the noise itself
    assert json.loads((root / "reports/noise_estimate.json").read_text())["use"] == "paired"
    for key in ("noise_realised_rate", "noisy_label_acc", "n_corrupted", "detection_auroc", "label_issues_precision",
                "label_issues_recall", "label_acc_before", "recovered_label_acc"):
        assert metrics[key] is None, key
    assert correction["recovered_label_acc"] is None and correction["label_recovery"]["true_labels"] is False
    assert any("no true train labels" in note for note in metrics["notes"])
    assert 0.5 < metrics["test_acc"] <= 1  # the manifest's test split is labelled
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("labelnoise")
    logged = set().union(*(r.data.metrics for r in client.search_runs([exp.experiment_id])))
    assert not logged & {"detection_auroc", "noisy_label_acc", "realised_rate", "label_issues_precision",
                         "recovered_label_acc", "label_acc_before"}
    # the person acting on the table: its flags still find the labels that were wrong in the manifest
    _flags_recover_the_wrong_labels(_issues(root), run["wrong"])


def test_a_changed_image_reruns_the_stages_that_read_it(runs: dict, tmp_path: Path) -> None:
    root, run = runs["truth"]
    work = tmp_path / "copy"
    shutil.copytree(root, work, symlinks=True)
    assert "download" not in sh(["dvc", "status"], work, run["env"]).stdout
    first = work / "data/own/images" / run["own"]["names"][0]
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8), mode="L").save(first)
    sh(["dvc", "repro", "own_files"], work, run["env"])  # the listing of data/own (DVC itself never reads it)
    status = sh(["dvc", "status"], work, run["env"]).stdout
    assert "download:" in status and "inject_noise:" in status


def test_fit_in_python_is_the_pipeline_number_for_number(runs: dict) -> None:
    """labelnoise.fit on the same image files, given labels, trusted subset and test split, with the project's
    params, runs the pipeline's steps on the same engine: the same label-issues table, row for row, and the same
    test accuracies as `dvc repro`."""
    import labelnoise

    root, run = runs["no_truth"]
    classes = run["own"]["classes"]
    rows = list(csv.DictReader(open(root / "data/own/manifest.csv")))
    train, test = ([r for r in rows if r["split"] == split] for split in ("train", "test"))
    position = {r["path"]: i for i, r in enumerate(train)}
    checked = list(csv.DictReader(open(root / "data/own/clean.csv")))
    trusted = ([position[r["path"]] for r in checked], [classes.index(r["label"]) for r in checked])
    fitted = labelnoise.fit([root / "data/own" / r["path"] for r in train], [r["label"] for r in train],
                            trusted=trusted, test=([root / "data/own" / r["path"] for r in test],
                                                   [r["label"] for r in test]),
                            classes=classes, params=yaml.safe_load((root / "params.yaml").read_text()),
                            log=lambda line: None)
    pipeline = _issues(root)
    ours = fitted.label_issues
    assert [train[i]["path"] for i in ours["index"]] == [r["path"] for r in pipeline]  # the same order
    for column, cell in (("given", str), ("suggested", str), ("flagged", lambda v: "yes" if v else "no"),
                         ("p_given", "{:.4f}".format), ("p_suggested", "{:.4f}".format),
                         ("score", lambda v: "" if np.isnan(v) else f"{v:.4f}")):  # as the CSV writes them
        assert [cell(v) for v in ours[column]] == [r[column] for r in pipeline], column
    metrics = json.loads((root / "reports/metrics.json").read_text())
    assert fitted.metrics["test_acc"] == metrics["test_acc"]
    assert fitted.metrics["corrected_test_acc"] == metrics["corrected_test_acc"]
