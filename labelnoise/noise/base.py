"""What a noise model is given and gives back, the registry, and what the models share.

A noise model (``noise.kind``) is one file in this package that calls :func:`register` with a :class:`NoiseModel`:
its facts (a one-line summary, whether it is class-conditional, its params block ``noise.<kind>`` and that block's
checks) and ``apply``, which corrupts the train labels. Code outside this package asks the registry for these
facts; it never tests a kind's name.

``noise.rate`` is the *exact* fraction of examples corrupted, per class: in each class ``c`` with ``n_c`` examples
exactly ``round(rate * n_c)`` change (half rounds up). This differs from the "uniform over all K classes, the true
one included" convention of some papers (there a noise level ``r`` changes only ``r (K - 1) / K`` of the labels): to
match such a table, pass ``rate = r * (K - 1) / K``.

Which examples change (the class-conditional models and ``open_set``): one seeded random permutation per class
(drawn for every class, in class order, before anything else), the first ``round(rate n_c)`` of it
(:func:`by_class`). So with one seed the changed set is the same for every model of one rate, and a higher rate
changes a superset of a lower one.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from labelnoise.datasets import WHITE_NOISE, DataConfig, Prepared, open_set_pool, resolve_open_set_source
from labelnoise.io import read_npz, save_npz
from labelnoise.schema import ConfigError
from labelnoise.schema import rng as _rng


# ----------------------------------------------------------------------------- the result and its file
@dataclass(frozen=True)
class NoisyLabels:
    """Corrupted labels ``(n,)`` int64 and the ``(n,)`` bool mask of the corrupted examples (evaluation only).

    ``images``: only for ``open_set`` noise (and ``massive`` from another source), uint8 (m, C, H, W) with
    ``m = mask.sum()``: the images that replace the masked examples' images, in increasing example order
    (``images[j]`` replaces example ``np.flatnonzero(mask)[j]``). There the labels are unchanged and the mask marks
    replaced images; for every other model ``mask == (labels != true labels)`` and ``images`` is None.

    ``index``: only for ``massive`` noise, int64 (m,) increasing positions in the train split of the
    examples that make up the training set (labels and mask are theirs, (m,)); None = all of it, in order.

    ``trusted``: where the noisy source labelled the trusted subset too (a file of labels for every image, e.g.
    CIFAR-10N's), its labels of the trusted examples, int64 aligned with the clean split; None = not known. Paired
    with their verified labels, they show the noise itself, whatever it depends on.
    """

    labels: np.ndarray
    mask: np.ndarray
    images: np.ndarray | None = None
    index: np.ndarray | None = None
    trusted: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.labels.ndim != 1 or self.mask.shape != self.labels.shape:
            raise ValueError(f"NoisyLabels: labels {self.labels.shape} and mask {self.mask.shape} must be equal 1-D")
        if self.labels.dtype != np.int64 or self.mask.dtype != np.bool_:
            raise ValueError(f"NoisyLabels: need int64 labels and a bool mask, "
                             f"got {self.labels.dtype} and {self.mask.dtype}")
        if self.images is not None and (self.images.dtype != np.uint8 or self.images.ndim != 4
                                        or len(self.images) != int(self.mask.sum())):
            raise ValueError(f"NoisyLabels: images must be uint8 (m, C, H, W) with m = {int(self.mask.sum())} "
                             f"masked examples, got {self.images.dtype} {self.images.shape}")
        if self.index is not None and (self.index.dtype != np.int64 or self.index.shape != self.labels.shape
                                       or (self.index.size and (np.diff(self.index) <= 0).any())):
            raise ValueError("NoisyLabels: index must be increasing int64 positions, one per label")
        if self.trusted is not None and (self.trusted.dtype != np.int64 or self.trusted.ndim != 1):
            raise ValueError(f"NoisyLabels: trusted must be 1-D int64, got {self.trusted.dtype} {self.trusted.shape}")

    def positions(self, n_train: int) -> np.ndarray:
        """(m,) positions in the train split of the training examples: ``index``, or all ``n_train``."""
        return self.index if self.index is not None else np.arange(n_train, dtype=np.int64)

    @property
    def n_changed(self) -> int:
        return int(self.mask.sum())


def save_noisy(path: str | Path, nl: NoisyLabels) -> Path:
    """Write ``nl`` as an npz with arrays ``labels``, ``mask`` and, where there are, ``images``, ``index`` and
    ``trusted`` (atomically)."""
    extra = {"images": nl.images} if nl.images is not None else {}
    if nl.index is not None:
        extra["index"] = nl.index
    if nl.trusted is not None:
        extra["trusted"] = nl.trusted
    return save_npz(path, labels=nl.labels, mask=nl.mask, **extra)


def load_noisy(path: str | Path) -> NoisyLabels:
    """Read what ``save_noisy`` wrote."""
    z = read_npz(path, remedy="run the inject_noise stage (dvc repro inject_noise)", keys=("labels", "mask"))
    return NoisyLabels(labels=z["labels"].astype(np.int64, copy=False), mask=z["mask"].astype(bool, copy=False),
                       images=z.get("images"), index=z.get("index"),
                       trusted=None if z.get("trusted") is None else z["trusted"].astype(np.int64, copy=False))


# ----------------------------------------------------------------------------- what a model is given and gives back
class Classifier(Protocol):
    """Trains a classifier on ``(x_fit, y_fit)`` and returns its (n, K) probabilities on ``x_score`` (images uint8
    (n, C, H, W)), for a model that scores examples (``instance``). ``settings``: that model's params block (its
    network, epochs, lr, batch size, precision, seed). The caller supplies it (``labelnoise.reference.trainer``):
    this package imports no training code."""

    def __call__(self, x_fit: np.ndarray, y_fit: np.ndarray, x_score: np.ndarray, *, classes: list[str],
                 dataset: str, settings: Any) -> np.ndarray: ...


@dataclass(frozen=True)
class NoiseInputs:
    """What a noise model is given.

    ``labels`` (n,) int64 in [0, K): the train labels to corrupt, the true ones unless ``truth`` is False (then the
    data's own). ``rng``: the generator of ``noise.seed``, a model's only randomness. ``params``: its block
    ``noise.<kind>`` (None for a model without one). For the models that need more than labels: ``prepared``, the
    dataset (images, splits, classes, name; None when :func:`corrupt` is given labels alone), ``data``, the data
    params (how another dataset's images are fetched), and ``classifier`` (:class:`Classifier`).
    """

    kind: str
    labels: np.ndarray
    num_classes: int
    rng: np.random.Generator
    rate: float
    params: Any = None
    truth: bool = True
    prepared: Prepared | None = None
    data: DataConfig | None = None
    classifier: Classifier | None = None

    def dataset(self) -> Prepared:
        """The dataset; a model that needs it, given labels alone, is one line."""
        if self.prepared is None:
            raise ValueError(f"noise.kind: {self.kind} noise needs the dataset (its images and splits), not labels "
                             "alone: use labelnoise.noise.inject")
        return self.prepared

    def need_classes(self, k: int) -> None:
        if self.num_classes < k:
            raise ValueError(f"noise.kind: {self.kind} noise needs at least {k} classes, got {self.num_classes}")


@dataclass(frozen=True)
class Applied:
    """What a noise model gives back: the noisy labels, and what reports/noise.json, the figure and MLflow say of
    them beyond what every model reports."""

    noisy: NoisyLabels
    requested_rate: float  # the overall rate the params ask for (nan: nothing is asked, e.g. a file's labels)
    rate_source: str = "noise.rate"  # the param that sets it
    rate_known: bool = True  # False: how many labels are wrong is unknown (the data's or a file's, no true labels)
    title: str = ""  # what the figure calls it ("": "<kind> noise")
    report: dict[str, Any] = field(default_factory=dict)  # its own entries of reports/noise.json
    metrics: dict[str, float] = field(default_factory=dict)  # its own metrics of the MLflow run
    tags: dict[str, str] = field(default_factory=dict)  # its own tags of the MLflow run


@dataclass(frozen=True)
class CheckContext:
    """What a model's check of its block may consult: the chosen dataset, whether this model is the chosen one
    (``noise.kind``; some values only matter then) and the registered networks."""

    dataset: str
    chosen: bool
    networks: tuple[str, ...]


# ----------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class NoiseModel:
    """A noise model's facts and entry point."""

    name: str  # the value of noise.kind, and the name of its file
    summary: str  # one line for the README and the CLI
    class_conditional: bool  # whether a label's fate depends on its class alone (not on the example)
    apply: Callable[[NoiseInputs], Applied]
    params: type | None = None  # the dataclass of its params block (noise.<name> in params.yaml), if it has one
    check: Callable[[Any, CheckContext], None] | None = None  # checks of its block (ConfigError naming the key)
    clean: bool = False  # it corrupts nothing: a run with it is the oracle (training on clean labels)
    level: Callable[[dict[str, Any]], str] | None = None  # its level's name from a run's flat params, where noise.rate
    # does not say it (reports name a level '<kind> <rate> %' otherwise)


_REGISTRY: dict[str, NoiseModel] = {}
_SHARED = ("kind", "rate", "seed")  # the noise section's own keys: no block may take their names


def register(model: NoiseModel) -> NoiseModel:
    """Add ``model`` to the registry (a noise model's file calls this at import); a second one of the same name is
    an error."""
    if model.name in _REGISTRY and _REGISTRY[model.name] is not model:
        raise ValueError(f"noise model {model.name!r} is registered twice")
    if model.name in _SHARED:
        raise ValueError(f"noise model {model.name!r}: the name of a key of the noise section")
    _REGISTRY[model.name] = model
    return model


def unregister(name: str) -> None:
    """Remove a noise model (tests register throw-away ones)."""
    _REGISTRY.pop(name, None)


def get_noise(name: str) -> NoiseModel:
    """The registered noise model ``name``; an unknown one is a ValueError naming the known ones."""
    if name not in _REGISTRY:
        raise ValueError(f"noise.kind: must be one of {', '.join(noise_names())}, got {name!r}")
    return _REGISTRY[name]


def registered() -> list[NoiseModel]:
    """The registered noise models, by name."""
    return sorted(_REGISTRY.values(), key=lambda m: m.name)


def noise_names() -> tuple[str, ...]:
    return tuple(m.name for m in registered())


def level_name(params: dict[str, Any]) -> str | None:
    """The level's name that the noise model of a run's flat ``params`` gives itself, or None (no such model, or
    one whose rate says its level)."""
    model = _REGISTRY.get(str(params.get("noise.kind", "")))
    return model.level(params) if model is not None and model.level is not None else None


def is_clean(name: str) -> bool:
    """``name`` is a registered model that corrupts nothing (the oracle's setting)."""
    return name in _REGISTRY and _REGISTRY[name].clean


# ----------------------------------------------------------------------------- params section `noise`
def noise_config_type() -> type:
    """The ``noise`` section's dataclass: the keys every model shares (kind, rate, seed) and one block per
    registered model that has params (``noise.<kind>``, its dataclass from the model's file)."""
    return _noise_type(tuple((m.name, m.params) for m in registered() if m.params is not None))


@functools.cache
def _noise_type(blocks: tuple[tuple[str, type], ...]) -> type:
    fields: list[Any] = [("kind", str),
                         ("rate", float, _rng(0.0, 1.0)),  # exact per-class fraction (models that use a rate)
                         ("seed", int, _rng(0)),  # the noise seed, separate from the training seed
                         *blocks]
    return dataclasses.make_dataclass("NoiseConfig", fields, frozen=True)


def block(cfg: Any, kind: str) -> Any:
    """The params block ``noise.<kind>`` of the noise section ``cfg`` (None for a model without one)."""
    return getattr(cfg, kind) if get_noise(kind).params is not None else None


def check_config(cfg: Any, *, dataset: str, networks: Sequence[str]) -> None:
    """The noise section's checks beyond types and ranges: a registered kind, and every model's checks of its block
    (ConfigError naming the key)."""
    if cfg.kind not in _REGISTRY:
        raise ConfigError(f"noise.kind: must be one of {', '.join(repr(n) for n in noise_names())}, got {cfg.kind!r}")
    for model in registered():
        if model.check is not None:
            model.check(block(cfg, model.name), CheckContext(dataset=dataset, chosen=model.name == cfg.kind,
                                                             networks=tuple(networks)))


# The noise section's keys before each model's own params moved into its block: such a key in params.yaml or -S is
# one line naming its new place (labelnoise.config).
RENAMED: Mapping[str, str] = {
    "noise.delta": "noise.structured.delta",
    "noise.alpha": "noise.massive.alpha",
    "noise.n_clean": "noise.massive.n_clean",
    "noise.massive_source": "noise.massive.source",
    "noise.class_map": "noise.asymmetric.class_map",
    "noise.transition": "noise.transition.matrix",
    "noise.reference_model": "noise.instance.model",
    "noise.reference_epochs": "noise.instance.epochs",
    "noise.reference_lr": "noise.instance.lr",
    "noise.reference_batch_size": "noise.instance.batch_size",
    "noise.reference_precision": "noise.instance.precision",
    "noise.reference_seed": "noise.instance.seed",
    "noise.open_set_source": "noise.open_set.source",
    "noise.file": "noise.given.file",
    "noise.key": "noise.given.key",
}


# ----------------------------------------------------------------------------- what the models share
def n_to_change(rate: float, n: int) -> int:
    """``round(rate * n)`` with halves rounded up (not to even), clipped to [0, n].

    ``rate * n`` is first rounded to 9 decimals so that float noise cannot move a tie: a rate
    given as ``1 - 0.55`` (0.44999999999999996) changes as many labels as ``0.45``.
    """
    return int(min(max(np.floor(round(rate * n, 9) + 0.5), 0), n))


def largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
    """Split the integer ``total`` in proportion to ``weights`` (K,) into counts (K,) summing to ``total``.

    Hamilton's method: floors first, then one more to the largest remainders (ties: lower index).
    """
    w = np.asarray(weights, dtype=float)
    if total == 0 or w.sum() <= 0:
        return np.zeros(w.shape, dtype=np.int64)
    quota = w / w.sum() * total
    counts = np.floor(quota).astype(np.int64)
    short = total - int(counts.sum())
    order = np.argsort(-(quota - counts), kind="stable")
    counts[order[:short]] += 1
    return counts


def check_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``labels`` as int64 (n,), or ValueError naming what is wrong."""
    y = np.asarray(labels)
    if y.ndim != 1 or (y.size and not np.issubdtype(y.dtype, np.integer)):
        raise ValueError(f"labels: need a 1-D integer array, got shape {y.shape} dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels: values must be in 0..{num_classes - 1}, got {y.min()}..{y.max()}")
    return y


def class_permutations(y: np.ndarray, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One seeded permutation of each class's example indices, all drawn first, in class order: so the
    changed set (the first ``round(rate n_c)`` of each) depends on seed and rate only, not on the model."""
    return [rng.permutation(np.flatnonzero(y == c)) for c in range(k)]


# A class-conditional model's rule: (class c, its size n_c, rng) -> the new labels (m_c,) int of the first m_c
# examples of c's permutation (m_c = how many of the class change). It may draw from rng, after the permutations.
Rule = Callable[[int, int, np.random.Generator], np.ndarray]


def by_class(inputs: NoiseInputs, rule: Rule) -> NoisyLabels:
    """Class-conditional noise, the core the class-conditional models share: per class a seeded permutation
    (:func:`class_permutations`), the first m_c of it change, to the labels the model's ``rule`` gives.
    Returns ``NoisyLabels`` with ``mask == (noisy != labels)``."""
    y = inputs.labels
    noisy = y.copy()
    for c, idx in enumerate(class_permutations(y, inputs.num_classes, inputs.rng)):  # idx: (n_c,) in random order
        new = rule(c, idx.size, inputs.rng)  # (m_c,)
        noisy[idx[: new.size]] = new
    return NoisyLabels(noisy, noisy != y)


def draw_images(m: int, image_shape: tuple[int, ...], rng: np.random.Generator,
                source_images: np.ndarray | None, *, key: str = "noise.open_set.source") -> np.ndarray:
    """``m`` images from another source, uint8 (m, *image_shape): drawn from ``source_images`` (uint8
    (M, *image_shape), already fitted to the shape) without replacement, or with replacement when M < m;
    white noise (i.i.d. uniform pixels) when ``source_images`` is None. ``key``: the param an error names."""
    shape = tuple(int(d) for d in image_shape)
    if source_images is not None and (source_images.dtype != np.uint8 or source_images.shape[1:] != shape
                                      or len(source_images) == 0):
        raise ValueError(f"{key}: need uint8 source images (M >= 1, {', '.join(map(str, shape))}), "
                         f"got {source_images.dtype} {source_images.shape}")
    if source_images is None:
        return rng.integers(0, 256, size=(m, *shape), dtype=np.uint8)  # (m, C, H, W)
    pick = rng.choice(len(source_images), size=m, replace=m > len(source_images))  # (m,)
    return np.ascontiguousarray(source_images[pick])


def other_images(inputs: NoiseInputs, source: str, *, key: str) -> tuple[str, np.ndarray | None]:
    """The images of another source for the dataset's examples: the source param ``source`` (``key``) resolved
    (auto: the dataset's own choice) and its images fitted to the dataset's shape, uint8 (M, C, H, W), or None for
    white noise. Had before anything is drawn: a missing source is one line, and nothing is written."""
    p = inputs.dataset()
    resolved = resolve_open_set_source(p.dataset, source, key=key)
    shape = tuple(p.images.shape[1:])  # (C, H, W)
    return resolved, None if resolved == WHITE_NOISE else open_set_pool(resolved, inputs.data, shape, key=key)


# ----------------------------------------------------------------------------- labels alone
def corrupt(
    labels: np.ndarray,
    *,
    kind: str,
    rate: float,
    num_classes: int,
    rng: np.random.Generator,
    class_map: Mapping[int, int] | None = None,
    transition: Any = None,
    delta: float = 0.0,
) -> NoisyLabels:
    """Corrupt ``labels`` (n,) ints in [0, K) with the noise model ``kind``, given the labels alone (no dataset):
    the models whose params are values, e.g. for the DD mentor's corrupted copy of the trusted labels.

    ``rate`` in [0, 1] is the exact per-class fraction changed (ignored by ``none`` and ``transition``);
    ``class_map`` ({src: dst}), ``transition`` ((K, K) row-stochastic) and ``delta`` are the blocks of
    ``asymmetric``, ``transition`` and ``structured`` (their keys ``class_map``, ``matrix``, ``delta``). ``rng`` is
    the only source of randomness: the same seed gives the same labels bit for bit. A model that needs the dataset
    or other params (instance, open_set, massive, given) is one line: use :func:`labelnoise.noise.inject`.
    """
    y = check_labels(labels, num_classes)
    model = get_noise(kind)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"noise.rate: must be in [0, 1], got {rate}")
    values = {"class_map": class_map, "matrix": transition, "delta": delta}  # by the names of the blocks' keys
    params = None
    if model.params is not None:
        keys = [f.name for f in dataclasses.fields(model.params)]
        missing = [k for k in keys if k not in values]
        if missing:
            raise ValueError(f"noise.kind: {kind} noise needs noise.{kind}.{missing[0]}, which corrupt does not take: "
                             "use labelnoise.noise.inject")
        params = model.params(**{k: values[k] for k in keys})
    inputs = NoiseInputs(kind=kind, labels=y, num_classes=int(num_classes), rng=rng, rate=rate, params=params)
    return model.apply(inputs).noisy


# ----------------------------------------------------------------------------- diagnostics
def realised_transition(true: np.ndarray, noisy: np.ndarray, num_classes: int) -> np.ndarray:
    """Row-normalised (K, K) matrix: entry [c, j] = fraction of true-class-c labels now j.

    Rows always sum to 1: a class with no examples gets an identity row (nothing of it changed).
    """
    true = np.asarray(true, dtype=np.int64)
    noisy = np.asarray(noisy, dtype=np.int64)
    if true.shape != noisy.shape:
        raise ValueError(f"true {true.shape} and noisy {noisy.shape} labels must have the same shape")
    k = int(num_classes)
    counts = np.zeros((k, k), dtype=np.float64)
    np.add.at(counts, (true, noisy), 1.0)
    n = counts.sum(axis=1, keepdims=True)  # (K, 1)
    eye = np.eye(k)
    return np.where(n > 0, counts / np.maximum(n, 1.0), eye)


def per_class_rate(true: np.ndarray, noisy: np.ndarray, num_classes: int) -> np.ndarray:
    """(K,) fraction of each true class whose label changed (0 for an absent class)."""
    true = np.asarray(true, dtype=np.int64)
    changed = np.bincount(true[np.asarray(noisy) != true], minlength=num_classes).astype(float)
    n = np.bincount(true, minlength=num_classes).astype(float)
    return np.divide(changed, n, out=np.zeros(num_classes), where=n > 0)
