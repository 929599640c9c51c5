"""Typed, validated configuration: `params.yaml` → frozen dataclasses, checked once at the edge.

`params.yaml` is the single source of default values: the dataclasses below carry types and
ranges, not defaults. Every error names the offending key in one line (``ConfigError``).
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from labelnoise import datasets
from labelnoise.datasets import DataConfig
from labelnoise.noise import NoiseConfig
from labelnoise.schema import ConfigError
from labelnoise.schema import rng as _rng


# ----------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class BaseConfig:
    seed: int = _rng(0)  # training seed (noise and split seeds are separate)
    device: Literal["auto", "cpu", "cuda"]
    threads: int = _rng(0)  # 0: all cores
    deterministic: bool
    study: str  # study name tagged on the MLflow runs (set by `cli.py sweep`); no stage depends on it
    tracking_uri: str  # relative sqlite paths resolve against the repo root (DVC_ROOT)
    experiment: str


@dataclass(frozen=True)
class MentorConfig:
    kind: Literal["pd", "dd"]  # pd: fit to a predefined curriculum; dd: learn from the trusted clean subset
    curriculum: Literal["self_paced", "linear", "mixture", "official_pd", "focal"]  # pd target
    percentile: float = _rng(0.0, 1.0)  # p of the moving p-th percentile l_pt of mini-batch losses
    ema_decay: float = _rng(0.0, 1.0)  # moving-average decay of l_pt (paper 0.95, official code 0.5)
    class_percentile: bool  # one l_pt per noisy label instead of one for the batch (our addition)
    lambda1: float = _rng(0.0)  # mixture: loss threshold
    lambda2: float = _rng(0.0)  # mixture: width of the linear part (0 = hard threshold)
    gamma: float = _rng(0.0, lo_open=True)  # linear curricula: v = clip(1 - diff / gamma, 0, 1)
    focal_gamma: float = _rng(0.0)  # focal weighting (1 - exp(-l)) ** gamma
    pd_burn_in: float = _rng(0.0, 1.0)  # official_pd: all ones before this fraction of training
    pd_linear_from: float = _rng(0.0, 1.0)  # official_pd: linear weighting from this fraction on
    label_dim: int = _rng(1, 1024)  # label embedding size
    epoch_dim: int = _rng(1, 1024)  # training-progress embedding size (100 x epoch_dim)
    hidden: int = _rng(1, 4096)  # fully connected layer (tanh)
    epoch_embedding_trainable: bool  # official code: a fixed random table
    grid_size: int = _rng(100)  # pd: samples drawn from the (loss, diff, progress) grid
    holdout: float = _rng(0.0, 1.0)  # fraction of mentor data held out for MAE / AUROC
    fit_steps: int = _rng(1)  # mentor optimisation steps (Adam)
    fit_batch_size: int = _rng(1, 1_000_000)
    fit_lr: float = _rng(0.0, 10.0, lo_open=True)
    fit_lr_decay: float = _rng(0.0, 1.0, lo_open=True)  # lr *= decay every fit_lr_decay_steps (official 0.9 / 1000)
    fit_lr_decay_steps: int = _rng(1)
    dd_noise_kind: Literal["symmetric", "pair", "asymmetric"]  # dd: noise put on a copy of the clean subset
    dd_noise_rate: float = _rng(0.0, 1.0)
    dd_noise_seed: int = _rng(0)
    dd_epochs: int = _rng(1, 10_000)  # dd: epochs of the feature-recording student on the clean subset
    seed: int = _rng(0)  # mentor initialisation and data sampling


@dataclass(frozen=True)
class StudentConfig:
    method: Literal["ce", "spade", "mentormix", "cleanlab"]
    model: Literal["cnn", "preact_resnet32", "wrn56_10", "resnet18"]
    pretrained: bool
    epochs: int = _rng(1, 10_000)
    batch_size: int = _rng(1, 65_536)
    eval_batch_size: int = _rng(1, 65_536)
    lr: float = _rng(0.0, 10.0, lo_open=True)
    momentum: float = _rng(0.0, 1.0)
    nesterov: bool
    weight_decay: float = _rng(0.0, 1.0)
    schedule: Literal["constant", "multistep", "cosine", "onecycle"]
    milestones: list[float]  # multistep: fractions of training, e.g. [0.5, 0.75]
    gamma: float = _rng(0.0, 1.0, lo_open=True)  # multistep decay factor
    warmup_epochs: float = _rng(0.0)  # linear warm-up (multistep, cosine)
    onecycle_pct_start: float = _rng(0.0, 1.0, lo_open=True)
    augment: Literal["auto", "none", "crop_flip"]  # auto: crop_flip for CIFAR, none otherwise
    crop_padding: int = _rng(0, 64)
    precision: Literal["auto", "fp32", "bf16"]  # auto: bf16 autocast on CUDA and on CPUs with native bf16, else fp32
    channels_last: Literal["auto", "on", "off"]  # auto: on (measured faster on CUDA and on CPU for the CNN)
    label_smoothing: float = _rng(0.0, 1.0)
    burn_in: float = _rng(0.0, 1.0)  # spade, mentormix: fraction of training with v ~ Bernoulli(burn_in_keep)
    burn_in_keep: float = _rng(0.0, 1.0)  # spade, mentormix: keep probability p during burn-in (example dropout)
    weight_norm: Literal["batch", "sum"]  # spade (mentormix: 2nd reweighting): weighted loss over B or sum of weights
    sample_weights: bool  # spade: probabilistic sampling layer, v <- Bernoulli(v)
    mentor_update: Literal["none", "lr_change", "every_k"]  # spade: when the mentor is refitted
    mentor_update_every: int = _rng(1)  # every_k: epochs between mentor updates
    mentor_update_steps: int = _rng(1)  # spade: Adam steps of one mentor refit (mentor.fit_* settings otherwise)
    mentor_update_batches: int = _rng(1)  # spade, pd mentor: recent mini-batches whose mentor inputs a refit uses
    weights_at: list[float]  # spade: fractions of training at which per-example weights are saved
    mixup_alpha: float = _rng(0.0, 1000.0, lo_open=True)  # mentormix: λ ~ Beta(α, α)
    mix_temperature: float = _rng(0.0, 1000.0, lo_open=True)  # mentormix: partners drawn from softmax(v / T)
    second_reweight: bool  # mentormix: weight the mixed examples' losses by the mentor again
    cleanlab_folds: int = _rng(2, 100)  # cleanlab: cross-validation folds for the out-of-sample probabilities
    cleanlab_filter_by: Literal["prune_by_noise_rate", "prune_by_class", "both", "confident_learning",
                                "predicted_neq_given"]  # cleanlab: find_label_issues' filter_by


@dataclass(frozen=True)
class CorrectionConfig:
    init: Literal["student", "scratch"]  # phase 1 starts from the trained student or a fresh network
    epochs: int = _rng(1, 10_000)  # phase 1: alternating optimisation of network and labels
    lr: float = _rng(0.0, 10.0, lo_open=True)  # phase 1: high constant lr (paper 0.08 symmetric, 0.03 asymmetric)
    alpha: float = _rng(0.0)  # weight of the prior term L_p (paper 1.2 sym / 0.8 asym; official code 1.0)
    beta: float = _rng(0.0)  # weight of the entropy term L_e (paper 0.8 sym / 0.4 asym; official code 0.5)
    prior: Literal["uniform", "clean"]  # class prior p: uniform, or estimated from the clean subset
    buffer: int = _rng(1, 1000)  # K: epochs of softmax outputs averaged into the new labels
    begin: int = _rng(1)  # first epoch (1-based) at which labels are updated
    update: Literal["soft", "hard"]  # new label = buffer mean, or its argmax (one-hot)
    update_every: int = _rng(1)  # epochs between label updates
    noisy_label_weight: float = _rng(0.0, 1.0)  # w: y ∝ s̄ · (w·onehot(noisy) + (1−w)/C); 0 = the paper's y = s̄
    trust_mentor: bool  # examples whose mentor weight exceeds trust_threshold keep their label
    trust_threshold: float = _rng(0.0, 1.0)
    retrain_epochs: int = _rng(1, 10_000)  # phase 2: a fresh network on the corrected labels
    retrain_lr: float = _rng(0.0, 10.0, lo_open=True)
    retrain_schedule: Literal["constant", "multistep", "cosine", "onecycle"]


@dataclass(frozen=True)
class EvaluateConfig:
    batch_size: int = _rng(1, 65_536)
    detection_threshold: float = _rng(0.0, 1.0)  # spade: an example with weight v < this is flagged as corrupted


@dataclass(frozen=True)
class Config:
    base: BaseConfig
    data: DataConfig
    noise: NoiseConfig
    mentor: MentorConfig
    student: StudentConfig
    correction: CorrectionConfig
    evaluate: EvaluateConfig

    def section(self, name: str) -> Any:
        return getattr(self, name)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- parsing
def _check_type(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` converted to ``tp`` or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            choices = ", ".join(repr(c) for c in typing.get_args(tp))
            raise ConfigError(f"{key}: must be one of {choices}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return _check_type(value, option, key)
            except ConfigError as e:
                errors.append(str(e).split(": ", 1)[1])
        raise ConfigError(f"{key}: {' or '.join(errors)}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: must be a list, got {type(value).__name__} {value!r}")
        return [_check_type(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        k_tp, v_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: must be a mapping, got {type(value).__name__} {value!r}")
        return {_check_type(k, k_tp, f"{key}.{k}"): _check_type(v, v_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 (PyYAML) reads 1e-4 as a string; it is a number
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} for {key}")  # programming error


_EXPONENT_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'params'}: must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{_join(prefix, unknown[0])}: unknown parameter (known: {', '.join(fields)})")
    values = {}
    for name, f in fields.items():
        key = _join(prefix, name)
        if name not in raw:
            raise ConfigError(f"{key}: missing")
        if dataclasses.is_dataclass(hints[name]):
            values[name] = _build(hints[name], raw[name], key)
            continue
        value = _check_type(raw[name], hints[name], key)
        lo, hi, lo_open = f.metadata.get("lo"), f.metadata.get("hi"), f.metadata.get("lo_open")
        if lo is not None and (value <= lo if lo_open else value < lo):
            raise ConfigError(f"{key}: must be {'>' if lo_open else '>='} {lo}, got {value}")
        if hi is not None and value > hi:
            raise ConfigError(f"{key}: must be <= {hi}, got {value}")
        values[name] = value
    return cls(**values)


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (value parsed as YAML) to a raw params dict."""
    out = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{item}: an override must look like section.key=value")
        dotted, text = item.split("=", 1)
        node = out
        *parents, leaf = dotted.split(".")
        for p in parents:
            if not isinstance(node.get(p), dict):
                raise ConfigError(f"{dotted}: unknown parameter")
            node = node[p]
        if leaf not in node:
            raise ConfigError(f"{dotted}: unknown parameter")
        node[leaf] = _parse_value(text)
    return out


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``overlay`` into a copy of ``base`` (used for presets)."""
    out = copy.deepcopy(base)
    for k, v in overlay.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must be a mapping of sections")
    return raw


def from_dict(raw: dict[str, Any]) -> Config:
    """Validate a raw params dict (all sections, all keys) into a ``Config``."""
    cfg = _build(Config, raw, "")
    _cross_checks(cfg)
    return cfg


def load_config(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> Config:
    """Read, override and validate ``params.yaml``. Raises ConfigError with one clear line."""
    return from_dict(apply_overrides(read_yaml(path), overrides or []))


def _cross_checks(cfg: Config) -> None:
    s = cfg.student
    if any(not 0.0 < m < 1.0 for m in s.milestones) or list(s.milestones) != sorted(s.milestones):
        raise ConfigError("student.milestones: must be increasing fractions of training in (0, 1)")
    if any(not 0.0 < w <= 1.0 for w in s.weights_at):
        raise ConfigError("student.weights_at: must be fractions of training in (0, 1]")
    if cfg.correction.begin > cfg.correction.epochs:  # no label update would ever happen
        raise ConfigError(f"correction.begin: must be <= correction.epochs ({cfg.correction.epochs})")
    m = cfg.mentor
    if m.pd_linear_from < m.pd_burn_in:
        raise ConfigError(f"mentor.pd_linear_from: must be >= mentor.pd_burn_in ({m.pd_burn_in})")
    if s.warmup_epochs >= s.epochs:
        raise ConfigError(f"student.warmup_epochs: must be < student.epochs ({s.epochs})")
    n = cfg.noise
    sources = datasets.open_set_sources()  # auto, white_noise and the registered datasets
    if n.open_set_source not in sources:
        raise ConfigError(f"noise.open_set_source: must be one of {', '.join(repr(x) for x in sources)}, "
                          f"got {n.open_set_source!r}")
    if n.kind == "open_set":
        try:
            datasets.resolve_open_set_source(cfg.data.dataset, n.open_set_source)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if n.kind == "transition":
        rows = n.transition
        if not rows or any(len(r) != len(rows) for r in rows):
            raise ConfigError("noise.transition: must be a square K x K matrix")
        for i, r in enumerate(rows):
            if any(p < 0 for p in r) or abs(sum(r) - 1.0) > 1e-6:
                raise ConfigError(f"noise.transition[{i}]: row must be non-negative and sum to 1, sums to {sum(r):.6g}")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} → {'a.b': 1} (for MLflow params and comparisons)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and all(isinstance(x, str) for x in v):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
