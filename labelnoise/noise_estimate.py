"""Estimate the label noise from what a user has: the noisy train labels, a network's predicted probabilities, and
a trusted subset. Arrays in, arrays out; nothing here sees a true train label.

A transition matrix ``T`` (K, K) has ``T[i, j]`` = P(noisy label j | true class i) (rows sum to 1), as in
:mod:`labelnoise.noise`. Four estimators:

- :func:`paired_transition` (the pipeline's where the noisy source labelled the trusted examples too, e.g. a file
  of labels for every image such as CIFAR-10N's): row i counts the given labels of the trusted examples of true
  class i. It assumes nothing of how the noise arises, only that the trusted examples are drawn as the rest were,
  so it holds for instance-dependent (human) noise, where the estimators below, built on class-conditional noise,
  see too little of it: the noisy-label network errs on the very images the annotators got wrong.
- :func:`confusion_transition` (the pipeline's with a trusted subset): a classifier h trained on the noisy labels,
  its confusion M[i, k] = P(h = k | true class i) measured on the trusted examples, and the joint of its
  out-of-sample predictions and the noisy labels on the train set, J[k, j] = P(h = k, ỹ = j). Under class-
  conditional noise (ỹ and h independent given the true class) J = Mᵀ diag(π) T, so diag(π) T = M⁻ᵀ J. This is
  black-box shift estimation's confusion-matrix inversion (Lipton, Wang & Smola, ICML 2018) carried over to label
  noise; the classifier's own errors (M ≠ I) no longer count as noise, which is where GLC's estimate errs.
- :func:`glc_transition`: gold loss correction's (Hendrycks et al. 2018, Eq. 2): row i is the mean predicted
  distribution of noisy labels, p(ỹ | x), over the trusted examples of true class i, from a network trained on
  the noisy labels.
- :func:`confident_joint_transition`: confident learning's (Northcutt et al. 2021): the confident joint of noisy
  and (estimated) true labels from out-of-sample predicted probabilities of the noisy train set, calibrated and
  normalised by cleanlab (``cleanlab.count``).

GLC's row i is E[p(ỹ | x) | y = i] = (M T)[i]: it equals T only for a classifier that makes no mistakes on clean
labels, so on classes that look alike (Fashion-MNIST's shirts and T-shirts) it reports their confusion as noise.

:func:`noise_rate` turns an estimate into the overall fraction of wrong labels. :func:`channel_misfit` checks an
estimate against classifiers trained on the trusted subset alone: under class-conditional noise it predicts the
joint of their predictions and the given labels; where it does not (instance-dependent noise), the posterior
under the estimated channel must not be trusted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from labelnoise.schema import rng


@dataclass(frozen=True)
class EstimateConfig:
    """Params section ``estimate`` (stage estimate_noise)."""

    folds: int = rng(2, 100)  # cross-validated fits on the noisy labels (out-of-sample probabilities)
    epochs: int = rng(1, 10_000)  # epochs of each fit (the rest is the `train` recipe)
    use: Literal["auto", "paired", "confusion", "glc", "confident_joint"]  # the pipeline's (auto: estimator())
    trusted_folds: int = rng(0, 100)  # networks on the trusted subset alone for channel_misfit (0: no check)
    misfit_tolerance: float = rng(0.0, 1.0)  # the channel explains the given labels when channel_misfit's gap is at
    #   most this + 2 standard errors


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


def paired_transition(given: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """The estimate from trusted examples whose noisy label is known as well: ``given`` (m,) the noisy source's
    labels of trusted examples of true classes ``labels`` (m,). Row i is the frequency of each given label among the
    trusted examples of class i (the identity row for a class without any). Rows sum to 1."""
    return glc_transition(np.eye(num_classes)[np.asarray(given, dtype=np.int64)], labels, num_classes)


def confusion_transition(noisy: np.ndarray, probs: np.ndarray, fold: np.ndarray, trusted_probs: np.ndarray,
                         trusted_labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The confusion-inversion estimate: (T (K, K), the true-class prior π (K,)).

    ``noisy`` (n,) noisy train labels; ``probs`` (n, K) each train example's out-of-sample predicted probabilities,
    from the network of its ``fold`` (n,) (values 0..F-1); ``trusted_probs`` (F, m, K) every fold network's
    probabilities on the trusted examples of true classes ``trusted_labels`` (m,). The predictions count as a
    randomised classifier h ~ p(· | x). Per fold f: M_f[i, k] = mean of p(k | x) over the trusted x of class i,
    J_f[k, j] = mean over the fold's train x of p(k | x)·[ỹ = j]; diag(π) T = M_f⁻ᵀ J_f, clipped at 0 and averaged
    over the folds. A class with no trusted example gets M's identity row. Rows of T sum to 1."""
    noisy = np.asarray(noisy, dtype=np.int64)
    labels = np.asarray(trusted_labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    onehot = np.eye(num_classes)
    folds = np.unique(fold)
    joint = np.zeros((num_classes, num_classes))  # diag(π) T, averaged over the folds
    for f in folds:
        held = fold == f
        j = probs[held].T @ onehot[noisy[held]] / max(int(held.sum()), 1)  # (K, K) [predicted, noisy]
        m = glc_transition(trusted_probs[f], labels, num_classes)  # (K, K) [true, predicted]: the same mean
        joint += np.clip(np.linalg.lstsq(m.T, j, rcond=None)[0], 0.0, None) / len(folds)
    prior = joint.sum(axis=1)
    t = np.where(prior[:, None] > 0, joint / np.maximum(prior, 1e-12)[:, None], np.eye(num_classes))
    return t / t.sum(axis=1, keepdims=True), prior / max(prior.sum(), 1e-12)


def channel_misfit(noisy: np.ndarray, probs: np.ndarray, heldout_probs: list[np.ndarray],
                   heldout_labels: list[np.ndarray], transition: np.ndarray, prior: np.ndarray) -> dict[str, float]:
    """Does the class-conditional channel (``transition`` (K, K), true-class ``prior`` (K,)) explain the given labels,
    seen through classifiers that never saw one of them?

    Networks f = 0..F-1 trained on parts of the trusted subset alone: ``probs`` (F, n, K) their probabilities on
    the n noisy train examples of labels ``noisy`` (n,); ``heldout_probs[f]`` (m_f, K) network f's on the trusted
    examples it did not train on, of true classes ``heldout_labels[f]`` (m_f,). If the noisy label depends on x
    only through the true class, the agreement of network and given label is P(h = ỹ) = Σ_i π_i Σ_k M[i, k]
    T[i, k], M[i, k] = P(h = k | y = i) measured on the held-out trusted examples. Returns that prediction, the
    agreement observed on the train set (both averaged over f; h counts as the randomised classifier p(· | x)),
    ``gap`` = |observed − predicted| and ``se``, the standard error of the gap from the finite samples (the
    per-class spread over the held-out trusted examples, the spread over the train examples). Unlike the confusion
    inversion's own networks, these were not fitted to the given labels, so the gap tests the class-conditional
    assumption instead of restating it."""
    noisy = np.asarray(noisy, dtype=np.int64)
    t, prior = np.asarray(transition, dtype=np.float64), np.asarray(prior, dtype=np.float64)
    folds = len(heldout_probs)
    predicted = observed = variance = 0.0
    for f in range(folds):
        agree = np.asarray(probs[f], dtype=np.float64)[np.arange(noisy.size), noisy]  # (n,) p_f(ỹ | x)
        observed += agree.mean() / folds
        variance += agree.var() / max(noisy.size, 1) / folds**2
        p, y = np.asarray(heldout_probs[f], dtype=np.float64), np.asarray(heldout_labels[f], dtype=np.int64)
        g = (p * t[y]).sum(axis=1)  # (m_f,) P(h = ỹ | x, y) under the channel
        for i in range(len(prior)):
            members = g[y == i]
            if members.size:
                predicted += prior[i] * members.mean() / folds
                variance += prior[i] ** 2 * members.var() / members.size / folds**2
    return {"gap": float(abs(observed - predicted)), "se": float(np.sqrt(variance)),
            "agreement_observed": float(observed), "agreement_predicted": float(predicted)}


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


def clean_probs(noisy_probs: np.ndarray, transition: np.ndarray) -> np.ndarray:
    """The true-class probabilities p(y | x) (n, K) behind a noisy-label model's p(ỹ | x) = p(y | x) T (n, K):
    ``noisy_probs`` times T's pseudo-inverse, clipped at 0 and renormalised (a row left all 0: ``noisy_probs``'s)."""
    probs = np.asarray(noisy_probs, dtype=np.float64)
    clean = np.clip(probs @ np.linalg.pinv(np.asarray(transition, dtype=np.float64)), 0.0, None)
    total = clean.sum(axis=1, keepdims=True)
    return np.where(total > 0, clean / np.where(total > 0, total, 1.0), probs)


def noise_rate(transition: np.ndarray, prior: np.ndarray) -> float:
    """The overall fraction of wrong labels under ``transition`` (K, K) and true-class ``prior`` (K,):
    Σ_i π_i (1 − T[i, i])."""
    return float(np.asarray(prior, dtype=np.float64) @ (1.0 - np.diag(np.asarray(transition, dtype=np.float64))))


# ----------------------------------------------------------------------------- the estimate of a train set
def estimator(cfg: EstimateConfig, *, has_trusted: bool, has_paired: bool = False) -> str:
    """The estimator ``estimate.use`` names (``auto``: the paired counts where the noisy source labelled the trusted
    examples too, else the confusion inversion where there is a trusted subset, else the confident joint); one that
    needs what the data lacks is one ValueError line."""
    auto = "paired" if has_trusted and has_paired else "confusion" if has_trusted else "confident_joint"
    use = auto if cfg.use == "auto" else cfg.use
    if use != "confident_joint" and not has_trusted:
        raise ValueError(f"estimate.use: {use} needs a trusted clean subset (data.trusted_size > 0 or "
                         "data.trusted_file); use auto or confident_joint")
    if use == "paired" and not has_paired:
        raise ValueError("estimate.use: paired needs the noisy labels of the trusted examples too (noise.kind: given "
                         "with a file that labels every image); use auto or confusion")
    return use


def has_paired(view: Any) -> bool:
    """Whether ``view`` (a TrainView) holds the noisy source's labels of its trusted examples."""
    return view.y_clean_given is not None and view.x_clean.shape[0] > 0


def estimate(view: Any, *, cfg: EstimateConfig, trusted: Any, recipe: Any, new_model: Callable[[], nn.Module],
             seed: int, device: torch.device, checkpoint_path: Path,
             log: Callable[[str], None] | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Estimate the noise of ``view``'s train labels (a TrainView: the noisy labels and the trusted subset, never a
    true train label) with every estimator the data allows, and the misfit check of the one used. Returns the
    report (JSON-ready: ``use``, ``rate``, ``transition``, ``estimates`` {name: rate, transition, prior}, ``fit``) and
    the misfit check's networks' mean prediction on the train and test images ({"train": (n, K), "test":
    (n_test, K)} float32; empty without a check): networks that never saw a given label, label correction's trusted
    teacher.

    The fold networks (``cfg.folds`` of ``new_model()``, the ``recipe`` with ``cfg.epochs``) give out-of-sample
    probabilities of the train set and predict the trusted examples; the misfit check's networks
    (``cfg.trusted_folds``, the ``trusted`` budget) are trained on the trusted subset alone. Both resume per fold
    beside ``checkpoint_path`` (``.trusted`` for the check's). ``log``: their progress lines (None: stderr)."""
    from labelnoise.engine import log_to_stderr
    from labelnoise.engine.folds import out_of_fold_probs
    from labelnoise.runtime import derived_seed
    from labelnoise.trusted import trusted_recipe
    from labelnoise.views import trusted_only, without_test

    k, has_trusted = view.num_classes, view.x_clean.shape[0] > 0
    use = estimator(cfg, has_trusted=has_trusted, has_paired=has_paired(view))
    probs, trusted_probs, fold = out_of_fold_probs(
        new_model, view, folds=cfg.folds, recipe=dataclasses.replace(recipe, epochs=cfg.epochs), seed=seed,
        device=device, checkpoint_path=checkpoint_path, also=view.x_clean if has_trusted else None,
        purpose="noise estimate: fold network", log=log or log_to_stderr)
    noisy = view.y_train.numpy()
    marginal = np.bincount(noisy, minlength=k) / max(noisy.size, 1)  # (K,) the noisy labels' class frequencies
    estimates: dict[str, dict[str, Any]] = {}
    if has_paired(view):
        t = paired_transition(view.y_clean_given.numpy(), view.y_clean.numpy(), k)
        prior = prior_from_noisy(marginal, t)
        estimates["paired"] = {"transition": t, "prior": prior, "rate": noise_rate(t, prior)}
    if has_trusted:
        t, prior = confusion_transition(noisy, probs, fold, trusted_probs, view.y_clean.numpy(), k)
        estimates["confusion"] = {"transition": t, "prior": prior, "rate": noise_rate(t, prior)}
        t = glc_transition(trusted_probs.mean(axis=0), view.y_clean.numpy(), k)
        prior = prior_from_noisy(marginal, t)
        estimates["glc"] = {"transition": t, "prior": prior, "rate": noise_rate(t, prior)}
    t, prior = confident_joint_transition(noisy, probs)
    estimates["confident_joint"] = {"transition": t, "prior": prior, "rate": noise_rate(t, prior)}
    chosen = estimates[use]
    fit, predicted = None, {}
    if has_trusted and cfg.trusted_folds:  # the misfit check: networks that never saw a given label
        ckpt, n = Path(checkpoint_path), noisy.size
        held, on_images, part = out_of_fold_probs(
            new_model, without_test(trusted_only(view)), folds=cfg.trusted_folds,
            recipe=trusted_recipe(recipe, trusted), seed=derived_seed(seed, "trusted_check"), device=device,
            checkpoint_path=ckpt.with_name(f"{ckpt.stem}.trusted{ckpt.suffix}"),
            also=torch.cat([view.x_train, view.x_test]), purpose="misfit check: trusted-only network",
            log=log or log_to_stderr)
        on_noisy = on_images[:, :n]  # (folds, n, K); the test images' for label correction's teacher
        predicted = {"train": on_noisy.mean(axis=0), "test": on_images[:, n:].mean(axis=0)}
        y_clean = view.y_clean.numpy()
        fit = channel_misfit(noisy, on_noisy, [held[part == f] for f in range(cfg.trusted_folds)],
                             [y_clean[part == f] for f in range(cfg.trusted_folds)], chosen["transition"],
                             chosen["prior"])
        fit.update(tolerance=cfg.misfit_tolerance, class_conditional=fit["gap"] <= cfg.misfit_tolerance + 2 * fit["se"])
    return {
        "use": use, "rate": chosen["rate"], "transition": chosen["transition"].tolist(),
        "classes": list(view.classes), "n_train": int(noisy.size), "n_trusted": int(view.x_clean.shape[0]),
        "folds": cfg.folds, "epochs": cfg.epochs,
        "fit": fit,  # channel_misfit of the estimate used (None: no trusted subset or estimate.trusted_folds 0)
        "estimates": {name: {"rate": est["rate"], "transition": est["transition"].tolist(),
                             "prior": est["prior"].tolist()} for name, est in estimates.items()},
        "glc": None if not has_trusted else "the folds' mean p(noisy | x) on the trusted examples, by true class",
        "confusion": None if not has_trusted else ("each fold network's confusion on the trusted examples "
                                                   "inverted out of its joint with the noisy labels"),
        "paired": None if not has_paired(view) else "the given labels of the trusted examples, by true class",
    }, predicted
