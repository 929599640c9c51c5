"""Typed, validated configuration: `params.yaml` → frozen dataclasses, checked once at the edge.

`params.yaml` is the single source of default values: the dataclasses carry types and ranges, not defaults.
Each section's dataclass lives beside the code that reads it (``data`` with the datasets, ``noise`` and each noise
model's block ``noise.<kind>`` with the noise models, ``mentor`` with the MentorNet, ``train`` with the engine,
``correction`` with joint optimization, each method's block ``student.<method>`` with the method); this module
assembles them into :class:`Config` and checks what spans sections. Every error names the offending key in one line
(``ConfigError``); a key that moved names its new place.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from labelnoise.correction import CorrectionConfig
from labelnoise.datasets import DataConfig
from labelnoise.engine.recipe import Recipe
from labelnoise.mentornet import MentorConfig
from labelnoise.methods import method_names, registered
from labelnoise.models import list_models
from labelnoise.noise import RENAMED as NOISE_RENAMED
from labelnoise.noise import check_config as check_noise_config
from labelnoise.noise import noise_config_type
from labelnoise.noise_estimate import EstimateConfig
from labelnoise.schema import ConfigError
from labelnoise.schema import rng as _rng
from labelnoise.trusted import TrustedConfig


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
    model_alias: str  # the registered model's alias (labelnoise-<dataset>@alias) set on each new final model


@dataclass(frozen=True)
class EvaluateConfig:
    batch_size: int = _rng(1, 65_536)
    detection_threshold: float = _rng(0.0, 1.0)  # an example whose score (weight v, label quality) < this is flagged


def student_config_type() -> type:
    """The ``student`` section's dataclass: the method, the records, and one block per registered method that has
    params (``student.<method>``, its dataclass from the method's file), so a new method brings its own block."""
    blocks = tuple((m.name, m.params) for m in registered() if m.params is not None)
    return _student_type(blocks)


@functools.cache
def _student_type(blocks: tuple[tuple[str, type], ...]) -> type:
    fields: list[Any] = [("method", str), ("weights_at", list[float]), ("include_trusted", bool), *blocks]
    return dataclasses.make_dataclass("StudentConfig", fields, frozen=True)


@dataclass(frozen=True)
class Config:
    base: BaseConfig
    data: DataConfig
    noise: Any = dataclasses.field(metadata={"section": noise_config_type})  # built from the noise registry
    estimate: EstimateConfig
    mentor: MentorConfig
    train: Recipe
    trusted: TrustedConfig
    student: Any = dataclasses.field(metadata={"section": student_config_type})  # built from the registry
    correction: CorrectionConfig
    evaluate: EvaluateConfig

    def section(self, name: str) -> Any:
        return getattr(self, name)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- a stage's view of the params
# Keys every stage may read without declaring them: how it runs, not what it computes.
EXECUTION = ("base.threads", "base.tracking_uri", "base.experiment", "base.study")
_UNDECLARED = object()  # the value of a key the stage did not declare


class UndeclaredParamError(RuntimeError):
    """A stage read a param that its record (stages.STAGES, hence dvc.yaml) does not declare: DVC would not re-run
    it when that param changes. A bug of the stage, named in one line."""

    def __init__(self, key: str, stage: str) -> None:
        super().__init__(f"stage {stage} read the param {key}, which it does not declare (stages.STAGES and "
                         "dvc.yaml): a change to it would not re-run the stage; declare it or stop reading it")


class _Absent:
    """A params section (or block) the stage did not declare: any read of it is an UndeclaredParamError."""

    def __init__(self, key: str, stage: str) -> None:
        self.__dict__.update(_key=key, _stage=stage)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise UndeclaredParamError(f"{self._key}.{name}", self._stage)

    def __repr__(self) -> str:
        return f"<{self._key}: not declared by stage {self._stage}>"


@functools.cache
def _partial_class(cls: type) -> type:
    """``cls`` whose fields holding _UNDECLARED raise UndeclaredParamError when read (dataclasses.replace of such an
    instance works when it gives those fields new values: what a stage does that overrides part of a recipe)."""

    def __getattribute__(self: Any, name: str) -> Any:
        value = object.__getattribute__(self, name)
        if value is _UNDECLARED:
            key, stage = self.__dict__.get("_where", ("?", "?"))
            raise UndeclaredParamError(f"{key}.{name}", stage)
        return value

    return type(cls.__name__, (cls,), {"__getattribute__": __getattribute__, "__module__": cls.__module__})


def _restrict(value: Any, key: str, entries: tuple[str, ...], stage: str) -> Any:
    if key in entries:
        return value
    if not any(e.startswith(key + ".") for e in entries):  # nothing under it declared
        return _Absent(key, stage) if dataclasses.is_dataclass(value) else _UNDECLARED
    fields = {f.name: _restrict(getattr(value, f.name), f"{key}.{f.name}", entries, stage)
              for f in dataclasses.fields(value)}
    out = _partial_class(type(value))(**fields)
    object.__setattr__(out, "_where", (key, stage))
    return out


def restrict(cfg: Config, entries: tuple[str, ...] | list[str], *, stage: str) -> Config:
    """``cfg`` as stage ``stage`` sees it: only ``entries`` (whole sections, blocks or single keys, as the stage's
    record declares them) and :data:`EXECUTION` can be read; any other read raises UndeclaredParamError. The
    whole config stays reachable through :func:`unrestricted` for what describes a run (MLflow's names and tags)."""
    entries = tuple(entries) + EXECUTION
    sections = {f.name: _restrict(getattr(cfg, f.name), f.name, entries, stage) for f in dataclasses.fields(cfg)}
    # a class of its own carries the whole config and the entries, so that dataclasses.replace keeps them
    view = type("Config", (type(cfg),), {"_whole": unrestricted(cfg), "_entries": entries,
                                         "__module__": __name__})
    return view(**sections)


def unrestricted(cfg: Config) -> Config:
    """The whole config behind a stage's view (:func:`restrict`), or ``cfg`` itself."""
    return getattr(type(cfg), "_whole", cfg)


def declares(cfg: Config, key: str) -> bool:
    """Whether ``key`` can be read in ``cfg`` (always, outside a stage's view)."""
    entries = getattr(type(cfg), "_entries", None)
    return entries is None or any(key == e or key.startswith(e + ".") for e in entries)


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
        if not -(2**63) <= value < 2**63:  # what torch, numpy and a seed take
            raise ConfigError(f"{key}: must be a 64-bit integer (below 2**63 in size), got {value}")
        return value
    if tp is float:
        if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 (PyYAML) reads 1e-4 as a string; it is a number
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: must be a finite number, got {value}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} for {key}")  # programming error


_EXPONENT_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


# Params that moved: the old name (a key or a whole block) → the new one. An old name in a params file or an
# override is one line naming the new one, never silently ignored. The noise models' own table first.
RENAMED: dict[str, str] = {
    **NOISE_RENAMED,
    "student.clean_only": "trusted",
    "student.clean_only.epochs": "trusted.epochs",
    "student.clean_only.augment": "trusted.augment",
    # one name per idea: the trusted subset is "trusted", and no symbol has two meanings
    "data.clean_size": "data.trusted_size",
    "data.clean_file": "data.trusted_file",
    "train.gamma": "train.lr_gamma",
    "correction.alpha": "correction.prior_alpha",
    "correction.beta": "correction.entropy_beta",
    # a block one method shares with another has one place (mentormix uses spade's weighting: Method.shares)
    **{f"student.{m.name}.{f.name}": f"student.{m.shares[0]}.{f.name}" for m in registered() if m.shares
       for f in dataclasses.fields(m.shares[1]) if f.name not in {g.name for g in dataclasses.fields(m.params)}},
}


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(_renamed(prefix) or f"{prefix or 'params'}: must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        key = _join(prefix, unknown[0])
        raise ConfigError(_renamed(key) or f"{key}: unknown parameter (known: {', '.join(fields)})")
    values = {}
    for name, f in fields.items():
        key = _join(prefix, name)
        if name not in raw:
            raise ConfigError(f"{key}: missing")
        section = f.metadata["section"]() if "section" in f.metadata else hints[name]
        if dataclasses.is_dataclass(section):
            values[name] = _build(section, raw[name], key)
            continue
        value = _check_type(raw[name], hints[name], key)
        lo, hi, lo_open = f.metadata.get("lo"), f.metadata.get("hi"), f.metadata.get("lo_open")
        numeric = not isinstance(value, str)  # "auto": a number settled later from the noise estimate
        if numeric and lo is not None and (value <= lo if lo_open else value < lo):
            raise ConfigError(f"{key}: must be {'>' if lo_open else '>='} {lo}, got {value}")
        if numeric and hi is not None and value > hi:
            raise ConfigError(f"{key}: must be <= {hi}, got {value}")
        values[name] = value
    return cls(**values)


def _renamed(key: str) -> str | None:
    """The one line for a key of an earlier params layout that moved (None: ``key`` never existed)."""
    if key not in RENAMED:
        return None
    where = ("a noise model's own params are in its block noise.<kind>" if key in NOISE_RENAMED
             else "move the value there")
    return f"{key}: renamed {RENAMED[key]} ({where})"


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where (line and column, 1-based)."""
    what = getattr(e, "problem", None) or str(e).splitlines()[0]
    mark = getattr(e, "problem_mark", None)
    return what if mark is None else f"{what} at line {mark.line + 1}, column {mark.column + 1}"


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"{key!r} given twice in one mapping",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """``text`` parsed as YAML (safe: no objects), a key given twice in a mapping refused (yaml.YAMLError)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


def _parse_value(key: str, text: str) -> Any:
    try:
        return load_yaml(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{key}: {text!r} is not a valid YAML value ({_yaml_problem(e)})") from None


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
                raise ConfigError(_renamed(dotted) or f"{dotted}: unknown parameter")
            node = node[p]
        if leaf not in node:
            raise ConfigError(_renamed(dotted) or f"{dotted}: unknown parameter")
        node[leaf] = _parse_value(dotted, text)
    return out


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``overlay`` into a copy of ``base`` (used for presets)."""
    out = copy.deepcopy(base)
    for k, v in overlay.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def merged_text(text: str, overlay: dict[str, Any]) -> str:
    """The params file ``text`` with ``overlay`` deep-merged in (as :func:`merge` does), its comments and layout
    kept: a key the overlay sets keeps its line and its comment, a new key goes at the end of its section."""
    import io

    from ruamel.yaml import YAML

    rt = YAML()  # round trip: comments, order and quoting as they were
    rt.preserve_quotes, rt.width, rt.default_flow_style = True, 4096, None

    def put(node: dict[str, Any], over: dict[str, Any]) -> None:
        for k, v in over.items():
            if isinstance(v, dict) and isinstance(node.get(k), dict):
                put(node[k], v)
            else:
                node[k] = copy.deepcopy(v)

    doc = rt.load(text)
    put(doc, overlay)
    out = io.StringIO()
    rt.dump(doc, out)
    return out.getvalue()


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        raw = load_yaml(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(e)})") from None
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


# A preset, study or experiment name: a name, never a path (no '/', cannot start with '.').
NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"


def check_name(what: str, name: str) -> str:
    """``name`` if it is a NAME; else ConfigError in one line (it would name a file outside the project)."""
    if not re.fullmatch(NAME, name):
        raise ConfigError(f"{what} {name!r}: a name, not a path: use letters, digits, '_', '-', '.' (at most 64, "
                          "starting with a letter or digit)")
    return name


def _cross_checks(cfg: Config) -> None:
    s, t = cfg.student, cfg.train
    check_name("base.experiment:", cfg.base.experiment)
    if cfg.base.model_alias:
        check_name("base.model_alias:", cfg.base.model_alias)
        if cfg.base.model_alias.lower() == "latest":  # MLflow's own name for the newest version
            raise ConfigError("base.model_alias: 'latest' is MLflow's (models:/NAME/latest is the newest version "
                              "already): choose another name, e.g. champion")
    if s.method not in method_names():
        raise ConfigError(f"student.method: must be one of {', '.join(repr(m) for m in method_names())}, "
                          f"got {s.method!r}")
    if any(not 0.0 < w <= 1.0 for w in s.weights_at):
        raise ConfigError("student.weights_at: must be fractions of training in (0, 1]")
    if t.model not in list_models():
        raise ConfigError(f"train.model: must be one of {', '.join(repr(m) for m in list_models())}, got {t.model!r}")
    t.check("train")
    if 0 < cfg.correction.epochs < cfg.correction.begin:  # no label update would ever happen (0: no phase 1)
        raise ConfigError(f"correction.begin: must be <= correction.epochs ({cfg.correction.epochs})")
    m = cfg.mentor
    if m.pd_linear_from < m.pd_burn_in:
        raise ConfigError(f"mentor.pd_linear_from: must be >= mentor.pd_burn_in ({m.pd_burn_in})")
    check_noise_config(cfg.noise, dataset=cfg.data.dataset, networks=list_models())


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
