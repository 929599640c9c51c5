"""Noise model ``instance``: instance-dependent noise. The hardest examples of each class are flipped to the class they
look most like, by a reference classifier's probabilities ``P`` (n, K) of the train examples (the project's ``cnn``,
trained briefly on the trusted clean subset only: ``labelnoise.reference``, handed in as a
:class:`~labelnoise.noise.base.Classifier`); see :func:`corrupt_instance` for the exact rule."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import numpy as np

from labelnoise.noise.base import Applied, CheckContext, NoiseInputs, NoiseModel, NoisyLabels, n_to_change, register
from labelnoise.schema import ConfigError, rng


@dataclass(frozen=True)
class InstanceParams:
    """Params block ``noise.instance``: the reference classifier, which trains with the ``train`` recipe but these."""

    model: str  # its network (an architecture of labelnoise.models)
    epochs: int = rng(1, 10_000)  # epochs on the clean subset
    lr: float = rng(0.0, 10.0, lo_open=True)  # its peak learning rate
    batch_size: int = rng(1, 65_536)  # its mini-batch size
    precision: Literal["auto", "fp32", "bf16"]  # fp32 keeps the noisy labels independent of the CPU
    seed: int = rng(0)  # its initial weights and batch order


def check(params: InstanceParams, ctx: CheckContext) -> None:
    if params.model not in ctx.networks:
        raise ConfigError(f"noise.instance.model: must be one of {', '.join(repr(m) for m in ctx.networks)}, "
                          f"got {params.model!r}")


def instance_scores(labels: np.ndarray, pred_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Difficulty and confusable class of each example from a reference classifier's probabilities.

    labels: (n,) int true labels y_i; pred_probs: (n, K) rows p_i. Returns ``score`` (n,) float64,
    ``s_i = p_i[y_i]`` (low = hard), and ``confusable`` (n,) int64, ``argmax_{j != y_i} p_i[j]``
    (ties: the lowest class index).
    """
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(pred_probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != y.shape[0] or p.shape[1] < 2:
        raise ValueError(f"pred_probs: need shape ({y.shape[0]}, K >= 2), got {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError("pred_probs: must be finite")
    rows = np.arange(y.size)
    score = p[rows, y]  # (n,)
    others = p.copy()
    others[rows, y] = -np.inf  # exclude the true class
    return score, others.argmax(axis=1).astype(np.int64)


def corrupt_instance(labels: np.ndarray, pred_probs: np.ndarray, *, rate: float) -> NoisyLabels:
    """Instance-dependent noise: flip the hardest examples of each class to the class they look most like.

    With ``s_i = p_i[y_i]`` and ``ĉ_i = argmax_{j != y_i} p_i[j]`` (``instance_scores``), in each class
    ``c`` with ``n_c`` examples the ``m_c = round(rate · n_c)`` examples with the smallest ``s_i`` (ties:
    lower index first) get the noisy label ``ĉ_i``; all others keep ``y_i``. Deterministic given
    ``pred_probs`` (all randomness is in the reference classifier, seeded by ``noise.instance.seed``).
    labels: (n,) int in [0, K); pred_probs: (n, K). Returns ``NoisyLabels`` with ``mask == (noisy != labels)``.
    """
    y = np.asarray(labels, dtype=np.int64)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"noise.rate: must be in [0, 1], got {rate}")
    score, confusable = instance_scores(y, pred_probs)
    k = np.asarray(pred_probs).shape[1]
    if y.size and (y.min() < 0 or y.max() >= k):
        raise ValueError(f"labels: values must be in 0..{k - 1}, got {y.min()}..{y.max()}")
    noisy = y.copy()
    for c in range(k):
        idx = np.flatnonzero(y == c)  # (n_c,) increasing, so a stable sort breaks ties by index
        hardest = idx[np.argsort(score[idx], kind="stable")[: n_to_change(rate, idx.size)]]
        noisy[hardest] = confusable[hardest]
    return NoisyLabels(noisy, noisy != y)


def apply(inputs: NoiseInputs) -> Applied:
    inputs.need_classes(2)
    p, settings = inputs.dataset(), inputs.params
    if inputs.classifier is None:
        raise ValueError("noise.kind: instance noise trains a reference classifier: pass labelnoise.noise.inject a "
                         "classifier (labelnoise.reference.trainer)")
    # the reference classifier sees the trusted clean subset's labels only, never the train labels it scores
    t0 = time.perf_counter()
    probs = inputs.classifier(p.images[p.clean_idx], p.labels[p.clean_idx], p.images[p.train_idx],
                              classes=list(p.classes), dataset=p.dataset, settings=settings)  # (n, K)
    seconds = round(time.perf_counter() - t0, 2)
    y, k = inputs.labels, inputs.num_classes
    nl = corrupt_instance(y, probs, rate=inputs.rate)
    _, confusable = instance_scores(y, probs)
    flipped = nl.labels[nl.mask]
    train_acc = float((probs.argmax(axis=1) == y).mean()) if inputs.truth and y.size else None  # vs true labels
    report = {
        "reference": {"model": settings.model, "trained_on": "clean subset", "n_fit": int(p.clean_idx.size),
                      "epochs": settings.epochs, "lr": settings.lr, "batch_size": settings.batch_size,
                      "seed": settings.seed, "train_acc": train_acc, "time_s": seconds},
        "confusable_fraction": float((flipped == confusable[nl.mask]).mean()) if flipped.size else None,
        "top_target_fraction": top_target_fraction(y[nl.mask], flipped, k),
    }
    return Applied(nl, requested_rate=inputs.rate, report=report,
                   metrics={} if train_acc is None else {"reference_train_acc": train_acc})


def top_target_fraction(true: np.ndarray, noisy: np.ndarray, k: int) -> float | None:
    """Of the changed labels, the fraction that went to their class's most frequent target (1.0 = pair-like)."""
    if not true.size:
        return None
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (true, noisy), 1)
    return float(counts.max(axis=1).sum() / true.size)


MODEL = register(NoiseModel(name="instance", summary="the hardest examples of each class flip to the class they look "
                            "most like (a reference classifier)", class_conditional=False, apply=apply,
                            params=InstanceParams, check=check))
