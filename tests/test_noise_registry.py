"""The noise registry: one file per noise model, named as its kind; its facts and params block from the registry
(nothing outside labelnoise/noise/ tests a kind's name); a new model is one file; the params of the layout before
the blocks are one line naming their new key."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from labelnoise import noise
from labelnoise.config import ConfigError, flatten, from_dict, load_config, merge, read_yaml

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "labelnoise" / "noise"
NOT_MODELS = ("__init__", "base", "pipeline")  # the package's modules that are no noise model


def test_each_model_is_one_file_of_its_name() -> None:
    files = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in NOT_MODELS)
    assert list(noise.noise_names()) == files
    for model in noise.registered():
        assert model.apply.__module__ == f"labelnoise.noise.{model.name}"
        assert model.summary and "\n" not in model.summary
    assert {m.name for m in noise.registered() if m.class_conditional} == {
        "none", "symmetric", "pair", "asymmetric", "transition", "structured", "massive"}


def test_the_noise_section_has_one_block_per_model_with_params() -> None:
    raw = read_yaml(REPO / "params.yaml")["noise"]
    blocks = {m.name for m in noise.registered() if m.params is not None}
    assert set(raw) == {"kind", "rate", "seed", *blocks}
    cfg = load_config(REPO / "params.yaml")
    for model in noise.registered():
        assert noise.block(cfg.noise, model.name) is None if model.params is None else isinstance(
            noise.block(cfg.noise, model.name), model.params)


@pytest.mark.parametrize(("old", "new"), sorted(noise.RENAMED.items()))
def test_a_key_of_the_former_layout_names_its_new_place(old: str, new: str) -> None:
    keys = set(flatten(read_yaml(REPO / "params.yaml")))
    assert new in keys or any(k.startswith(new + ".") for k in keys)
    with pytest.raises(ConfigError) as e:
        load_config(REPO / "params.yaml", [f"{old}=1"])
    assert str(e.value).startswith(f"{old}: renamed {new} ") and "\n" not in str(e.value)
    raw = read_yaml(REPO / "params.yaml")
    section, leaf = old.split(".")
    raw[section][leaf] = 1  # in params.yaml itself (noise.transition: a matrix where the block is)
    with pytest.raises(ConfigError, match=f"^{old}: renamed {new} "):
        from_dict(raw)


@pytest.mark.parametrize(("kind", "options"), [
    ("symmetric", {}), ("pair", {}), ("asymmetric", {"class_map": {0: 1, 2: 3}}),
    ("transition", {"transition": np.full((4, 4), 0.25)}), ("structured", {"delta": 0.5})])
def test_the_class_conditional_models_share_one_core(kind: str, options: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each of them is the shared core (one seeded permutation per class, drawn first) and a rule of its own."""
    from labelnoise.noise import base

    drawn = []
    permutations = base.class_permutations
    monkeypatch.setattr(base, "class_permutations", lambda *a: drawn.append(a[1]) or permutations(*a))
    y = np.repeat(np.arange(4), 10)
    nl = noise.corrupt(y, kind=kind, rate=0.5, num_classes=4, rng=np.random.default_rng(0), **options)
    assert drawn == [4] and nl.mask.any()


# ----------------------------------------------------------------------------- kind facts live in the registry
def _about_the_kind(node: ast.expr) -> bool:
    """An expression that reads the noise kind: ``x.kind``, a name ``kind``, ``x["kind"]`` or a lookup of
    ``"noise.kind"`` (a run's params)."""
    if isinstance(node, ast.Attribute):
        return node.attr == "kind"
    if isinstance(node, ast.Name):
        return node.id == "kind"
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value in ("kind", "noise.kind")
    if isinstance(node, ast.Call):
        return any(isinstance(a, ast.Constant) and a.value == "noise.kind" for a in node.args)
    return False


def _names_a_kind(node: ast.expr, kinds: set[str]) -> bool:
    if isinstance(node, ast.Constant):
        return node.value in kinds
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_names_a_kind(e, kinds) for e in node.elts)
    return False


def kind_tests(source: str, kinds: set[str]) -> list[int]:
    """Lines of ``source`` that compare the noise kind with a kind's name (``== "given"``, ``in ("none", ...)``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(_about_the_kind(s) for s in sides) and any(_names_a_kind(s, kinds) for s in sides):
                found.append(node.lineno)
    return found


def test_the_check_finds_a_kind_test() -> None:
    kinds = set(noise.noise_names())
    bad = ('if cfg.noise.kind == "given":\n    pass\nx = nc.kind in ("none", "given")\n'
           'y = params.get("noise.kind") != "none"\nz = "open_set" == kind\n')
    assert kind_tests(bad, kinds) == [1, 3, 4, 5]
    fine = 'if cfg.mentor_update != "none" and mentor.kind == "dd":\n    pass\nk = noise.get_noise(cfg.noise.kind)\n'
    assert kind_tests(fine, kinds) == []


def test_no_code_outside_the_noise_package_tests_a_noise_kind() -> None:
    """Kind facts live in the registry: no stage, CLI, benchmark or library module outside labelnoise/noise/ compares
    the noise kind with a kind's name. (The mentor's own param mentor.dd_noise_kind, whose values are some of the
    noise models, is another param: its comparisons are not the noise kind's.)"""
    kinds = set(noise.noise_names())
    paths = [REPO / "cli.py", *(REPO / "stages").rglob("*.py"), *(REPO / "benchmarks").rglob("*.py"),
             *(p for p in (REPO / "labelnoise").rglob("*.py") if PACKAGE not in p.parents)]
    found = {str(p.relative_to(REPO)): lines for p in paths if (lines := kind_tests(p.read_text(), kinds))}
    assert found == {}, "move these facts into the noise model's registry entry"


# ----------------------------------------------------------------------------- a new model is one file
UNIFORM = '''
"""Noise model ``uniform``: a fraction ``level`` of each class gets a label drawn uniformly from all K classes."""

from dataclasses import dataclass

from labelnoise.noise.base import Applied, NoiseModel, by_class, n_to_change, register
from labelnoise.schema import rng


@dataclass(frozen=True)
class UniformParams:
    level: float = rng(0.0, 1.0)


def apply(inputs):
    k, level = inputs.num_classes, inputs.params.level
    rule = lambda c, n_c, gen: gen.integers(0, k, size=n_to_change(level, n_c))  # noqa: E731
    return Applied(by_class(inputs, rule), requested_rate=level * (k - 1) / k, rate_source="noise.uniform.level")


MODEL = register(NoiseModel(name="uniform", summary="labels redrawn uniformly from all K classes",
                            class_conditional=True, apply=apply, params=UniformParams))
'''


@pytest.fixture
def uniform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[noise.NoiseModel]:
    """A throw-away noise model file, imported as labelnoise/noise/uniform.py would be."""
    folder = tmp_path / "more_noise"
    folder.mkdir()
    (folder / "uniform.py").write_text(textwrap.dedent(UNIFORM))
    monkeypatch.setattr(noise, "__path__", [*noise.__path__, str(folder)])
    importlib.import_module("labelnoise.noise.uniform")
    try:
        yield noise.get_noise("uniform")
    finally:
        noise.unregister("uniform")
        sys.modules.pop("labelnoise.noise.uniform", None)
        if hasattr(noise, "uniform"):
            delattr(noise, "uniform")


def test_a_new_model_file_brings_its_block_and_runs(uniform: noise.NoiseModel) -> None:
    from labelnoise.datasets import Prepared

    raw = read_yaml(REPO / "params.yaml")
    with pytest.raises(ConfigError, match="^noise.uniform: missing"):  # its block is a part of the section now
        from_dict(raw)
    cfg = from_dict(merge(raw, {"noise": {"kind": "uniform", "uniform": {"level": 0.5}}}))
    assert cfg.noise.uniform == uniform.params(level=0.5)
    with pytest.raises(ConfigError, match="^noise.uniform.level: must be <= 1.0"):
        from_dict(merge(raw, {"noise": {"uniform": {"level": 2.0}}}))

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 50).astype(np.int64)
    images = rng.integers(0, 256, size=(200, 1, 4, 4), dtype=np.uint8)
    p = Prepared(images=images, labels=labels, train_idx=np.arange(200), clean_idx=np.zeros(0, dtype=np.int64),
                 val_idx=np.zeros(0, dtype=np.int64), test_idx=np.zeros(0, dtype=np.int64),
                 classes=["a", "b", "c", "d"], dataset="digits")
    data = dataclasses.replace(cfg.data, dataset="digits")
    out = noise.inject(p, cfg.noise, data=data)
    assert out.report["kind"] == "uniform" and out.report["rate_source"] == "noise.uniform.level"
    assert out.report["requested_rate"] == pytest.approx(0.375)  # 0.5 x 3/4
    assert 0.25 < out.report["realised_rate"] < 0.5 and out.tags == {"noise": "uniform"}
    assert out.figure.matrix.shape == (4, 4)
    np.testing.assert_array_equal(out.noisy.mask, out.noisy.labels != labels)
