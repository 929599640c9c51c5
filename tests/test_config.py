"""Params validation at the edge: every bad value is one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from labelnoise.config import (
    ConfigError,
    DataConfig,
    apply_overrides,
    flatten,
    from_dict,
    load_config,
    merge,
    read_yaml,
)
from labelnoise.noise import get_noise, noise_config_type
from tests.helpers import split_student

REPO = Path(__file__).resolve().parent.parent


def test_default_params_and_presets_validate() -> None:
    cfg = load_config(REPO / "params.yaml")
    assert cfg.data.dataset == "fashion_mnist" and cfg.train.model == "cnn"
    assert cfg.noise.kind == "symmetric" and cfg.noise.rate == 0.4
    assert cfg.noise.seed != cfg.base.seed  # separate seeds
    for preset in (REPO / "presets").glob("*.yaml"):
        from_dict(merge(read_yaml(REPO / "params.yaml"), read_yaml(preset)))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr=-1", "train.lr: must be > 0.0"),
        ("noise.rate=1.5", "noise.rate: must be <= 1.0"),
        ("noise.rate=-0.1", "noise.rate: must be >= 0.0"),
        ("train.epochs=abc", "train.epochs: must be an integer"),
        ("train.epochs=0", "train.epochs: must be >= 1"),
        ("train.batch_size=0", "train.batch_size: must be >= 1"),
        ("train.nesterov=maybe", "train.nesterov: must be true or false"),
        ("data.dataset=imagenet", "data.dataset: must be one of"),
        ("train.model=vgg", "train.model: must be one of"),
        ("student.method=magic", "student.method: must be one of"),
        ("noise.kind=gaussian", "noise.kind: must be one of"),
        ("noise.open_set.source=svhn", "noise.open_set.source: must be one of"),
        ("data.trusted_size=-5", "data.trusted_size: must be >= 0"),
        ("train.milestones=[0.8,0.2]", "train.milestones"),
        ("student.mentormix.mixup_alpha=0", "student.mentormix.mixup_alpha: must be > 0.0"),
        ("student.mentormix.mix_temperature=-1", "student.mentormix.mix_temperature: must be > 0.0"),
        ("student.mentormix.second_reweight=sometimes", "student.mentormix.second_reweight: must be true or false"),
        ("student.method=mentormix", None),
        ("student.spade.burn_in=1.5", "student.spade.burn_in: must be <= 1.0"),
        ("student.cleanlab.folds=1", "student.cleanlab.folds: must be >= 2"),
        ("noise.instance.model=vgg", "noise.instance.model: must be one of"),
        ("train.warmup_epochs=20", "train.warmup_epochs: must be < train.epochs"),
        ("noise.transition.matrix=[[0.5,0.6],[0,1]]", None),  # only checked when kind=transition
        ('noise.given.file=""', None),  # only required when kind=given
        ("noise.delta=0.5", "noise.delta: renamed noise.structured.delta"),  # the layout before the blocks
        ("noise.massive_source=other", "noise.massive_source: renamed noise.massive.source"),
        ("noise.reference_seed=1", "noise.reference_seed: renamed noise.instance.seed"),
        ("noise.transition=[[1]]", "noise.transition: renamed noise.transition.matrix"),
        ("data.clean_size=10", "data.clean_size: renamed data.trusted_size"),  # one name per idea: trusted
        ("data.clean_file=c.csv", "data.clean_file: renamed data.trusted_file"),
        ("train.gamma=0.5", "train.gamma: renamed train.lr_gamma"),  # no symbol with two meanings
        ("correction.alpha=1", "correction.alpha: renamed correction.prior_alpha"),
        ("correction.beta=1", "correction.beta: renamed correction.entropy_beta"),
        ("student.mentormix.burn_in=0.1", "student.mentormix.burn_in: renamed student.spade.burn_in"),  # one block
        ("train.lr=.nan", "train.lr: must be a finite number"),
        ("base.model_alias=latest", "base.model_alias: 'latest' is MLflow's"),
        ("noise.rate=.nan", "noise.rate: must be a finite number"),
        ("evaluate.detection_threshold=.nan", "evaluate.detection_threshold: must be a finite number"),
        ("train.lr=.inf", "train.lr: must be a finite number"),
        ("base.seed=100000000000000000000000", "base.seed: must be a 64-bit integer"),
        ("noise.rate={a: 1, a: 2}", "noise.rate: .* given twice"),
    ],
)
def test_bad_value_names_the_key(override: str, message: str | None) -> None:
    if message is None:
        load_config(REPO / "params.yaml", [override])
        return
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config(REPO / "params.yaml", [override])


def test_a_key_given_twice_in_the_params_file_is_refused(tmp_path: Path) -> None:
    """PyYAML keeps the last of two equal keys; a params file (or preset, or study) that gives one twice is refused
    in one line naming the key and its line (a second section would otherwise replace the first)."""
    text = (REPO / "params.yaml").read_text()
    twice = tmp_path / "params.yaml"
    twice.write_text(text + "\ntrain:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"'train' given twice in one mapping at line \d+"):
        load_config(twice)
    twice.write_text(text.replace("  epochs: 15", "  epochs: 15\n  epochs: 16", 1))
    with pytest.raises(ConfigError, match="'epochs' given twice"):
        load_config(twice)


def test_transition_must_be_row_stochastic_and_square() -> None:
    base = ["noise.kind=transition"]
    with pytest.raises(ConfigError, match=r"noise.transition.matrix\[0\]: row must be non-negative and sum to 1"):
        load_config(REPO / "params.yaml", [*base, "noise.transition.matrix=[[0.5,0.6],[0,1]]"])
    with pytest.raises(ConfigError, match="square"):
        load_config(REPO / "params.yaml", [*base, "noise.transition.matrix=[[1,0]]"])
    cfg = load_config(REPO / "params.yaml", [*base, "noise.transition.matrix=[[0.7,0.3],[0.2,0.8]]"])
    assert cfg.noise.transition.matrix == [[0.7, 0.3], [0.2, 0.8]]


def test_unknown_and_missing_keys(tmp_path: Path) -> None:
    raw = read_yaml(REPO / "params.yaml")
    with pytest.raises(ConfigError, match="student.foo: unknown parameter"):
        from_dict(merge(raw, split_student({"student": {"foo": 1}})))
    with pytest.raises(ConfigError, match="bogus: unknown parameter"):
        from_dict({**raw, "bogus": {}})
    del raw["train"]["lr"]
    with pytest.raises(ConfigError, match="train.lr: missing"):
        from_dict(raw)
    with pytest.raises(ConfigError, match="student.nope: unknown parameter"):
        apply_overrides(read_yaml(REPO / "params.yaml"), ["student.nope=1"])
    raw = read_yaml(REPO / "params.yaml")
    del raw["student"]["spade"]  # every registered method with params has its block
    with pytest.raises(ConfigError, match="student.spade: missing"):
        from_dict(raw)
    with pytest.raises(ConfigError, match="params file not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("student: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_ints_widen_to_float_and_flatten() -> None:
    cfg = load_config(REPO / "params.yaml", ["train.lr=1"])
    assert isinstance(cfg.train.lr, float)
    flat = flatten(cfg.to_dict())
    assert flat["train.lr"] == 1.0 and flat["data.dataset"] == "fashion_mnist"
    assert "noise.asymmetric.class_map" in flat and "noise.instance.epochs" in flat


def test_data_and_noise_sections_are_typed_objects() -> None:
    cfg = load_config(REPO / "params.yaml", ["data.dataset=digits", "noise.open_set.source=cifar10"])
    assert isinstance(cfg.data, DataConfig) and isinstance(cfg.noise, noise_config_type())
    assert (cfg.data.dataset, cfg.noise.open_set.source) == ("digits", "cifar10")  # names from the dataset registry
    assert isinstance(cfg.noise.open_set, get_noise("open_set").params)  # each block: its model's dataclass
    with pytest.raises(ConfigError, match="data.dataset: must be a string, got 3"):
        load_config(REPO / "params.yaml", ["data.dataset=3"])


def test_a_stage_sees_only_the_params_it_declares(make_config) -> None:
    """Every stage is handed config.restrict(cfg, its record's params): a read of another key is one line naming the
    key and the stage (DVC would not re-run the stage when that key changes); overriding exactly the undeclared
    fields of a section (a use's own recipe) works; the whole config stays reachable for the run's description."""
    import dataclasses

    from labelnoise.config import UndeclaredParamError, declares, restrict, unrestricted
    from stages import get_stage

    cfg = make_config()
    seen = restrict(cfg, get_stage("inject_noise").params, stage="inject_noise")
    assert seen.noise == cfg.noise and seen.train.epoch_size == cfg.train.epoch_size
    assert seen.base.threads == cfg.base.threads  # how it runs, not what it computes: always readable
    for read in (lambda: seen.train.epochs, lambda: seen.mentor.kind, lambda: seen.student.method,
                 lambda: seen.base.seed, lambda: dataclasses.asdict(seen.train)):
        with pytest.raises(UndeclaredParamError, match="stage inject_noise read the param "):
            read()
    own = dataclasses.replace(seen.train, model="cnn", pretrained=False, epochs=3, lr=0.1, batch_size=8,
                              precision="fp32")
    assert own.epochs == 3 and dataclasses.asdict(own)["momentum"] == cfg.train.momentum
    with pytest.raises(UndeclaredParamError, match="train.model"):
        dataclasses.replace(seen.train, epochs=3)  # train.model and the rest are still undeclared
    student = restrict(cfg, get_stage("train_student").params, stage="train_student")
    settled = dataclasses.replace(student, correction=cfg.correction)  # a replaced Config keeps its view
    assert unrestricted(settled) is cfg and declares(settled, "student.method")
    assert not declares(settled, "mentor.kind") and declares(cfg, "mentor.kind")
    with pytest.raises(UndeclaredParamError, match="mentor.hidden"):
        print(settled.mentor.hidden)
