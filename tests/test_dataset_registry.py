"""The dataset registry: the five shipped datasets and their facts, the shipped class maps, open-set sources,
one clear line for an unknown name, and a new dataset that is one file (discovered, validated, downloaded,
corrupted) with no other file changed."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from labelnoise import datasets
from labelnoise.config import Config, ConfigError, load_config
from labelnoise.datasets import Bundled, Cifar, Dataset, Idx
from labelnoise.datasets.folder import Folder
from tests.helpers import new_store

REPO = Path(__file__).resolve().parent.parent
BUILT_IN = ("cifar10", "cifar100", "digits", "fashion_mnist", "folder", "mnist")


# ----------------------------------------------------------------------------- the shipped datasets
# name: (shape, K, official test split, default augmentation, open-set `auto`, source)
FACTS = {
    "fashion_mnist": ((1, 28, 28), 10, True, "none", "digits", (Idx, "FashionMNIST")),
    "mnist": ((1, 28, 28), 10, True, "none", "fashion_mnist", (Idx, "MNIST")),
    "cifar10": ((3, 32, 32), 10, True, "crop_flip", "cifar100", (Cifar, "CIFAR10")),
    "cifar100": ((3, 32, 32), 100, True, "crop_flip", "white_noise", (Cifar, "CIFAR100")),
    "digits": ((1, 8, 8), 10, False, "none", "white_noise", (Bundled, None)),
    "folder": (None, None, None, "none", "white_noise", (Folder, None)),  # facts set by the data (data.path, ...)
}


def test_registry_lists_the_six_datasets_with_their_facts() -> None:
    assert datasets.dataset_names() == BUILT_IN
    assert set(datasets.DATASETS) == set(BUILT_IN)
    for name, (shape, k, official_test, augment, auto, (kind, tv_class)) in FACTS.items():
        ds = datasets.get_dataset(name)
        assert (ds.name, ds.shape, ds.num_classes, ds.official_test, ds.augment, ds.open_set_auto) == (
            name, shape, k, official_test, augment, auto), name
        assert isinstance(ds.source, kind) and getattr(ds.source, "tv_class", None) == tv_class, name
    with pytest.raises(TypeError):
        datasets.DATASETS["x"] = datasets.DATASETS["digits"]  # read-only: register_dataset adds


def test_unknown_dataset_is_one_clear_line() -> None:
    with pytest.raises(ValueError) as e:
        datasets.get_dataset("imagenet")
    assert str(e.value) == "unknown dataset 'imagenet' (known: cifar10, cifar100, digits, fashion_mnist, folder, mnist)"
    with pytest.raises(ConfigError) as e:
        load_config(REPO / "params.yaml", ["data.dataset=imagenet"])
    assert str(e.value) == ("data.dataset: must be one of 'cifar10', 'cifar100', 'digits', 'fashion_mnist', 'folder', "
                            "'mnist', got 'imagenet'")
    with pytest.raises(ConfigError) as e:
        load_config(REPO / "params.yaml", ["noise.open_set.source=svhn"])
    assert str(e.value) == ("noise.open_set.source: must be one of 'auto', 'white_noise', 'cifar10', 'cifar100', "
                            "'digits', 'fashion_mnist', 'folder', 'mnist', got 'svhn'")


def test_sections_live_beside_their_code_and_config_reexports_them() -> None:
    import dataclasses

    from labelnoise import config, noise

    assert config.DataConfig is datasets.DataConfig
    noise_field = {f.name: f for f in dataclasses.fields(config.Config)}["noise"]
    assert noise_field.metadata["section"] is noise.noise_config_type  # built from the noise registry


def test_datasets_import_no_training_code_and_stay_light() -> None:
    """Layers point down: the datasets package imports neither training code nor the config, and importing it
    needs no torch (fetching and fitting images import what they need when they run)."""
    forbidden = {"labelnoise.config", "labelnoise.training", "labelnoise.mentornet", "labelnoise.models",
                 "labelnoise.views", "labelnoise.noise"}
    for path in (REPO / "labelnoise" / "datasets").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not forbidden & set(names), f"{path.name} imports {forbidden & set(names)}"
    code = "import sys, labelnoise.datasets; print([m for m in ('torch', 'labelnoise.config') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- shipped class maps
OLD_MAPS = {  # the values of noise.py's CIFAR10_MAP, MNIST_MAP and FASHION_MNIST_MAP before the registry
    "cifar10": {9: 1, 2: 0, 4: 7, 3: 5, 5: 3},
    "mnist": {2: 7, 3: 8, 5: 6, 6: 5, 7: 1},
    "digits": {2: 7, 3: 8, 5: 6, 6: 5, 7: 1},  # the MNIST map: the same ten digits
    "fashion_mnist": {6: 0, 0: 6, 2: 4, 4: 2, 5: 7, 7: 5},
}


@pytest.mark.parametrize("name", sorted(OLD_MAPS))
def test_shipped_maps_keep_their_values(name: str) -> None:
    cmap = datasets.class_map_for(name, "auto")
    assert cmap == OLD_MAPS[name] and list(cmap.items()) == list(OLD_MAPS[name].items())
    cmap.clear()  # a copy: callers cannot change the shipped table
    assert dict(datasets.get_dataset(name).class_map) == OLD_MAPS[name]


def test_class_map_for_explicit_maps_and_errors_name_the_param() -> None:
    assert datasets.class_map_for("cifar10", {0: 1, np.int64(2): 3}) == {0: 1, 2: 3}
    for dataset, param in [("cifar10", "manual"), ("imagenet", "auto"), ("cifar10", {"a": 1}), ("cifar10", {1: True})]:
        with pytest.raises(ValueError, match="^noise.asymmetric.class_map: "):
            datasets.class_map_for(dataset, param)


# The CIFAR-100 superclasses by *name* (from the dataset's documentation), an independent check
# of the index table in the library. Fine names are in fine-label order (alphabetical).
CIFAR100_FINE = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel "
    "can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur "
    "dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion "
    "lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree "
    "pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea "
    "seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table "
    "tank telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman "
    "worm"
).split()
CIFAR100_SUPERCLASSES = {
    "aquatic_mammals": "beaver dolphin otter seal whale",
    "fish": "aquarium_fish flatfish ray shark trout",
    "flowers": "orchid poppy rose sunflower tulip",
    "food_containers": "bottle bowl can cup plate",
    "fruit_and_vegetables": "apple mushroom orange pear sweet_pepper",
    "household_electrical_devices": "clock keyboard lamp telephone television",
    "household_furniture": "bed chair couch table wardrobe",
    "insects": "bee beetle butterfly caterpillar cockroach",
    "large_carnivores": "bear leopard lion tiger wolf",
    "large_man-made_outdoor_things": "bridge castle house road skyscraper",
    "large_natural_outdoor_scenes": "cloud forest mountain plain sea",
    "large_omnivores_and_herbivores": "camel cattle chimpanzee elephant kangaroo",
    "medium_mammals": "fox porcupine possum raccoon skunk",
    "non-insect_invertebrates": "crab lobster snail spider worm",
    "people": "baby boy girl man woman",
    "reptiles": "crocodile dinosaur lizard snake turtle",
    "small_mammals": "hamster mouse rabbit shrew squirrel",
    "trees": "maple_tree oak_tree palm_tree pine_tree willow_tree",
    "vehicles_1": "bicycle bus motorcycle pickup_truck train",
    "vehicles_2": "lawn_mower rocket streetcar tank tractor",
}


def test_cifar100_map_is_next_class_within_the_true_superclass() -> None:
    from labelnoise.datasets.cifar100 import CIFAR100_COARSE

    assert len(CIFAR100_FINE) == 100 and sorted(CIFAR100_FINE) == list(CIFAR100_FINE)
    index = {name: i for i, name in enumerate(CIFAR100_FINE)}
    expected: dict[int, int] = {}
    for s, names in enumerate(CIFAR100_SUPERCLASSES.values()):  # coarse labels are alphabetical too
        members = sorted(index[n] for n in names.split())
        assert [CIFAR100_COARSE[i] for i in members] == [s] * 5
        expected.update({a: b for a, b in zip(members, members[1:] + members[:1], strict=True)})
    assert len(expected) == 100
    cmap = datasets.class_map_for("cifar100", "auto")
    assert cmap == expected
    assert sorted(cmap.values()) == list(range(100))  # a permutation: each class receives from one


# ----------------------------------------------------------------------------- open-set sources
def test_resolve_open_set_source() -> None:
    resolve = datasets.resolve_open_set_source
    assert resolve("fashion_mnist", "auto") == "digits"
    assert resolve("mnist", "auto") == "fashion_mnist"
    assert resolve("cifar10", "auto") == "cifar100"
    assert resolve("cifar100", "auto") == "white_noise"
    assert resolve("digits", "auto") == "white_noise"
    assert resolve("cifar10", "white_noise") == "white_noise"
    assert resolve("cifar100", "cifar10") == "cifar10"  # every registered dataset is a source
    for dataset, source in [("mnist", "digits"), ("digits", "mnist"), ("digits", "digits"), ("cifar100", "cifar100")]:
        with pytest.raises(ValueError, match="^noise.open_set.source: .* show classes of the dataset"):
            resolve(dataset, source)
    with pytest.raises(ValueError, match="^noise.open_set.source: must be one of auto, white_noise, cifar10"):
        resolve("cifar10", "svhn")


# ----------------------------------------------------------------------------- registering
def _bundled(n: int, n_train: int | None = None) -> Bundled:
    labels = np.arange(n, dtype=np.int64) % 3
    images = np.zeros((n, 1, 4, 4), dtype=np.uint8)
    return Bundled(lambda: datasets.Arrays(images, labels, n if n_train is None else n_train, ["a", "b", "c"]))


@pytest.mark.parametrize(("kw", "match"), [
    (dict(name="auto"), "dataset name 'auto'"),
    (dict(name="my-data"), "dataset name 'my-data'"),
    (dict(shape=(4, 4)), "shape must be"),
    (dict(num_classes=1), "num_classes"),
    (dict(augment="mixup"), "augment"),
    (dict(class_map={0: 0}), "class_map"),
    (dict(class_map={0: 3}), "class_map"),
    (dict(source="sklearn"), "source"),
])
def test_bad_facts_are_rejected_at_registration(kw: dict, match: str) -> None:
    facts = dict(name="tmp_ds", shape=(1, 4, 4), num_classes=3, official_test=False, source=_bundled(30)) | kw
    with pytest.raises(ValueError, match=match):
        Dataset(**facts)


def test_a_name_is_registered_once_and_load_checks_the_facts(make_config: Callable[..., Config]) -> None:
    with pytest.raises(ValueError, match="registered twice"):
        datasets.register_dataset(Dataset(name="digits", shape=(1, 8, 8), num_classes=10, official_test=False,
                                          source=_bundled(30)))
    assert datasets.register_dataset(datasets.get_dataset("digits")) is datasets.get_dataset("digits")  # idempotent
    wrong = Dataset(name="tmp_ds", shape=(1, 4, 4), num_classes=3, official_test=True, source=_bundled(30))
    datasets.register_dataset(wrong)
    try:
        with pytest.raises(ValueError, match="tmp_ds: registered with official_test=True, but the source delivered "
                                             "30 train and 0 official test images"):
            datasets.load_dataset(make_config({"data": {"dataset": "tmp_ds"}}).data)
    finally:
        datasets._REGISTRY.pop("tmp_ds")


# ----------------------------------------------------------------------------- a new dataset is one file
TOY_FILE = '''
"""A throw-away dataset: three classes of 6x6 images made in memory, no official test split."""

import numpy as np

from labelnoise.datasets import Arrays, Bundled, Dataset, register_dataset


def load() -> Arrays:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 60)  # (180,)
    images = (rng.integers(0, 150, (180, 1, 6, 6)) + 50 * labels[:, None, None, None]).astype(np.uint8)
    return Arrays(images=images, labels=labels, n_official_train=180, classes=["low", "mid", "high"])


register_dataset(Dataset(name="toy", shape=(1, 6, 6), num_classes=3, official_test=False, source=Bundled(load),
                         same_classes=("digits",)))
'''


@pytest.fixture
def toy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Dataset]:
    """``toy.py`` in a folder on the package's path, discovered like a file in labelnoise/datasets/."""
    folder = tmp_path / "more_datasets"
    folder.mkdir()
    (folder / "toy.py").write_text(textwrap.dedent(TOY_FILE))
    monkeypatch.setattr(datasets, "__path__", [*datasets.__path__, str(folder)])
    datasets._discover()
    try:
        yield datasets.get_dataset("toy")
    finally:
        datasets._REGISTRY.pop("toy", None)
        sys.modules.pop("labelnoise.datasets.toy", None)
        if hasattr(datasets, "toy"):
            delattr(datasets, "toy")


def test_a_new_dataset_file_goes_through_the_pipeline(
        toy: Dataset, make_config: Callable[..., Config], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from labelnoise.datasets import load_prepared
    from labelnoise.io import load_json
    from labelnoise.noise import load_noisy
    from stages import download, inject_noise
    from stages.common import PATHS

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", new_store(tmp_path))
    assert "toy" in datasets.dataset_names() and "toy" in datasets.open_set_sources()
    cfg = make_config({"base": {"threads": 1},
                       "data": {"dataset": "toy", "download": False, "trusted_size": 30, "val_size": 0,
                                "test_size": 45, "train_limit": 0},
                       "noise": {"kind": "symmetric", "rate": 0.4}})

    metrics = download.run(cfg)
    assert metrics == {"n_train": 105, "n_clean": 30, "n_val": 0, "n_test": 45}
    p = load_prepared(PATHS.prepared)
    assert p.dataset == "toy" and p.classes == ["low", "mid", "high"] and p.images.shape == (180, 1, 6, 6)
    assert np.array_equal(np.bincount(p.labels[p.test_idx]), [15, 15, 15])  # held out, stratified
    assert load_json(PATHS.data_report)["source"] == "bundled"

    inject_noise.run(cfg)
    nl = load_noisy(PATHS.noisy)
    true = p.labels[p.train_idx]
    assert nl.n_changed == 42 and np.array_equal(nl.mask, nl.labels != true)  # round(0.4 * 35) per class

    # Its facts are used where they are needed: no shipped class map, open-set relations both ways.
    with pytest.raises(ValueError, match="no shipped class map for dataset 'toy'"):
        datasets.class_map_for("toy", "auto")
    assert datasets.resolve_open_set_source("toy", "auto") == "white_noise"
    assert datasets.resolve_open_set_source("fashion_mnist", "toy") == "toy"
    with pytest.raises(ValueError, match="toy images show classes of the dataset digits"):
        datasets.resolve_open_set_source("digits", "toy")
