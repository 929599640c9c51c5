"""Label correction by joint optimization of network and labels (Tanaka et al., CVPR 2018).

Two phases, as in the official code (``DaikiTanaka-UT/JointOptimization``, ``first_step_train.py`` and
``second_step_train.py``):

1. :func:`joint_optimize`: network parameters θ and soft labels Y are optimised in turn. θ takes SGD steps
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
   given noisy label as a posterior under a symmetric noise channel (:func:`noisy_label_posterior`); on
   Fashion-MNIST with 40% symmetric noise it lifted recovered-label accuracy from 92.4% to 94.1%.
2. :func:`retrain`: a fresh network of the same architecture is trained on the corrected SOFT labels with
   soft-target cross-entropy and its own lr schedule; it is the final model.

Training never sees the true train labels: both phases take a :class:`~labelnoise.views.TrainView`
(noisy train labels, trusted clean subset, test split). The clean subset is the model-selection signal
(and, with ``correction.prior: clean``, the source of the class prior); test accuracy is monitoring only.
:func:`recovery_report` is evaluation: it takes the true labels and is called after training only.

Both phases write one resume file (:class:`CorrectionCheckpoint`) after every epoch, so a killed run
resumes and ends with the same numbers; a checkpoint of another config is refused, naming the keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labelnoise import distributed
from labelnoise.config import ConfigError
from labelnoise.io import save_torch
from labelnoise.training import (
    NonFiniteLossError,
    crop_flip,
    data_fingerprint,
    derived_seed,
    evaluate_accuracy,
    load_checkpoint,
    make_optimizer,
    make_scheduler,
    module_fingerprint,
    resolve_augment,
    resolve_channels_last,
    resolve_precision,
    rng_states,
    set_rng_states,
)

if TYPE_CHECKING:
    from labelnoise.config import CorrectionConfig, StudentConfig
    from labelnoise.views import TrainView

# Independent random streams derived from base.seed (training.derived_seed): batch order / augmentation of
# each phase, and the initial weights of the networks this module creates.
JOINT_STREAM, RETRAIN_STREAM, SCRATCH_INIT_STREAM, RETRAIN_INIT_STREAM = 2001, 2002, 2003, 2004
# Floor of the mean prediction inside log(s̄) (L_p): a class whose mean softmax underflows to 0 would give inf.
_PRIOR_LOG_FLOOR = 1e-12


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


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


def noisy_label_posterior(buffer_mean: Tensor, noisy: Tensor, *, weight: float) -> Tensor:
    """Combine the buffer mean s̄ (N, C) with the given noisy labels (N,) int64 → (N, C) rows summing to 1:
    y ∝ s̄ · (w·onehot(ỹ) + (1 − w)/C), the posterior of the class under a symmetric noise channel that keeps
    the label with extra weight w. ``weight`` 0 returns s̄ unchanged (the paper's update); 1 returns the noisy
    labels. Not in Tanaka et al.: a measured addition (see params.yaml, ``correction.noisy_label_weight``)."""
    if weight == 0.0:
        return buffer_mean.float()
    c = buffer_mean.shape[1]
    channel = weight * one_hot(noisy, c) + (1.0 - weight) / c  # (N, C)
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
            raise ConfigError("correction.prior: 'clean' needs the trusted clean subset (data.clean_size > 0)")
        counts = torch.bincount(y, minlength=num_classes).double()
        return (counts / counts.sum()).float()
    raise ValueError(f"unknown prior {kind!r} (uniform | clean)")


def mentor_trust(weights: Mapping[str, np.ndarray] | None, *, threshold: float, n: int) -> np.ndarray:
    """Examples the mentor trusts: final weight v > ``threshold`` → bool (n,).

    ``weights``: PATHS.student_weights as training.load_weights reads it ({"epochs" (E,), "weight" (E, n), NaN
    where unseen, "method"});
    the last saved epoch's row is used, an unseen example (NaN) is not trusted. Refused (ConfigError naming
    ``correction.trust_mentor``) when there are no weights or they are all 1 (a ``ce`` student, where every
    example would be trusted and nothing corrected).
    """
    hint = "train the student with student.method=spade or mentormix, or set correction.trust_mentor=false"
    if weights is None or "weight" not in weights or np.asarray(weights["weight"]).size == 0:
        raise ConfigError(f"correction.trust_mentor: the student's weight file has no per-example mentor weights; "
                          f"{hint}")
    w = np.asarray(weights["weight"], dtype=np.float64)
    if w.ndim != 2 or w.shape[1] != n:
        raise ConfigError(f"correction.trust_mentor: mentor weights of shape {w.shape}, expected (E, {n}) "
                          "(re-run train_student)")
    last = w[-1]  # (n,) the last saved epoch
    seen = np.isfinite(last)
    if str(weights.get("method", "")) == "ce" or not seen.any() or np.all(last[seen] == 1.0):
        raise ConfigError(f"correction.trust_mentor: every mentor weight is 1 (a ce student), so every example "
                          f"would be trusted and no label corrected; {hint}")
    return seen & (np.nan_to_num(last, nan=-math.inf) > threshold)


def one_hot(labels: Tensor, num_classes: int) -> Tensor:
    """int64 (N,) → float32 (N, C)."""
    return F.one_hot(labels.long(), num_classes).float()


# ----------------------------------------------------------------------------- checkpoint


def phase_optim_config(student: StudentConfig, *, lr: float, schedule: str, epochs: int) -> StudentConfig:
    """The student's SGD settings (momentum, Nesterov, weight decay, batch size, milestones, ...) with a
    phase's own lr, schedule and length, for training.make_optimizer / make_scheduler. Phase 1 uses a
    constant lr without warm-up (official code); phase 2 keeps the student's warm-up."""
    warmup = 0.0 if schedule == "constant" else student.warmup_epochs
    return dataclasses.replace(student, lr=lr, schedule=schedule, epochs=epochs, warmup_epochs=warmup)


def correction_checkpoint_config(
    cfg: CorrectionConfig, student: StudentConfig, *, seed: int, data: TrainView, joint_init: nn.Module,
    retrain_init: nn.Module, trusted: np.ndarray | None,
) -> dict[str, Any]:
    """What must match for a correction checkpoint to be resumed: the params of both sections, the seed,
    the data (noisy labels included), the two starting networks' weights and the trusted mask."""
    trusted_hash = (None if trusted is None
                    else hashlib.blake2b(np.packbits(trusted).tobytes(), digest_size=8).hexdigest())
    return {"correction": dataclasses.asdict(cfg), "student": dataclasses.asdict(student), "seed": seed,
            "data": data_fingerprint(data), "joint_init": module_fingerprint(joint_init),
            "retrain_init": module_fingerprint(retrain_init), "trusted": trusted_hash}


class CorrectionCheckpoint:
    """One resume file for both phases: ``{"config", "phases": {"joint": state, "retrain": state},
    "finished"}``, written atomically after every epoch.

    Loaded once: a file of another config (each differing key is logged) or a finished run's is not resumed
    (training starts fresh and overwrites it); an unreadable one is refused with an error (kept as it is).
    """

    def __init__(self, path: str | Path, config: Mapping[str, Any], *,
                 log: Callable[[str], None] = _stderr) -> None:
        self.path, self.config = Path(path), dict(config)
        saved = load_checkpoint(self.path, self.config, log=log)
        self.phases: dict[str, dict[str, Any]] = dict(saved["phases"]) if saved is not None else {}
        if saved is not None:
            log(f"resuming from {self.path}: " + ", ".join(
                f"{name} epoch {state['epoch']}" for name, state in self.phases.items()))

    def get(self, phase: str) -> dict[str, Any] | None:
        return self.phases.get(phase)

    def save(self, phase: str, state: dict[str, Any], *, finished: bool = False) -> None:
        self.phases[phase] = state
        if distributed.is_main():  # torchrun: rank 0 writes
            save_torch(self.path, {"config": self.config, "phases": self.phases, "finished": finished})


# ----------------------------------------------------------------------------- one epoch


@dataclass
class _Runtime:
    """Device choices shared by both phases (resolved from the student section)."""

    device: torch.device
    amp: torch.dtype | None
    channels_last: bool
    augment: str  # none | crop_flip
    padding: int

    @classmethod
    def create(cls, student: StudentConfig, data: TrainView, device: torch.device | str) -> _Runtime:
        device = torch.device(device)
        return cls(device=device, amp=resolve_precision(student.precision, device),
                   channels_last=resolve_channels_last(student.channels_last, device),
                   augment=resolve_augment(student.augment, data.dataset), padding=student.crop_padding)

    def evaluate(self, model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> float:
        return evaluate_accuracy(model, x, y, batch_size=batch_size, device=self.device, autocast_dtype=self.amp,
                                 channels_last=self.channels_last)["acc"]


def _placed(model: nn.Module, rt: _Runtime) -> nn.Module:
    """``model`` on the device (channels_last when chosen); under torchrun the DistributedDataParallel around it
    (the ranks' gradients averaged; each rank's batch-level loss terms, such as the prior term, see its share
    of the mini-batch)."""
    model.to(rt.device)
    if rt.channels_last:
        model.to(memory_format=torch.channels_last)
    return distributed.wrap(model, rt.device)


def _train_epoch(
    model: nn.Module, x: Tensor, targets: Tensor, *, loss_fn: Callable[[Tensor, Tensor], dict[str, Tensor]],
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, generator: torch.Generator,
    batch_size: int, rt: _Runtime, epoch: int, step: int, record: Tensor | None = None,
) -> dict[str, float]:
    """One pass over x: uint8 (N, C, H, W) with soft ``targets`` (N, K), both on the device.

    ``loss_fn(logits (B, K) float32, targets (B, K))`` → {"loss", named () parts}. ``record`` (N, K): filled
    with each example's softmax from this training forward pass (phase 1's label buffer input).
    Returns the per-example means of "loss" and the parts, "train_acc" (argmax agreement with the targets'
    argmax) and "lr" (of the last step). Raises NonFiniteLossError (epoch 1-based, global step 0-based).
    """
    n = x.shape[0]
    distributed.same_generator(generator)  # torchrun: one batch order on every rank
    perm = torch.randperm(n, generator=generator).to(rt.device)  # (N,) this epoch's order
    sums: Tensor | None = None
    names: list[str] = []
    correct = torch.zeros((), dtype=torch.int64, device=rt.device)
    lr = optimizer.param_groups[0]["lr"]
    model.train()
    for b in range(math.ceil(n / batch_size)):
        # ---- batch (torchrun: this rank's share of it)
        idx = distributed.shard(perm[b * batch_size : (b + 1) * batch_size])  # (B,) positions in the train pool
        xb, yb = x[idx], targets[idx]  # (B, C, H, W) uint8, (B, K)
        if rt.augment == "crop_flip":
            xb = crop_flip(xb, padding=rt.padding, generator=generator)
        if rt.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)

        # ---- forward (autocast), loss in fp32
        with torch.autocast(rt.device.type, dtype=rt.amp, enabled=rt.amp is not None):
            logits = model(xb)
        logits = logits.float()  # (B, K)
        parts = loss_fn(logits, yb)
        if rt.device.type == "cpu" and not torch.isfinite(parts["loss"]):  # CPU: the check costs nothing
            raise NonFiniteLossError(epoch, step + b)

        # ---- backward / step
        optimizer.zero_grad(set_to_none=True)
        parts["loss"].backward()
        optimizer.step()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()

        # ---- bookkeeping on the device
        with torch.no_grad():
            if record is not None:
                record[idx] = F.softmax(logits.detach(), dim=1)
            if sums is None:
                names = list(parts)
                sums = torch.zeros(len(names), device=rt.device)
            sums += torch.stack([parts[k].detach() for k in names]) * idx.shape[0]
            correct += (logits.argmax(dim=1) == yb.argmax(dim=1)).sum()
    if record is not None and distributed.active():  # every example's row was written by one rank
        record.copy_(distributed.all_sum(record))
    if sums is not None:
        sums = distributed.all_sum(sums)
    correct = distributed.all_sum(correct)
    totals = (sums / n).tolist() if sums is not None else []
    if not all(math.isfinite(v) for v in totals):  # CUDA: checked once per epoch (no sync per step)
        raise NonFiniteLossError(epoch, step, f"non-finite loss in epoch {epoch}")
    return {**dict(zip(names, totals, strict=True)), "train_acc": correct.item() / n, "lr": lr}


# ----------------------------------------------------------------------------- phase 1


@dataclass
class JointResult:
    """Phase 1's outcome. ``soft_labels`` (N, C) float32 CPU; ``hard_history`` (E, N) int64, the argmax of
    the labels after each epoch; ``history`` one row per epoch; ``model`` the phase-1 network (eval mode)."""

    model: nn.Module
    soft_labels: Tensor
    hard_history: np.ndarray
    history: list[dict[str, float]]
    seconds: float  # training + evaluation time of all epochs (resumed ones included)
    resumed_epochs: int = 0


def joint_optimize(
    model: nn.Module,
    data: TrainView,
    *,
    cfg: CorrectionConfig,
    student: StudentConfig,
    seed: int,
    device: torch.device | str = "cpu",
    trusted: np.ndarray | None = None,
    checkpoint: CorrectionCheckpoint | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    log: Callable[[str], None] = _stderr,
) -> JointResult:
    """Phase 1: optimise ``model`` and the labels in turn for ``cfg.epochs`` epochs, starting from the noisy
    labels ``data.y_train``.

    SGD (student's momentum, Nesterov, weight decay, batch size) at the constant lr ``cfg.lr`` on
    :func:`joint_loss`; softmax of every training forward pass → :class:`LabelBuffer` (``cfg.buffer``
    epochs); labels ← :func:`update_labels` at the epochs :func:`label_update_due` picks. ``trusted`` (N,)
    bool: these examples keep their noisy label (mentor trust). History rows: epoch, loss, l_c, l_p, l_e,
    train_acc (agreement with the current labels), labels_changed (fraction whose argmax label differs from
    the noisy label), labels_flipped (fraction changed by this epoch's update), clean_acc, test_acc, lr.
    ``on_epoch(row)`` sees every row, restored ones included.
    """
    rt = _Runtime.create(student, data, device)
    n, k = data.x_train.shape[0], len(data.classes)
    if n == 0:
        raise ValueError("no training images")
    x = data.x_train.to(rt.device)
    noisy = data.y_train.to(rt.device)  # (N,)
    original = one_hot(noisy, k)  # (N, C)
    labels = original.clone()  # (N, C) the current soft labels y
    keep = torch.as_tensor(trusted, dtype=torch.bool, device=rt.device) if trusted is not None else None
    prior = class_prior(cfg.prior, num_classes=k, clean_labels=data.y_clean).to(rt.device)  # (C,)

    trained = _placed(model, rt)
    log = distributed.main_only(log)
    steps_per_epoch = math.ceil(n / student.batch_size)
    opt_cfg = phase_optim_config(student, lr=cfg.lr, schedule="constant", epochs=cfg.epochs)
    optimizer = make_optimizer(model, opt_cfg)
    scheduler = make_scheduler(optimizer, opt_cfg, steps_per_epoch=steps_per_epoch)
    generator = torch.Generator().manual_seed(derived_seed(seed, JOINT_STREAM))
    buffer = LabelBuffer(cfg.buffer, n, k, device=rt.device)
    hard_history = torch.zeros(cfg.epochs, n, dtype=torch.int64)  # (E, N) CPU
    history: list[dict[str, float]] = []
    seconds: list[float] = []

    # ---- resume
    start = 0
    state = checkpoint.get("joint") if checkpoint is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        labels.copy_(state["labels"])
        hard_history.copy_(state["hard_history"])
        history, seconds = list(state["history"]), list(state["seconds"])
        if not state["done"]:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            buffer.load_state_dict(state["buffer"])
            set_rng_states(state["rng"], generator)
        start = int(state["epoch"])
        for row in history:
            if on_epoch is not None:
                on_epoch(row)

    def save(epoch_done: int) -> None:
        if checkpoint is None:
            return
        done = epoch_done == cfg.epochs
        state = {"epoch": epoch_done, "done": done, "model": model.state_dict(), "labels": labels.cpu(),
                 "hard_history": hard_history, "history": history, "seconds": seconds}
        if not done:  # what only an unfinished phase needs (the buffer is K x N x C)
            state |= {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                      "buffer": buffer.state_dict(), "rng": rng_states(generator)}
        checkpoint.save("joint", state)

    for epoch in range(start + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        # ---- network step: one epoch of SGD on L_c + α L_p + β L_e with the labels fixed
        epoch_probs = torch.zeros(n, k, device=rt.device)  # (N, C) softmax of this epoch's training passes
        try:
            stats = _train_epoch(
                trained, x, labels, loss_fn=lambda logits, y: joint_loss(logits, y, prior=prior, alpha=cfg.alpha,
                                                                       beta=cfg.beta),
                optimizer=optimizer, scheduler=scheduler, generator=generator, batch_size=student.batch_size,
                rt=rt, epoch=epoch, step=(epoch - 1) * steps_per_epoch, record=epoch_probs)
        except NonFiniteLossError as e:
            raise NonFiniteLossError(e.epoch, e.step, f"label correction (phase 1): {e}; the last good checkpoint "
                                     "is kept; lower correction.lr") from None
        buffer.push(epoch_probs)

        # ---- label step: y ← mean (or argmax) of the last K epochs' predictions (optionally combined with the
        #      noisy label, noisy_label_weight > 0); trusted examples keep theirs
        before = labels.argmax(dim=1)
        if label_update_due(epoch, begin=cfg.begin, every=cfg.update_every, epochs=cfg.epochs):
            mean = noisy_label_posterior(buffer.mean(), noisy, weight=cfg.noisy_label_weight)  # (N, C)
            new = update_labels(mean, mode=cfg.update)  # (N, C)
            if keep is not None:
                new[keep] = original[keep]
            labels = new
        hard = labels.argmax(dim=1)  # (N,)
        hard_history[epoch - 1] = hard.cpu()

        # ---- evaluate: clean subset (selection signal), test (monitoring only)
        clean = rt.evaluate(model, data.x_clean, data.y_clean, student.eval_batch_size)
        test = rt.evaluate(model, data.x_test, data.y_test, student.eval_batch_size)

        # ---- log
        row = {"epoch": epoch, "loss": stats["loss"], "l_c": stats["l_c"], "l_p": stats["l_p"], "l_e": stats["l_e"],
               "train_acc": stats["train_acc"], "labels_changed": (hard != noisy).float().mean().item(),
               "labels_flipped": (hard != before).float().mean().item(), "clean_acc": clean, "test_acc": test,
               "lr": stats["lr"]}
        history.append(row)
        seconds.append(time.perf_counter() - t0)
        log(f"joint {epoch}/{cfg.epochs}  loss {row['loss']:.4f} (l_c {row['l_c']:.4f} l_p {row['l_p']:.4f} "
            f"l_e {row['l_e']:.4f})  changed {row['labels_changed']:.4f}  clean_acc {clean:.4f}  test_acc {test:.4f}"
            f"  {seconds[-1]:.1f}s")

        # ---- checkpoint, then the callback (a crash there resumes after this epoch)
        save(epoch)
        if on_epoch is not None:
            on_epoch(row)

    model.eval()
    return JointResult(model=model, soft_labels=labels.cpu(), hard_history=hard_history.numpy(), history=history,
                       seconds=float(sum(seconds)), resumed_epochs=start)


# ----------------------------------------------------------------------------- phase 2


@dataclass
class RetrainResult:
    """Phase 2's outcome: ``model`` holds the last epoch's weights (the final model), in eval mode."""

    model: nn.Module
    history: list[dict[str, float]]  # epoch, loss, train_acc (vs the corrected labels), clean_acc, test_acc, lr
    best_state: dict[str, Tensor]  # the epoch with the best clean-subset accuracy (reported, not the final model)
    best_epoch: int
    best_clean_acc: float
    seconds: float
    resumed_epochs: int = 0


def retrain(
    model: nn.Module,
    data: TrainView,
    soft_labels: Tensor,
    *,
    cfg: CorrectionConfig,
    student: StudentConfig,
    seed: int,
    device: torch.device | str = "cpu",
    checkpoint: CorrectionCheckpoint | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    log: Callable[[str], None] = _stderr,
) -> RetrainResult:
    """Phase 2: train the fresh network ``model`` on ``soft_labels`` (N, C) (the corrected labels of
    ``data.x_train``) with soft-target cross-entropy for ``cfg.retrain_epochs`` epochs, lr
    ``cfg.retrain_lr`` on schedule ``cfg.retrain_schedule`` (other SGD settings from ``student``).
    The best clean-subset epoch is tracked (model selection; test accuracy is monitoring only)."""
    rt = _Runtime.create(student, data, device)
    n = data.x_train.shape[0]
    if soft_labels.shape != (n, len(data.classes)):
        raise ValueError(f"soft labels of shape {tuple(soft_labels.shape)}, expected ({n}, {len(data.classes)})")
    x, targets = data.x_train.to(rt.device), soft_labels.float().to(rt.device)
    trained = _placed(model, rt)
    log = distributed.main_only(log)
    steps_per_epoch = math.ceil(n / student.batch_size)
    opt_cfg = phase_optim_config(student, lr=cfg.retrain_lr, schedule=cfg.retrain_schedule,
                                 epochs=cfg.retrain_epochs)
    optimizer = make_optimizer(model, opt_cfg)
    scheduler = make_scheduler(optimizer, opt_cfg, steps_per_epoch=steps_per_epoch)
    generator = torch.Generator().manual_seed(derived_seed(seed, RETRAIN_STREAM))
    history: list[dict[str, float]] = []
    seconds: list[float] = []
    best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    best_epoch, best_score = 0, -math.inf

    # ---- resume
    start = 0
    state = checkpoint.get("retrain") if checkpoint is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_states(state["rng"], generator)
        history, seconds, best_state = list(state["history"]), list(state["seconds"]), state["best_state"]
        best_epoch, best_score, start = int(state["best_epoch"]), float(state["best_score"]), int(state["epoch"])
        for row in history:
            if on_epoch is not None:
                on_epoch(row)

    for epoch in range(start + 1, cfg.retrain_epochs + 1):
        t0 = time.perf_counter()
        # ---- one epoch of soft-target cross-entropy on the corrected labels
        try:
            stats = _train_epoch(trained, x, targets, loss_fn=soft_cross_entropy, optimizer=optimizer,
                                 scheduler=scheduler, generator=generator, batch_size=student.batch_size, rt=rt,
                                 epoch=epoch, step=(epoch - 1) * steps_per_epoch)
        except NonFiniteLossError as e:
            raise NonFiniteLossError(e.epoch, e.step, f"label correction (phase 2): {e}; the last good checkpoint "
                                     "is kept; lower correction.retrain_lr") from None

        # ---- evaluate: clean subset chooses, test is monitoring
        clean = rt.evaluate(model, data.x_clean, data.y_clean, student.eval_batch_size)
        test = rt.evaluate(model, data.x_test, data.y_test, student.eval_batch_size)
        row = {"epoch": epoch, "loss": stats["loss"], "train_acc": stats["train_acc"], "clean_acc": clean,
               "test_acc": test, "lr": stats["lr"]}
        history.append(row)
        # No clean subset: clean_acc is NaN, never "better", so the best epoch is the last one.
        score = clean if not math.isnan(clean) else -math.inf
        if score > best_score or best_epoch == 0 or (math.isinf(score) and score == best_score):
            best_score, best_epoch = score, epoch
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        seconds.append(time.perf_counter() - t0)
        log(f"retrain {epoch}/{cfg.retrain_epochs}  loss {row['loss']:.4f}  train_acc(corrected) "
            f"{row['train_acc']:.4f}  clean_acc {clean:.4f}  test_acc {test:.4f}  lr {row['lr']:.4g}  "
            f"{seconds[-1]:.1f}s")

        # ---- checkpoint (the last one is marked finished: never resumed, the next run starts fresh)
        if checkpoint is not None:
            checkpoint.save("retrain", {
                "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": rng_states(generator), "history": history,
                "seconds": seconds, "best_state": best_state, "best_epoch": best_epoch, "best_score": best_score,
            }, finished=epoch == cfg.retrain_epochs)
        if on_epoch is not None:
            on_epoch(row)

    model.eval()
    return RetrainResult(model=model, history=history, best_state=best_state, best_epoch=best_epoch,
                         best_clean_acc=best_score if math.isfinite(best_score) else math.nan,
                         seconds=float(sum(seconds)), resumed_epochs=start)


# ----------------------------------------------------------------------------- evaluation (true labels)


def recovery_report(
    noisy: np.ndarray, corrected: np.ndarray, true: np.ndarray, *, num_classes: int,
    hard_history: np.ndarray | None = None,
) -> dict[str, Any]:
    """How well the corrected labels recover the true ones. EVALUATION ONLY: called after training.

    noisy, corrected, true: int (N,). hard_history: optional (E, N) labels after each phase-1 epoch.
    Returns {"acc_before", "acc_after", "residual_noise_rate", "labels_changed" (count), "changed_fraction",
    "fixed" (wrong → right), "broken" (right → wrong), "per_class_before", "per_class_after" ((C,) recall of
    each true class), "recovery_per_epoch" ((E,) when hard_history is given)}.
    """
    from labelnoise.metrics import label_accuracy, per_class_accuracy

    noisy, corrected, true = (np.asarray(a, dtype=np.int64) for a in (noisy, corrected, true))
    changed = corrected != noisy
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
