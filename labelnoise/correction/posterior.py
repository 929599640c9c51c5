"""Label correction in one step: the class posterior of a teacher's prediction and the given label under a noise
channel, y ∝ p · T[:, ỹ] (Bayes' rule), with no training (``correction.epochs: 0``). The teacher's p is the mean
softmax of one or more networks (the student, a network trained on the trusted subset alone, or both).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labelnoise.engine import predict_logits


def one_hot(labels: Tensor, num_classes: int) -> Tensor:
    """int64 (N,) → float32 (N, C)."""
    return F.one_hot(labels.long(), num_classes).float()


def update_labels(buffer_mean: Tensor, *, mode: str) -> Tensor:
    """New labels from the buffer mean (N, C) → (N, C) float32: ``soft`` = the mean itself,
    ``hard`` = its argmax as one-hot rows."""
    if mode == "soft":
        return buffer_mean.float().clone()
    if mode == "hard":
        return F.one_hot(buffer_mean.argmax(dim=1), buffer_mean.shape[1]).float()
    raise ValueError(f"unknown label update {mode!r} (soft | hard)")


def noisy_label_posterior(buffer_mean: Tensor, noisy: Tensor, *, weight: float | str,
                          transition: Tensor | None = None) -> Tensor:
    """Combine the buffer mean s̄ (N, C) with the given noisy labels (N,) int64 → (N, C) rows summing to 1: the
    posterior of the class under a noise channel, y ∝ s̄ · T[:, ỹ]. ``transition`` (C, C) gives T (the estimated
    one, ``noisy_label_weight: auto``; ``weight`` is then not read); else T = w·I + (1 − w)/C, a symmetric
    channel that keeps the label with
    extra weight w: ``weight`` 0 returns s̄ unchanged (the paper's update), 1 returns the noisy labels. Not in
    Tanaka et al.: our addition (``correction.noisy_label_weight``; its measured effect: docs/methods.md)."""
    if transition is not None:
        channel = transition.to(device=buffer_mean.device, dtype=torch.float32)[:, noisy].T  # (N, C) T[:, ỹ]
    elif weight == 0.0:
        return buffer_mean.float()
    else:
        channel = weight * one_hot(noisy, buffer_mean.shape[1]) + (1.0 - weight) / buffer_mean.shape[1]  # (N, C)
    post = buffer_mean.float() * channel  # (N, C)
    return post / post.sum(dim=1, keepdim=True).clamp_min(torch.finfo(post.dtype).tiny)


def mean_softmax(models: Sequence[nn.Module], x: Tensor, *, batch_size: int, device: torch.device) -> Tensor:
    """The mean of ``models``' softmax (eval mode) on the images ``x`` (N, C, H, W) uint8: (N, K) float32, CPU."""
    return torch.stack([torch.softmax(predict_logits(m, x, batch_size=batch_size, device=device).float(), dim=1)
                        for m in models]).mean(dim=0)


@dataclass
class Relabelled:
    """Corrected labels and how they came about. ``soft_labels`` (N, C) float32 CPU; ``hard_history`` (E, N) int64
    the argmax labels after each epoch of a joint optimisation (E = 0 in one step); ``history`` its rows;
    ``model`` the network the labels came from (the phase-1 network, or the first teacher), eval mode."""

    model: nn.Module
    soft_labels: Tensor
    hard_history: np.ndarray
    history: list[dict[str, float]]
    seconds: float  # training + evaluation time of all epochs (resumed ones included)
    resumed_epochs: float = 0


def posterior_labels(probs: Tensor, noisy: Tensor, *, model: nn.Module, weight: float | str, update: str,
                     device: torch.device, keep: Tensor | None = None, channel: Tensor | None = None,
                     seconds: float = 0.0) -> Relabelled:
    """The labels of examples whose teacher predicts ``probs`` (N, C) and whose given labels are ``noisy`` (N,):
    :func:`noisy_label_posterior` under ``channel`` (C, C) or the symmetric channel of ``weight``, then
    :func:`update_labels` (``update``: soft | hard); ``keep`` (N,) bool examples keep their given label. No training,
    no history; ``model`` is recorded as the network the labels came from, ``seconds`` as their cost."""
    start = time.perf_counter()
    noisy = noisy.to(device)
    post = noisy_label_posterior(probs.to(device), noisy, transition=channel, weight=weight)
    labels = update_labels(post, mode=update)  # (N, C)
    if keep is not None:
        labels[keep] = one_hot(noisy, labels.shape[1])[keep]
    return Relabelled(model=model.eval(), soft_labels=labels.float().cpu(),
                      hard_history=np.zeros((0, noisy.shape[0]), dtype=np.int64), history=[],
                      seconds=seconds + time.perf_counter() - start)
