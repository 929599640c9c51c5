"""Datasets: sources (cache, mirror, network via torchvision's real download code), verification,
splits, the prepared file, the training view, and the download stage.

The archives are written here, small, in the real formats (IDX .gz; CIFAR python tarballs), and
served over a loopback HTTP server; the torchvision classes' checksum constants are monkeypatched
to those of the test archives.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import pickle
import struct
import tarfile
import threading
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd

from labelnoise import datasets
from labelnoise.config import Config, DataConfig
from labelnoise.datasets import DataUnavailable, Prepared
from tests.helpers import new_store

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # nothing may be written outside tmp_path
    torch.set_num_threads(1)


@pytest.fixture
def data_cfg(make_config: Callable[..., Config], tmp_path: Path) -> Callable[..., DataConfig]:
    """``data_cfg(dataset=..., mirrors=[...], download=...)`` with the cache in tmp_path/raw."""

    def _make(**overrides: Any) -> DataConfig:
        mirrors = {overrides.get("dataset", "fashion_mnist"): overrides.pop("mirrors", [])}
        data = {"root": str(tmp_path / "raw"), "mirrors": mirrors, "download": False, **overrides}
        return make_config({"data": data}).data

    return _make


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        pass


@pytest.fixture
def http_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    """A folder served on a loopback HTTP server: (folder, base url ending in '/')."""
    served = tmp_path / "served"
    served.mkdir()
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- writing real formats
def idx_bytes(arr: np.ndarray) -> bytes:
    """IDX (ubyte): magic 0x0800 | ndim (2051 images, 2049 labels), big-endian dims, then the bytes."""
    header = struct.pack(">I", 0x0800 | arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def make_idx_arrays(seed: int = 0, n_train: int = 30, n_test: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def write_idx_gz(folder: Path, arrays: dict[str, np.ndarray], *, level: int = 9,
                 payloads: dict[str, bytes] | None = None) -> dict[str, str]:
    """Write the four ``<stem>.gz``; returns stem -> sha256 of the payload. ``payloads`` overrides bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    digests = {}
    for stem, arr in arrays.items():
        payload = (payloads or {}).get(stem, idx_bytes(arr))
        (folder / f"{stem}.gz").write_bytes(gzip.compress(payload, compresslevel=level, mtime=0))
        digests[stem] = hashlib.sha256(payload).hexdigest()
    return digests


def patch_resources(monkeypatch: pytest.MonkeyPatch, cls: type, folder: Path) -> None:
    """The class's md5 constants become those of the test archives in ``folder``."""
    monkeypatch.setattr(cls, "resources", [(f"{s}.gz", md5(folder / f"{s}.gz")) for s in STEMS])


def assert_idx_data(raw: datasets.RawData, arrays: dict[str, np.ndarray]) -> None:
    want_x = np.concatenate([arrays["train-images-idx3-ubyte"], arrays["t10k-images-idx3-ubyte"]])[:, None]
    want_y = np.concatenate([arrays["train-labels-idx1-ubyte"], arrays["t10k-labels-idx1-ubyte"]]).astype(np.int64)
    assert raw.images.dtype == np.uint8 and raw.labels.dtype == np.int64
    np.testing.assert_array_equal(raw.images, want_x)
    np.testing.assert_array_equal(raw.labels, want_y)
    assert raw.n_official_train == len(arrays["train-labels-idx1-ubyte"])


CIFAR = {
    "cifar10": (tvd.CIFAR10, [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta",
                "label_names", "labels", 10),
    "cifar100": (tvd.CIFAR100, ["train"], ["test"], "meta", "fine_label_names", "fine_labels", 100),
}


def write_cifar(folder: Path, name: str, seed: int = 0, per_batch: int = 4) -> tuple[Path, dict[str, Any]]:
    """A CIFAR python tarball (pickled batches, ``data`` uint8 N x 3072). Returns (path, contents)."""
    cls, train, test, meta, meta_key, label_key, k = CIFAR[name]
    rng = np.random.default_rng(seed)
    members, xs, ys = {}, {"train": [], "test": []}, {"train": [], "test": []}
    for part, batches in (("train", train), ("test", test)):
        for b in batches:
            x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
            y = rng.integers(0, k, per_batch).tolist()
            entry = {"data": x, label_key: y}
            if name == "cifar100":
                entry["coarse_labels"] = [c // 5 for c in y]
            members[b] = pickle.dumps(entry)
            xs[part].append(x)
            ys[part] += y
    classes = [f"class_{i}" for i in range(k)]
    members[meta] = pickle.dumps({meta_key: classes})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / cls.filename
    with tarfile.open(path, "w:gz") as tar:
        for member, data in members.items():
            info = tarfile.TarInfo(f"{cls.base_folder}/{member}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    images = np.concatenate(xs["train"] + xs["test"]).reshape(-1, 3, 32, 32)
    contents = {"images": images, "labels": np.array(ys["train"] + ys["test"]), "n_train": len(ys["train"]),
                "classes": classes, "md5": {m: hashlib.md5(d).hexdigest() for m, d in members.items()}}
    return path, contents


def patch_cifar(monkeypatch: pytest.MonkeyPatch, name: str, archive: Path, contents: dict[str, Any],
                url: str | None = None) -> None:
    cls, train, test, meta, meta_key, _, _ = CIFAR[name]
    m = contents["md5"]
    monkeypatch.setattr(cls, "tgz_md5", md5(archive))
    monkeypatch.setattr(cls, "train_list", [[b, m[b]] for b in train])
    monkeypatch.setattr(cls, "test_list", [[b, m[b]] for b in test])
    monkeypatch.setattr(cls, "meta", {"filename": meta, "key": meta_key, "md5": m[meta]})
    if url is not None:
        monkeypatch.setattr(cls, "url", url + cls.filename)


def rejected_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "labelnoise.datasets"]


# ----------------------------------------------------------------------------- MNIST family
@pytest.mark.parametrize(("name", "cls"), [("fashion_mnist", tvd.FashionMNIST), ("mnist", tvd.MNIST)])
def test_idx_network_uses_torchvision_download_and_fills_the_cache(
        name: str, cls: type, http_dir: tuple[Path, str], data_cfg: Callable[..., DataConfig],
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    served, url = http_dir
    arrays = make_idx_arrays()
    write_idx_gz(served, arrays)
    patch_resources(monkeypatch, cls, served)
    monkeypatch.setattr(cls, "mirrors", [url])

    raw = datasets.load_dataset(data_cfg(dataset=name, download=True))
    assert raw.source == "network" and raw.rejected == []
    assert_idx_data(raw, arrays)
    assert raw.classes == list(cls.classes) and raw.dataset == name
    raw_dir = tmp_path / "raw" / cls.__name__ / "raw"  # torchvision's layout
    assert all((raw_dir / s).is_file() and (raw_dir / f"{s}.gz").is_file() for s in STEMS)
    assert [p.name for p in (tmp_path / "raw").iterdir()] == [cls.__name__]  # no staging left

    again = datasets.load_dataset(data_cfg(dataset=name, download=False))  # the archives vouch for the cache
    assert again.source == "cache"
    assert_idx_data(again, arrays)


def test_idx_corrupt_download_is_rejected_and_never_cached(
        http_dir: tuple[Path, str], data_cfg: Callable[..., DataConfig], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    served, url = http_dir
    write_idx_gz(served, make_idx_arrays())
    patch_resources(monkeypatch, tvd.FashionMNIST, served)
    monkeypatch.setattr(tvd.FashionMNIST, "mirrors", [url])
    good_md5 = md5(served / "train-images-idx3-ubyte.gz")
    truncated = served / "train-images-idx3-ubyte.gz"
    truncated.write_bytes(truncated.read_bytes()[:-100])

    with pytest.raises(DataUnavailable) as err:
        datasets.load_dataset(data_cfg(download=True))
    msg = str(err.value)
    assert "\n" not in msg and "cache" in msg and "network" in msg
    assert any(f"md5 expected {good_md5}, got {md5(truncated)}" in line and "train-images-idx3-ubyte.gz" in line
               for line in rejected_lines(caplog))
    assert not [p for p in (tmp_path / "raw").rglob("*") if p.is_file()]  # nothing kept, staging removed


def test_idx_mirror_verified_by_payload_digest_then_cache_checked(
        data_cfg: Callable[..., DataConfig], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    mirror = tmp_path / "mirror"
    arrays = make_idx_arrays(seed=1)
    digests = write_idx_gz(mirror, arrays, level=1)  # recompressed: torchvision's md5 cannot match
    monkeypatch.setattr(datasets.get_dataset("fashion_mnist").source, "payload_sha256", digests)

    raw = datasets.load_dataset(data_cfg(mirrors=[str(mirror)]))
    assert raw.source == f"mirror:{mirror}" and raw.rejected == []
    assert_idx_data(raw, arrays)
    raw_dir = tmp_path / "raw" / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw_dir.iterdir()) == sorted(STEMS)  # payloads only: the .gz md5 differs

    assert datasets.load_dataset(data_cfg()).source == "cache"

    # A cached file that no longer matches is reported, deleted, and fetched again from the mirror.
    cached = raw_dir / "train-images-idx3-ubyte"
    cached.write_bytes(cached.read_bytes()[:-1] + b"\x00")
    raw = datasets.load_dataset(data_cfg(mirrors=[str(mirror)]))
    assert raw.source == f"mirror:{mirror}"
    assert_idx_data(raw, arrays)
    assert len(raw.rejected) == 1 and str(cached) in raw.rejected[0] and "sha256" in raw.rejected[0]
    assert raw.rejected[0] in " ".join(rejected_lines(caplog))


def test_idx_mirror_with_unknown_payload_is_rejected(
        data_cfg: Callable[..., DataConfig], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    mirror = tmp_path / "mirror"
    write_idx_gz(mirror, make_idx_arrays())  # neither torchvision's md5 nor the official payload
    with pytest.raises(DataUnavailable) as err:
        datasets.load_dataset(data_cfg(mirrors=[str(mirror), str(tmp_path / "absent")]))
    msg = str(err.value)
    assert "\n" not in msg
    assert f"mirror {mirror}: rejected" in msg and "absent: missing" in msg and "network: disabled" in msg
    lines = rejected_lines(caplog)
    expected = datasets.PAYLOAD_SHA256["fashion_mnist"]["train-images-idx3-ubyte"]
    assert any(str(mirror / "train-images-idx3-ubyte.gz") in line and "md5 expected" in line
               and f"payload sha256 expected {expected}, got" in line for line in lines)
    assert not [p for p in (tmp_path / "raw").rglob("*") if p.is_file()]


def test_idx_mirror_verified_by_archive_md5_keeps_the_archive(
        data_cfg: Callable[..., DataConfig], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    arrays = make_idx_arrays(seed=2)
    write_idx_gz(mirror, arrays)
    patch_resources(monkeypatch, tvd.MNIST, mirror)  # no payload table for mnist: the md5 is the proof

    raw = datasets.load_dataset(data_cfg(dataset="mnist", mirrors=[str(mirror)]))
    assert raw.source == f"mirror:{mirror}"
    assert_idx_data(raw, arrays)
    assert (tmp_path / "raw" / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").is_file()
    assert datasets.load_dataset(data_cfg(dataset="mnist")).source == "cache"


@pytest.mark.parametrize(("stem", "mangle", "problem"), [
    ("train-images-idx3-ubyte", lambda a: struct.pack(">I", 2049) + idx_bytes(a)[4:], "IDX magic expected 2051"),
    ("train-images-idx3-ubyte", lambda a: idx_bytes(a)[:-28], "body has"),
    ("t10k-labels-idx1-ubyte", lambda a: idx_bytes(np.r_[a[:-1], 10]), "label 10 out of range [0, 10)"),
    ("t10k-labels-idx1-ubyte", lambda a: idx_bytes(a[:-1]), "t10k: 10 images but 9 labels"),
])
def test_idx_content_is_sanity_checked(stem: str, mangle: Callable[[np.ndarray], bytes], problem: str,
                                       data_cfg: Callable[..., DataConfig], monkeypatch: pytest.MonkeyPatch,
                                       tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    mirror = tmp_path / "mirror"
    arrays = make_idx_arrays()
    write_idx_gz(mirror, arrays, payloads={stem: mangle(arrays[stem])})
    patch_resources(monkeypatch, tvd.MNIST, mirror)  # the archives "match": only the content check can object
    with pytest.raises(DataUnavailable, match=f"mirror {mirror}"):
        datasets.load_dataset(data_cfg(dataset="mnist", mirrors=[str(mirror)]))
    assert any(problem in line for line in rejected_lines(caplog))
    assert not (tmp_path / "raw" / "MNIST").exists()


# ----------------------------------------------------------------------------- CIFAR
@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_network_uses_torchvision_download(
        name: str, http_dir: tuple[Path, str], data_cfg: Callable[..., DataConfig],
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    served, url = http_dir
    archive, contents = write_cifar(served, name)
    patch_cifar(monkeypatch, name, archive, contents, url=url)
    cls = CIFAR[name][0]

    raw = datasets.load_dataset(data_cfg(dataset=name, download=True))
    assert raw.source == "network"
    assert raw.images.shape == (len(contents["labels"]), 3, 32, 32) and raw.images.dtype == np.uint8
    np.testing.assert_array_equal(raw.images, contents["images"])
    np.testing.assert_array_equal(raw.labels, contents["labels"])
    assert raw.n_official_train == contents["n_train"] and raw.classes == contents["classes"]
    assert [p.name for p in (tmp_path / "raw").iterdir()] == [cls.base_folder]  # extracted; tarball, staging gone

    again = datasets.load_dataset(data_cfg(dataset=name))
    assert again.source == "cache"
    np.testing.assert_array_equal(again.images, contents["images"])


def test_cifar_corrupt_download_is_rejected_and_never_cached(
        http_dir: tuple[Path, str], data_cfg: Callable[..., DataConfig], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    served, url = http_dir
    archive, contents = write_cifar(served, "cifar10")
    patch_cifar(monkeypatch, "cifar10", archive, contents, url=url)
    good = md5(archive)
    archive.write_bytes(archive.read_bytes()[:-50])

    with pytest.raises(DataUnavailable, match="network"):
        datasets.load_dataset(data_cfg(dataset="cifar10", download=True))
    assert any(f"md5 expected {good}, got {md5(archive)}" in line for line in rejected_lines(caplog))
    assert not list((tmp_path / "raw").iterdir())


def test_cifar_mirrors_in_order_bad_tarball_rejected(
        data_cfg: Callable[..., DataConfig], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    good_archive, contents = write_cifar(tmp_path / "good", "cifar100")
    patch_cifar(monkeypatch, "cifar100", good_archive, contents)
    bad_archive, _ = write_cifar(tmp_path / "bad", "cifar100", seed=5)

    raw = datasets.load_dataset(data_cfg(dataset="cifar100", mirrors=[str(tmp_path / "bad"), str(tmp_path / "good")]))
    assert raw.source == f"mirror:{tmp_path / 'good'}"
    assert len(raw.rejected) == 1 and str(bad_archive) in raw.rejected[0]
    assert f"md5 expected {md5(good_archive)}, got {md5(bad_archive)}" in raw.rejected[0]
    np.testing.assert_array_equal(raw.images, contents["images"])

    # A corrupted cached batch is reported and deleted; the cache alone then cannot serve.
    batch = tmp_path / "raw" / "cifar-100-python" / "train"
    batch.write_bytes(batch.read_bytes() + b"x")
    with pytest.raises(DataUnavailable, match="cache .*rejected train"):
        datasets.load_dataset(data_cfg(dataset="cifar100"))
    assert not batch.exists()


# ----------------------------------------------------------------------------- digits, real Fashion-MNIST
def test_digits_is_bundled_uint8(data_cfg: Callable[..., DataConfig], tmp_path: Path) -> None:
    raw = datasets.load_dataset(data_cfg(dataset="digits"))
    assert raw.source == "bundled" and raw.images.shape == (1797, 1, 8, 8) and raw.images.dtype == np.uint8
    assert raw.images.max() == 255 and raw.images.min() == 0
    assert raw.n_official_train == 1797 and raw.classes == [str(i) for i in range(10)]
    assert not (tmp_path / "raw").exists()


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_debian_fashion_mnist_mirror_is_verified(data_cfg: Callable[..., DataConfig]) -> None:
    raw = datasets.load_dataset(data_cfg(mirrors=[str(DEBIAN_FASHION)]))
    assert raw.source == f"mirror:{DEBIAN_FASHION}" and raw.rejected == []
    assert raw.images.shape == (70000, 1, 28, 28) and raw.n_official_train == 60000
    assert np.array_equal(np.bincount(raw.labels[:60000]), np.full(10, 6000))
    assert raw.classes[0] == "T-shirt/top"


# ----------------------------------------------------------------------------- splits
def _labels(n_per_class: list[int], seed: int = 0) -> np.ndarray:
    y = np.concatenate([np.full(n, c) for c, n in enumerate(n_per_class)]).astype(np.int64)
    return np.random.default_rng(seed).permutation(y)


def test_splits_disjoint_exact_and_stratified() -> None:
    labels = _labels([50, 40, 30, 60, 20] + [10] * 5)  # imbalanced, 250 in all
    n_train_part = 200
    s = datasets.make_splits(labels, n_official_train=n_train_part, trusted_size=23, val_size=17, test_size=0,
                             train_limit=0, seed=3)
    parts = [s.train_idx, s.clean_idx, s.val_idx, s.test_idx]
    assert all(p.dtype == np.int64 for p in parts)
    assert len(np.unique(np.concatenate(parts))) == sum(map(len, parts)) == len(labels)  # disjoint, cover all
    np.testing.assert_array_equal(s.test_idx, np.arange(n_train_part, len(labels)))  # official test untouched
    assert (len(s.clean_idx), len(s.val_idx), len(s.train_idx)) == (23, 17, n_train_part - 40)
    clean_counts = np.bincount(labels[s.clean_idx], minlength=10)
    assert clean_counts.max() - clean_counts.min() <= 1  # as equal per class as possible
    # val is proportional to the class sizes of what is left (largest remainder: within 1 per class)
    pool = np.setdiff1d(np.arange(n_train_part), s.clean_idx)
    expected = 17 * np.bincount(labels[pool], minlength=10) / len(pool)
    assert np.all(np.abs(np.bincount(labels[s.val_idx], minlength=10) - expected) < 1)


def test_clean_is_balanced_up_to_small_classes() -> None:
    labels = _labels([3, 100, 100, 100])
    s = datasets.make_splits(labels, n_official_train=len(labels), trusted_size=40, val_size=0, test_size=30,
                             train_limit=0, seed=0)
    counts = np.bincount(labels[s.clean_idx], minlength=4)
    assert counts.sum() == 40 and counts[0] <= 3 and counts[1:].max() - counts[1:].min() <= 1


def test_splits_seeded_and_train_limit() -> None:
    labels = _labels([30] * 10)
    kw = dict(n_official_train=250, trusted_size=20, val_size=10, test_size=0, train_limit=100)
    a = datasets.make_splits(labels, seed=7, **kw)
    b = datasets.make_splits(labels, seed=7, **kw)
    c = datasets.make_splits(labels, seed=8, **kw)
    for f in ("train_idx", "clean_idx", "val_idx", "test_idx"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert not np.array_equal(a.clean_idx, c.clean_idx) and not np.array_equal(a.train_idx, c.train_idx)
    assert len(a.train_idx) == 100
    assert not set(a.train_idx) & (set(a.clean_idx) | set(a.val_idx) | set(a.test_idx))


def test_splits_without_official_test_hold_out_test_size() -> None:
    labels = _labels([40] * 5)
    s = datasets.make_splits(labels, n_official_train=200, trusted_size=10, val_size=0, test_size=50,
                             train_limit=0, seed=0)
    assert len(s.test_idx) == 50 and np.array_equal(np.bincount(labels[s.test_idx]), np.full(5, 10))
    assert len(s.val_idx) == 0 and len(s.train_idx) == 140


@pytest.mark.parametrize(("kw", "match"), [
    (dict(trusted_size=150, val_size=50), "data.trusted_size"),
    (dict(trusted_size=10, val_size=0, train_limit=500), "data.train_limit"),
    (dict(trusted_size=10, val_size=0, n_official_train=200, test_size=0), "data.test_size"),
])
def test_split_sizes_too_large_name_the_param(kw: dict[str, int], match: str) -> None:
    args = dict(n_official_train=150, trusted_size=0, val_size=0, test_size=0, train_limit=0, seed=0) | kw
    with pytest.raises(ValueError, match=match):
        datasets.make_splits(_labels([40] * 5), **args)


# ----------------------------------------------------------------------------- prepared file, train view
def _prepared(val: int = 0) -> Prepared:
    labels = _labels([12] * 4)
    s = datasets.make_splits(labels, n_official_train=40, trusted_size=8, val_size=val, test_size=0,
                             train_limit=0, seed=0)
    images = np.random.default_rng(0).integers(0, 256, (48, 1, 8, 8), dtype=np.uint8)
    return Prepared(images=images, labels=labels, train_idx=s.train_idx, clean_idx=s.clean_idx, val_idx=s.val_idx,
                    test_idx=s.test_idx, classes=["a", "b", "c", "d"], dataset="digits")


def test_prepared_round_trip_and_clear_errors(tmp_path: Path) -> None:
    p = _prepared(val=4)
    path = datasets.save_prepared(tmp_path / "data" / "prepared.npz", p)
    q = datasets.load_prepared(path)
    for f in ("images", "labels", "train_idx", "clean_idx", "val_idx", "test_idx"):
        np.testing.assert_array_equal(getattr(p, f), getattr(q, f))
        assert getattr(q, f).dtype == getattr(p, f).dtype
    assert q.classes == p.classes and q.dataset == "digits"
    with pytest.raises(FileNotFoundError, match="download"):
        datasets.load_prepared(tmp_path / "missing.npz")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="prepared.npz is corrupt or unreadable .*download"):
        datasets.load_prepared(path)
    with pytest.raises(ValueError, match="overlaps"):
        Prepared(**{**vars(p), "val_idx": p.train_idx[:2].copy()})


# ----------------------------------------------------------------------------- the stage
def test_download_stage_tiny(tiny_config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from labelnoise.io import load_json
    from stages import download
    from stages.common import PATHS

    monkeypatch.setenv("MLFLOW_TRACKING_URI", new_store(tmp_path))
    metrics = download.run(tiny_config)
    d = tiny_config.data
    assert metrics == {"n_train": 1797 - d.test_size - d.trusted_size - d.val_size, "n_clean": d.trusted_size,
                       "n_val": d.val_size, "n_test": d.test_size}
    p = datasets.load_prepared(tmp_path / PATHS.prepared)
    report = load_json(tmp_path / PATHS.data_report)
    assert report["source"] == "bundled" and report["dataset"] == "digits"
    assert report["sizes"] == {k.removeprefix("n_"): v for k, v in metrics.items()}
    assert sum(report["clean_per_class"].values()) == d.trusted_size
    assert report["sha256"]["labels"] == hashlib.sha256(p.labels.tobytes()).hexdigest()
    assert list(tmp_path.glob("mlartifacts/**/data.json"))  # the report is the run's artifact
