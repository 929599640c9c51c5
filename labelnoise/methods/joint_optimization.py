"""Label correction by joint optimization of network and labels (Tanaka et al., CVPR 2018).

Two phases, as in the official code (``DaikiTanaka-UT/JointOptimization``, ``first_step_train.py`` and
``second_step_train.py``):

1. :func:`joint_optimize` (:class:`JointTask` in the engine): network parameters θ and soft labels Y are optimised
   in turn. θ takes SGD steps
   at a high constant lr on  L = L_c + α·L_p + β·L_e  (:func:`joint_loss`):
     - L_c (:func:`compatibility_loss`): cross-entropy of the softmax s against the current soft labels y
       (= KL(y‖s) up to the labels' entropy, a constant for the network);
     - L_p (:func:`prior_loss`): KL(p‖s̄) of the class prior p against the mini-batch mean prediction s̄;
       keeps the network from putting every example in one class;
     - L_e (:func:`entropy_loss`): mean entropy of s; pushes the predictions (hence the labels) to be sharp.
   Each example's softmax from the TRAINING forward pass (train mode, augmented input, as the official code
   records it) goes into a ring buffer of the last K epochs (:class:`LabelBuffer`). From epoch ``begin`` on,
   every ``update_every`` epochs (and at the last epoch), the labels become the buffer mean (``soft``) or its
   one-hot argmax (``hard``) (:func:`update_labels`). Optionally, examples the mentor trusts keep their label.
   Our addition (``noisy_label_weight`` w > 0, not in the paper): the buffer mean is first combined with the
   given noisy label as a posterior under a symmetric noise channel (:func:`noisy_label_posterior`; the measured
   effect is in the README).
2. :func:`retrain` (:class:`SoftTargetTask` in the engine): a fresh network of the same architecture is trained on
   the corrected SOFT labels with soft-target cross-entropy and its own lr schedule; it is the final model.

Training never sees the true train labels: both phases take a :class:`~labelnoise.views.TrainView`
(noisy train labels, trusted clean subset, test split). The clean subset is the model-selection signal
(and, with ``correction.prior: clean``, the source of the class prior); test accuracy is monitoring only.
:func:`recovery_report` is evaluation: it takes the true labels and is called after training only.

Both phases train through the engine (:func:`labelnoise.engine.fit`), each with its own resume file written after
every epoch, so a killed run resumes and ends with the same numbers; a checkpoint of another config is refused,
naming the keys. A finished phase 1 is reused as it is (phase 2 then starts from its labels).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labelnoise import distributed
from labelnoise.engine import FitResult, Task, fit, log_to_stderr, module_fingerprint, predict_logits
from labelnoise.methods.base import get_method, method_names
from labelnoise.runtime import derived_seed
from labelnoise.schema import ConfigError, rng
from labelnoise.views import TrainView


# ----------------------------------------------------------------------------- params (section `correction`)
@dataclass(frozen=True)
class CorrectionConfig:
    init: Literal["student", "scratch"]  # phase 1 starts from the trained student or a fresh network
    epochs: int = rng(0, 10_000)  # phase 1: alternating optimisation of network and labels (0: none, the labels
    #   are the posterior of the starting network's predictions)
    lr: float = rng(0.0, 10.0, lo_open=True)  # phase 1: high constant lr (paper 0.08 symmetric, 0.03 asymmetric)
    alpha: float = rng(0.0)  # weight of the prior term L_p (paper 1.2 sym / 0.8 asym; official code 1.0)
    beta: float = rng(0.0)  # weight of the entropy term L_e (paper 0.8 sym / 0.4 asym; official code 0.5)
    prior: Literal["uniform", "clean"]  # class prior p: uniform, or estimated from the clean subset
    buffer: int = rng(1, 1000)  # K: epochs of softmax outputs averaged into the new labels
    begin: int = rng(1)  # first epoch (1-based) at which labels are updated
    update: Literal["soft", "hard"]  # new label = buffer mean, or its argmax (one-hot)
    update_every: int = rng(1)  # epochs between label updates
    noisy_label_weight: float | Literal["auto"] = rng(0.0, 1.0)  # w: y ∝ s̄ · (w·onehot(noisy) + (1−w)/C); 0 = the
    #   paper's y = s̄; auto: y ∝ s̄ · T̂[:, noisy], T̂ the estimated transition matrix (labelnoise.auto)
    include_trusted: bool  # the trusted subset joins both phases' training data with its true labels (kept)
    teacher: Literal["auto", "student", "trusted", "ensemble"]  # epochs 0: whose prediction p the labels'
    #   posterior starts from: the student, a network trained on the trusted subset alone (student.clean_only's
    #   budget), or the mean of the two softmaxes; auto: labelnoise.auto.teacher
    trust_mentor: bool  # examples whose mentor weight exceeds trust_threshold keep their label
    trust_threshold: float = rng(0.0, 1.0)
    retrain_epochs: int = rng(1, 10_000)  # phase 2: a fresh network on the corrected labels
    retrain_lr: float = rng(0.0, 10.0, lo_open=True)
    retrain_schedule: Literal["constant", "multistep", "cosine", "onecycle"]


# Floor of the mean prediction inside log(s̄) (L_p): a class whose mean softmax underflows to 0 would give inf.
_PRIOR_LOG_FLOOR = 1e-12


# ----------------------------------------------------------------------------- losses (pure functions)


def compatibility_loss(logits: Tensor, soft_labels: Tensor) -> Tensor:
    """L_c = −(1/B) Σ_i Σ_j y_ij log s_ij with s = softmax(logits).

    logits (B, C), soft_labels (B, C) (rows sum to 1) → () scalar. Equals KL(y‖s) averaged over the batch
    plus the labels' mean entropy, which does not depend on the network.
    """
    return -(soft_labels.float() * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


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


def soft_cross_entropy(logits: Tensor, soft_labels: Tensor) -> dict[str, Tensor]:
    """Phase-2 loss: soft-target cross-entropy (= L_c, no prior or entropy term). → {"loss", "l_c"}."""
    l_c = compatibility_loss(logits, soft_labels)
    return {"loss": l_c, "l_c": l_c}


# ----------------------------------------------------------------------------- labels


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
    Tanaka et al.: our addition (``correction.noisy_label_weight``; its measured effect: README)."""
    if transition is not None:
        channel = transition.to(device=buffer_mean.device, dtype=torch.float32)[:, noisy].T  # (N, C) T[:, ỹ]
    elif weight == 0.0:
        return buffer_mean.float()
    else:
        channel = weight * one_hot(noisy, buffer_mean.shape[1]) + (1.0 - weight) / buffer_mean.shape[1]  # (N, C)
    post = buffer_mean.float() * channel  # (N, C)
    return post / post.sum(dim=1, keepdim=True).clamp_min(torch.finfo(post.dtype).tiny)


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
            raise ConfigError("correction.prior: 'clean' needs a trusted clean subset (data.clean_size > 0 or "
                              "data.clean_file); or use correction.prior: uniform")
        counts = torch.bincount(y, minlength=num_classes).double()
        return (counts / counts.sum()).float()
    raise ValueError(f"unknown prior {kind!r} (uniform | clean)")


def mentor_trust(weights: Mapping[str, np.ndarray] | None, *, threshold: float, n: int) -> np.ndarray:
    """Examples the mentor trusts: final weight v > ``threshold`` → bool (n,).

    ``weights``: PATHS.student_weights as engine.load_weights reads it ({"epochs" (E,), "weight" (E, n), NaN
    where unseen, "method"});
    the last saved epoch's row is used, an unseen example (NaN) is not trusted. Refused (ConfigError naming
    ``correction.trust_mentor``) when there are no weights or they are all 1 (a ``ce`` student, where every
    example would be trusted and nothing corrected).
    """
    hint = ("train the student with a method that scores every label (spade, mentormix, cleanlab), or set "
            "correction.trust_mentor=false")
    if weights is None or "weight" not in weights or np.asarray(weights["weight"]).size == 0:
        raise ConfigError(f"correction.trust_mentor: the student's weight file has no per-example mentor weights; "
                          f"{hint}")
    w = np.asarray(weights["weight"], dtype=np.float64)
    if w.ndim != 2 or w.shape[1] != n:
        raise ConfigError(f"correction.trust_mentor: mentor weights of shape {w.shape}, expected (E, {n}) "
                          "(re-run train_student)")
    last = w[-1]  # (n,) the last saved epoch
    seen = np.isfinite(last)
    scored = weights.get("method") in method_names() and get_method(str(weights["method"])).scores_labels
    if not scored or not seen.any() or np.all(last[seen] == 1.0):
        raise ConfigError(f"correction.trust_mentor: every mentor weight is 1 (a ce student), so every example "
                          f"would be trusted and no label corrected; {hint}")
    return seen & (np.nan_to_num(last, nan=-math.inf) > threshold)


def one_hot(labels: Tensor, num_classes: int) -> Tensor:
    """int64 (N,) → float32 (N, C)."""
    return F.one_hot(labels.long(), num_classes).float()


# ----------------------------------------------------------------------------- the two phases as engine tasks


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
        parts = joint_loss(logits, soft, prior=self.prior, alpha=self.cfg.alpha, beta=self.cfg.beta)
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


class SoftTargetTask(Task):
    """Phase 2 in the engine: soft-target cross-entropy against fixed labels ``targets`` (N, C) on the device."""

    def __init__(self, targets: Tensor) -> None:
        super().__init__()
        self.targets = targets

    def __call__(self, model: nn.Module, xb: Tensor, yb: Tensor, *, step: int,
                 idx: Tensor | None = None) -> dict[str, Tensor]:
        logits = model(xb).float()  # (B, K)
        soft = self.targets[idx]  # (B, C)
        return {"loss": compatibility_loss(logits, soft), "logits": logits, "target": soft.argmax(dim=1)}


def phase_recipe(recipe: Any, *, lr: float, schedule: str, epochs: int) -> Any:
    """The training recipe (momentum, Nesterov, weight decay, batch size, milestones, ...) with a phase's own lr,
    schedule and length. Phase 1 uses a constant lr without warm-up (official code); phase 2 keeps the recipe's
    warm-up."""
    warmup = 0.0 if schedule == "constant" else recipe.warmup_epochs
    return dataclasses.replace(recipe, lr=lr, schedule=schedule, epochs=epochs, warmup_epochs=warmup)


def _digest(t: Tensor | np.ndarray | None) -> str | None:
    if t is None:
        return None
    a = np.ascontiguousarray(t.cpu().numpy() if isinstance(t, Tensor) else t)
    return hashlib.blake2b(a.tobytes(), digest_size=8).hexdigest()


@dataclass
class JointResult:
    """Phase 1's outcome. ``soft_labels`` (N, C) float32 CPU; ``hard_history`` (E, N) int64, the argmax of
    the labels after each epoch; ``history`` one row per epoch; ``model`` the phase-1 network (eval mode)."""

    model: nn.Module
    soft_labels: Tensor
    hard_history: np.ndarray
    history: list[dict[str, float]]
    seconds: float  # training + evaluation time of all epochs (resumed ones included)
    resumed_epochs: float = 0


@dataclass
class RetrainResult:
    """Phase 2's outcome: ``model`` holds the last epoch's weights (the final model), in eval mode."""

    model: nn.Module
    history: list[dict[str, float]]  # epoch, loss, train_acc (vs the corrected labels), clean_acc, test_acc, lr
    best_state: dict[str, Tensor]  # the epoch with the best clean-subset accuracy (reported, not the final model)
    best_epoch: int
    best_clean_acc: float
    seconds: float
    resumed_epochs: float = 0


def _phase_history(result: FitResult) -> list[dict[str, float]]:
    """The engine's rows with this module's names: ``loss`` (the epoch's mean loss) and ``train_acc`` (agreement
    with the current labels)."""
    names = {"train_loss": "loss", "train_acc_noisy": "train_acc"}
    return [{names.get(k, k): v for k, v in row.items()} for row in result.history]


def _renamed(on_epoch: Callable[[dict[str, float]], None] | None) -> Callable[[dict[str, float]], None] | None:
    if on_epoch is None:
        return None
    names = {"train_loss": "loss", "train_acc_noisy": "train_acc"}
    return lambda row: on_epoch({names.get(k, k): v for k, v in row.items()})


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
    teachers: Sequence[nn.Module] = (),
) -> JointResult:
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

    ``cfg.epochs`` 0: no phase 1; the labels come from the mean softmax of ``teachers`` (default: ``model``)
    (:func:`_posterior_only`).
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
    if cfg.epochs == 0:  # no joint optimisation: one label step from the starting network's own predictions
        return _posterior_only(list(teachers) or [model], data, noisy, cfg=cfg, recipe=recipe, device=device,
                               keep=keep, channel=channel)
    task = JointTask(noisy, cfg=cfg, prior=prior, trusted=keep, transition=channel)
    config = {"correction": dataclasses.asdict(cfg), "recipe": dataclasses.asdict(recipe), "seed": seed,
              **({} if transition is None else {"transition": np.asarray(transition).round(6).tolist()}),
              "init": module_fingerprint(model),
              "trusted": _digest(np.packbits(trusted)) if trusted is not None else None}
    result = fit(model, data, task, recipe=phase_recipe(recipe, lr=cfg.lr, schedule="constant", epochs=cfg.epochs),
                 seed=derived_seed(seed, "joint"), device=device, config=config, checkpoint_path=checkpoint_path,
                 progress=False, on_epoch=_renamed(on_epoch), log=log, name="joint",
                 remedy="label correction (phase 1): lower correction.lr")
    return JointResult(model=result.model, soft_labels=result.extra["soft_labels"],
                       hard_history=result.extra["hard_history"], history=_phase_history(result),
                       seconds=result.seconds, resumed_epochs=result.resumed_epochs)


def mean_softmax(models: Sequence[nn.Module], x: Tensor, *, batch_size: int, device: torch.device) -> Tensor:
    """The mean of ``models``' softmax (eval mode) on the images ``x`` (N, C, H, W) uint8: (N, K) float32, CPU."""
    return torch.stack([torch.softmax(predict_logits(m, x, batch_size=batch_size, device=device).float(), dim=1)
                        for m in models]).mean(dim=0)


def _posterior_only(teachers: Sequence[nn.Module], data: TrainView, noisy: Tensor, *, cfg: Any, recipe: Any,
                    device: torch.device, keep: Tensor | None, channel: Tensor | None) -> JointResult:
    """``correction.epochs: 0``: the labels are :func:`noisy_label_posterior` of the ``teachers``' mean softmax
    (eval mode) on the train images (then :func:`update_labels`); ``keep`` examples keep their given label. No
    training, no history; the returned model is the first teacher."""
    start = time.perf_counter()
    probs = mean_softmax(teachers, data.x_train, batch_size=recipe.eval_batch_size, device=device).to(device)
    post = noisy_label_posterior(probs, noisy, transition=channel, weight=cfg.noisy_label_weight)
    labels = update_labels(post, mode=cfg.update)  # (N, C)
    if keep is not None:
        labels[keep] = one_hot(noisy, labels.shape[1])[keep]
    return JointResult(model=teachers[0].eval(), soft_labels=labels.float().cpu(),
                       hard_history=np.zeros((0, noisy.shape[0]), dtype=np.int64), history=[],
                       seconds=time.perf_counter() - start)


def retrain(
    model: nn.Module,
    data: TrainView,
    soft_labels: Tensor,
    *,
    cfg: Any,
    recipe: Any,
    seed: int,
    device: torch.device | str = "cpu",
    checkpoint_path: str | Path | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    log: Callable[[str], None] = log_to_stderr,
) -> RetrainResult:
    """Phase 2: train the fresh network ``model`` on ``soft_labels`` (N, C) (the corrected labels of
    ``data.x_train``) with soft-target cross-entropy for ``cfg.retrain_epochs`` epochs, lr
    ``cfg.retrain_lr`` on schedule ``cfg.retrain_schedule`` (other SGD settings from the recipe).
    The best clean-subset epoch is tracked (model selection; test accuracy is monitoring only)."""
    device = torch.device(device)
    n = data.x_train.shape[0]
    if soft_labels.shape != (n, len(data.classes)):
        raise ValueError(f"soft labels of shape {tuple(soft_labels.shape)}, expected ({n}, {len(data.classes)})")
    config = {"correction": dataclasses.asdict(cfg), "recipe": dataclasses.asdict(recipe), "seed": seed,
              "init": module_fingerprint(model), "labels": _digest(soft_labels)}
    phase = phase_recipe(recipe, lr=cfg.retrain_lr, schedule=cfg.retrain_schedule, epochs=cfg.retrain_epochs)
    result = fit(model, data, SoftTargetTask(soft_labels.float().to(device)), recipe=phase,
                 seed=derived_seed(seed, "retrain"), device=device, config=config, checkpoint_path=checkpoint_path,
                 progress=False, on_epoch=_renamed(on_epoch), log=log, name="retrain",
                 remedy="label correction (phase 2): lower correction.retrain_lr")
    return RetrainResult(model=result.model, history=_phase_history(result), best_state=result.best_state,
                         best_epoch=result.best_epoch, best_clean_acc=result.best_clean_acc, seconds=result.seconds,
                         resumed_epochs=result.resumed_epochs)


# ----------------------------------------------------------------------------- evaluation (true labels)


def recovery_report(
    noisy: np.ndarray, corrected: np.ndarray, true: np.ndarray | None, *, num_classes: int,
    hard_history: np.ndarray | None = None,
) -> dict[str, Any]:
    """How well the corrected labels recover the true ones. EVALUATION ONLY: called after training.

    noisy, corrected, true: int (N,). hard_history: optional (E, N) labels after each phase-1 epoch.
    Returns {"acc_before", "acc_after", "residual_noise_rate", "labels_changed" (count), "changed_fraction",
    "fixed" (wrong → right), "broken" (right → wrong), "per_class_before", "per_class_after" ((C,) recall of
    each true class), "recovery_per_epoch" ((E,) when hard_history is given)}. Without true labels (``true``
    None) only the changes are counted; everything measured against the truth is NaN (None for the counts).
    """
    from labelnoise.metrics import label_accuracy, per_class_accuracy

    noisy, corrected = (np.asarray(a, dtype=np.int64) for a in (noisy, corrected))
    changed = corrected != noisy
    if true is None:
        unknown = np.full(num_classes, math.nan)
        out = {"acc_before": math.nan, "acc_after": math.nan, "residual_noise_rate": math.nan,
               "labels_changed": int(changed.sum()),
               "changed_fraction": float(changed.mean()) if changed.size else math.nan,
               "fixed": None, "broken": None, "per_class_before": unknown, "per_class_after": unknown}
        if hard_history is not None:
            out["recovery_per_epoch"] = np.full(len(hard_history), math.nan)
        return out
    true = np.asarray(true, dtype=np.int64)
    before, after = label_accuracy(noisy, true), label_accuracy(corrected, true)
    out: dict[str, Any] = {
        "acc_before": before, "acc_after": after, "residual_noise_rate": 1.0 - after,
        "labels_changed": int(changed.sum()), "changed_fraction": float(changed.mean()) if changed.size else math.nan,
        "fixed": int((changed & (corrected == true)).sum()), "broken": int((changed & (noisy == true)).sum()),
        "per_class_before": per_class_accuracy(true, noisy, num_classes=num_classes),
        "per_class_after": per_class_accuracy(true, corrected, num_classes=num_classes),
    }
    if hard_history is not None:
        out["recovery_per_epoch"] = np.asarray([label_accuracy(np.asarray(h, dtype=np.int64), true)
                                                for h in hard_history])
    return out


def history_columns(history: Sequence[Mapping[str, float]]) -> dict[str, np.ndarray]:
    """Rows of a history → one (E,) float array per key (for plots and CSV)."""
    keys = list(history[0]) if history else []
    return {key: np.asarray([row[key] for row in history], dtype=float) for key in keys}
