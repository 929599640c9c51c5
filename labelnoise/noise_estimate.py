"""Estimate the label noise from what a user has: the noisy train labels, a network's predicted probabilities, and
a trusted subset. Arrays in, arrays out; nothing here sees a true train label.

A transition matrix ``T`` (K, K) has ``T[i, j]`` = P(noisy label j | true class i) (rows sum to 1), as in
:mod:`labelnoise.noise`. Two estimators:

- :func:`glc_transition`: gold loss correction's (Hendrycks et al. 2018, Eq. 2): row i is the mean predicted
  distribution of noisy labels, p(ỹ | x), over the trusted examples of true class i, from a network trained on
  the noisy labels.
- :func:`confident_joint_transition`: confident learning's (Northcutt et al. 2021): the confident joint of noisy
  and (estimated) true labels from out-of-sample predicted probabilities of the noisy train set, calibrated and
  normalised by cleanlab (``cleanlab.count``).

:func:`noise_rate` turns an estimate into the overall fraction of wrong labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from labelnoise.schema import rng


@dataclass(frozen=True)
class EstimateConfig:
    """Params section ``estimate`` (stage estimate_noise)."""

    folds: int = rng(2, 100)  # cross-validated fits on the noisy labels (out-of-sample probabilities)
    epochs: int = rng(1, 10_000)  # epochs of each fit (the rest is the `train` recipe)
    use: Literal["auto", "glc", "confident_joint"]  # the pipeline's estimate (auto: glc with a trusted subset)


def glc_transition(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """GLC's estimate from a noisy-label network's probabilities ``probs`` (m, K) on trusted examples of true
    classes ``labels`` (m,): row i is the mean of the rows of class i. A class without trusted examples gets the
    identity row (nothing is known of its corruption). Rows sum to 1."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    t = np.eye(num_classes)
    for i in range(num_classes):
        members = probs[labels == i]
        if members.size:
            t[i] = members.mean(axis=0)
    return t / t.sum(axis=1, keepdims=True)


def confident_joint_transition(noisy: np.ndarray, pred_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Confident learning's estimate from the noisy labels ``noisy`` (n,) and out-of-sample predicted probabilities
    ``pred_probs`` (n, K): (T (K, K), the estimated true-class prior (K,))."""
    from cleanlab.count import compute_confident_joint, estimate_latent  # lazy: only this estimator needs it

    noisy = np.asarray(noisy, dtype=np.int64)
    cj = compute_confident_joint(noisy, np.asarray(pred_probs, dtype=np.float64))  # (K, K) [noisy, true]
    prior, noise_matrix, _ = estimate_latent(cj, noisy)  # noise_matrix[s, y] = P(noisy s | true y)
    t = np.asarray(noise_matrix, dtype=np.float64).T  # (K, K) [true, noisy]
    return t / t.sum(axis=1, keepdims=True), np.asarray(prior, dtype=np.float64)


def prior_from_noisy(noisy_marginal: np.ndarray, transition: np.ndarray) -> np.ndarray:
    """The true-class prior π with π T = the noisy labels' marginal (least squares), clipped to the simplex."""
    p, *_ = np.linalg.lstsq(np.asarray(transition, dtype=np.float64).T, np.asarray(noisy_marginal, dtype=np.float64),
                            rcond=None)
    p = np.clip(p, 0.0, None)
    return p / p.sum() if p.sum() > 0 else np.full(len(p), 1.0 / len(p))


def noise_rate(transition: np.ndarray, prior: np.ndarray) -> float:
    """The overall fraction of wrong labels under ``transition`` (K, K) and true-class ``prior`` (K,):
    Σ_i π_i (1 − T[i, i])."""
    return float(np.asarray(prior, dtype=np.float64) @ (1.0 - np.diag(np.asarray(transition, dtype=np.float64))))
