"""Phase 1 of label correction by joint optimization of network and labels (Tanaka et al., CVPR 2018; official
code ``DaikiTanaka-UT/JointOptimization``, ``first_step_train.py``).

Network parameters θ and soft labels Y are optimised in turn. θ takes SGD steps at a high constant lr on
L = L_c + α·L_p + β·L_e (:func:`joint_loss`):
  - L_c (:func:`~labelnoise.correction.retrain.compatibility_loss`): cross-entropy of the softmax s against the
    current soft labels y (= KL(y‖s) up to the labels' entropy, a constant for the network);
  - L_p (:func:`prior_loss`): KL(p‖s̄) of the class prior p against the mini-batch mean prediction s̄; keeps the
    network from putting every example in one class;
  - L_e (:func:`entropy_loss`): mean entropy of s; pushes the predictions (hence the labels) to be sharp.
Each example's softmax from the TRAINING forward pass (train mode, augmented input, as the official code records
it) goes into a ring buffer of the last K epochs (:class:`LabelBuffer`). From epoch ``begin`` on, every
``update_every`` epochs (and at the last epoch), the labels become the buffer mean (``soft``) or its one-hot argmax
(``hard``). Optionally, examples the mentor trusts keep their label. Our addition (``noisy_label_weight``, not in
the paper): the buffer mean is first combined with the given noisy label as a posterior under a noise channel
(:func:`~labelnoise.correction.posterior.noisy_label_posterior`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labelnoise import distributed
from labelnoise.correction.posterior import Relabelled, noisy_label_posterior, one_hot, update_labels
from labelnoise.correction.retrain import _digest, _phase_history, _renamed, compatibility_loss, phase_recipe
from labelnoise.engine import Task, fit, log_to_stderr, module_fingerprint
from labelnoise.runtime import derived_seed
from labelnoise.schema import ConfigError
from labelnoise.views import TrainView

# Floor of the mean prediction inside log(s̄) (L_p): a class whose mean softmax underflows to 0 would give inf.
_PRIOR_LOG_FLOOR = 1e-12


def prior_loss(logits: Tensor, prior: Tensor) -> Tensor:
    """L_p = Σ_j p_j log(p_j / s̄_j), s̄ = (1/B) Σ_i softmax(logits)_i the mini-batch mean prediction.

    logits (B, C), prior (C,) (sums to 1) → () scalar, ≥ 0, zero exactly when s̄ = p. (The official code
    uses −Σ p log s̄, which differs by the constant entropy of p.) Classes with p_j = 0 contribute 0.
    """
    p = prior.to(device=logits.device, dtype=torch.float32)
    mean = F.softmax(logits.float(), dim=1).mean(dim=0)  # (C,)
    return (torch.xlogy(p, p) - p * torch.log(mean.clamp_min(_PRIOR_LOG_FLOOR))).sum()


def entropy_loss(logits: Tensor) -> Tensor:
    """L_e = −(1/B) Σ_i Σ_j s_ij log s_ij, the mean entropy of s = softmax(logits). logits (B, C) → ()."""
    log_s = F.log_softmax(logits.float(), dim=1)  # (B, C)
    return -(log_s.exp() * log_s).sum(dim=1).mean()


def joint_loss(logits: Tensor, soft_labels: Tensor, *, prior: Tensor, alpha: float, beta: float) -> dict[str, Tensor]:
    """Phase-1 loss L = L_c + α·L_p + β·L_e of one mini-batch.

    logits (B, C), soft_labels (B, C), prior (C,) → {"loss", "l_c", "l_p", "l_e"}, each a () tensor
    ("loss" carries the gradient; the parts too, for logging they are detached by the caller).
    """
    l_c = compatibility_loss(logits, soft_labels)
    l_p = prior_loss(logits, prior)
    l_e = entropy_loss(logits)
    return {"loss": l_c + alpha * l_p + beta * l_e, "l_c": l_c, "l_p": l_p, "l_e": l_e}


class LabelBuffer:
    """Ring buffer of the per-example softmax outputs of the last K epochs: ``probs`` (K, N, C) float32.

    ``push(epoch_probs)`` stores one epoch's (N, C) outputs, overwriting the oldest once K are stored;
    ``mean()`` (N, C) averages the stored epochs (fewer than K before the buffer is full).
    """

    def __init__(self, capacity: int, n: int, num_classes: int, *, device: torch.device | str = "cpu") -> None:
        if capacity < 1:
            raise ValueError(f"buffer capacity must be >= 1, got {capacity}")
        self.probs = torch.zeros(capacity, n, num_classes, device=device)  # (K, N, C)
        self.count = 0  # epochs pushed so far

    @property
    def capacity(self) -> int:
        return self.probs.shape[0]

    def __len__(self) -> int:
        """Epochs currently stored: min(pushed, K)."""
        return min(self.count, self.capacity)

    def push(self, epoch_probs: Tensor) -> None:
        """Store one epoch's softmax outputs (N, C), replacing the oldest when full."""
        if epoch_probs.shape != self.probs.shape[1:]:
            raise ValueError(f"expected {tuple(self.probs.shape[1:])}, got {tuple(epoch_probs.shape)}")
        self.probs[self.count % self.capacity] = epoch_probs
        self.count += 1

    def mean(self) -> Tensor:
        """(N, C) mean over the stored epochs (the slot order does not matter for a mean)."""
        if self.count == 0:
            raise ValueError("the label buffer is empty")
        return self.probs[: len(self)].mean(dim=0)

    def state_dict(self) -> dict[str, Any]:
        return {"probs": self.probs.cpu(), "count": self.count}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.probs.copy_(state["probs"])
        self.count = int(state["count"])


def label_update_due(epoch: int, *, begin: int, every: int, epochs: int) -> bool:
    """Whether the end of 1-based ``epoch`` updates the labels: from ``begin`` on, every ``every`` epochs,
    and always at the last epoch (so the corrected labels reflect the final buffer)."""
    return epoch >= begin and ((epoch - begin) % every == 0 or epoch == epochs)


def class_prior(kind: str, *, num_classes: int, clean_labels: Tensor | np.ndarray | None = None) -> Tensor:
    """The prior p (C,) of L_p: ``uniform`` (1/C each) or ``clean`` (class frequencies of the trusted clean
    subset's labels (n_clean,))."""
    if kind == "uniform":
        return torch.full((num_classes,), 1.0 / num_classes)
    if kind == "clean":
        y = torch.as_tensor(clean_labels if clean_labels is not None else [], dtype=torch.int64).cpu()
        if y.numel() == 0:
            raise ConfigError("correction.prior: 'clean' needs a trusted clean subset (data.trusted_size > 0 or "
                              "data.trusted_file); or use correction.prior: uniform")
        counts = torch.bincount(y, minlength=num_classes).double()
        return (counts / counts.sum()).float()
    raise ValueError(f"unknown prior {kind!r} (uniform | clean)")


class JointTask(Task):
    """Phase 1 in the engine: each mini-batch trains on L = L_c + α·L_p + β·L_e against the current soft labels of
    its examples and records their softmax; each epoch's end pushes the epoch's softmax into the label buffer and,
    when due, replaces the labels (trusted examples keep their noisy label).

    noisy: (N,) int64 the given labels, on the training device; trusted: (N,) bool or None.
    """

    def __init__(self, noisy: Tensor, *, cfg: Any, prior: Tensor, trusted: Tensor | None = None,
                 transition: Tensor | None = None) -> None:
        super().__init__()
        n, k = noisy.shape[0], prior.shape[0]
        self.cfg, self.noisy, self.prior, self.keep = cfg, noisy, prior.to(noisy.device), trusted
        self.transition = transition  # (C, C) the noise channel of the label update (noisy_label_weight: auto)
        self.original = one_hot(noisy, k)  # (N, C)
        self.labels = self.original.clone()  # (N, C) the current soft labels y
        self.buffer = LabelBuffer(cfg.buffer, n, k, device=noisy.device)
        self.epoch_probs = torch.zeros(n, k, device=noisy.device)  # (N, C) softmax of this epoch's training passes
        self.hard_history = torch.zeros(cfg.epochs, n, dtype=torch.int64)  # (E, N) CPU: labels after each epoch

    def __call__(self, model: nn.Module, xb: Tensor, yb: Tensor, *, step: int,
                 idx: Tensor | None = None) -> dict[str, Tensor]:
        logits = model(xb).float()  # (B, K) the loss in fp32
        soft = self.labels[idx]  # (B, C)
        with torch.no_grad():  # the official code records the training forward pass (train mode, augmented input)
            self.epoch_probs[idx] = F.softmax(logits.detach(), dim=1)
        parts = joint_loss(logits, soft, prior=self.prior, alpha=self.cfg.prior_alpha, beta=self.cfg.entropy_beta)
        return {**parts, "logits": logits, "target": soft.argmax(dim=1)}

    def end_epoch(self, model: nn.Module, *, epoch: int) -> dict[str, float]:
        """The label step: y ← mean (or argmax) of the last K epochs' predictions (optionally combined with the
        noisy label, ``noisy_label_weight`` > 0); trusted examples keep theirs."""
        probs = distributed.all_sum(self.epoch_probs)  # torchrun: every example's row was written by one rank
        self.buffer.push(probs.clone())
        self.epoch_probs.zero_()
        before = self.labels.argmax(dim=1)
        c = self.cfg
        if label_update_due(epoch, begin=c.begin, every=c.update_every, epochs=c.epochs):
            mean = noisy_label_posterior(self.buffer.mean(), self.noisy, transition=self.transition,
                                         weight=c.noisy_label_weight)
            new = update_labels(mean, mode=c.update)  # (N, C)
            if self.keep is not None:
                new[self.keep] = self.original[self.keep]
            self.labels = new
        hard = self.labels.argmax(dim=1)  # (N,)
        self.hard_history[epoch - 1] = hard.cpu()
        return {"labels_changed": (hard != self.noisy).float().mean().item(),
                "labels_flipped": (hard != before).float().mean().item()}

    def result(self) -> dict[str, Any]:
        return {"soft_labels": self.labels.cpu(), "hard_history": self.hard_history.numpy()}

    def state_dict(self) -> dict[str, Any]:
        return {"labels": self.labels.cpu(), "buffer": self.buffer.state_dict(), "epoch_probs": self.epoch_probs.cpu(),
                "hard_history": self.hard_history.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.labels = state["labels"].to(self.labels.device)
        self.buffer.load_state_dict(state["buffer"])
        self.epoch_probs.copy_(state["epoch_probs"])
        self.hard_history.copy_(state["hard_history"])


def joint_optimize(
    model: nn.Module,
    data: TrainView,
    *,
    cfg: Any,
    recipe: Any,
    seed: int,
    device: torch.device | str = "cpu",
    trusted: np.ndarray | None = None,
    transition: np.ndarray | None = None,
    checkpoint_path: str | Path | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    log: Callable[[str], None] = log_to_stderr,
) -> Relabelled:
    """Phase 1: optimise ``model`` and the labels in turn for ``cfg.epochs`` epochs, starting from the noisy
    labels ``data.y_train``.

    SGD (the recipe's momentum, Nesterov, weight decay, batch size) at the constant lr ``cfg.lr`` on
    :func:`joint_loss`; softmax of every training forward pass → :class:`LabelBuffer` (``cfg.buffer``
    epochs); labels ← :func:`update_labels` at the epochs :func:`label_update_due` picks. ``trusted`` (N,)
    bool: these examples keep their noisy label (mentor trust). ``transition`` (C, C): the noise channel of the
    label update (``noisy_label_weight: auto``, the estimated T; required then). History rows: epoch, loss,
    train_acc (agreement with the current labels), l_c, l_p, l_e, labels_changed (fraction whose argmax label
    differs from the noisy label), labels_flipped (fraction changed by this epoch's update), clean_acc, test_acc,
    lr. ``on_epoch(row)`` sees every row, restored ones included. A finished checkpoint of the same config is
    reused.
    """
    device = torch.device(device)
    if data.x_train.shape[0] == 0:
        raise ValueError("no training images")
    noisy = data.y_train.to(device)  # (N,)
    prior = class_prior(cfg.prior, num_classes=len(data.classes), clean_labels=data.y_clean)  # (C,)
    keep = torch.as_tensor(trusted, dtype=torch.bool, device=device) if trusted is not None else None
    if (cfg.noisy_label_weight == "auto") != (transition is not None):
        raise ValueError("correction.noisy_label_weight: auto goes with the estimated transition matrix, and only it")
    channel = None if transition is None else torch.as_tensor(transition, dtype=torch.float32, device=device)
    task = JointTask(noisy, cfg=cfg, prior=prior, trusted=keep, transition=channel)
    config = {"correction": dataclasses.asdict(cfg), "recipe": dataclasses.asdict(recipe), "seed": seed,
              **({} if transition is None else {"transition": np.asarray(transition).round(6).tolist()}),
              "init": module_fingerprint(model),
              "trusted": _digest(np.packbits(trusted)) if trusted is not None else None}
    result = fit(model, data, task, recipe=phase_recipe(recipe, lr=cfg.lr, schedule="constant", epochs=cfg.epochs),
                 seed=derived_seed(seed, "joint"), device=device, config=config, checkpoint_path=checkpoint_path,
                 on_epoch=_renamed(on_epoch), log=log, name="joint", purpose="label correction: joint",
                 remedy="label correction (phase 1): lower correction.lr")
    return Relabelled(model=result.model, soft_labels=result.extra["soft_labels"],
                      hard_history=result.extra["hard_history"], history=_phase_history(result),
                      seconds=result.seconds, resumed_epochs=result.resumed_epochs)
