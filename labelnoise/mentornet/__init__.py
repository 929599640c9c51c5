"""MentorNet (Jiang et al., ICML 2018): a tiny network that weights each example of a mini-batch.

The MentorNet reads four features of an example — its loss, the loss minus a moving percentile of
the mini-batch losses (``l_pt``), its (noisy) label and the training progress in percent — and
outputs a weight v in (0, 1). It is learned in one of two ways (stage ``pretrain_mentor``):

- **PD** (pre-defined): fitted to a curriculum v*(loss, loss difference, progress) sampled on the
  official grid (:func:`pd_grid`, :func:`curriculum`);
- **DD** (data-driven): fitted to v* = 1[label is correct] on features recorded while a student
  trains on a copy of the trusted clean subset with injected noise (:func:`record_training_features`).

Faithful to ``google/mentornet`` (``code/utils.py`` ``mentornet_nn``; see notes/papers.md §1), with
these documented choices:

- The label embedding has one row per class and is fed the noisy label (the release always feeds 0).
- The 1-unit bidirectional LSTM runs one step from the zero state, and the official code keeps the
  *cell* state c of each direction. From c0 = 0 an LSTM cell gives c = σ(W_i x + b_i) · tanh(W_g x + b_g):
  the forget and output gates cannot change c, so only the input and candidate gates are parameters
  here (:class:`_OneStepBiLSTMCellState`); the function is exactly that of the official cell.
- The output layer has the official quirk ``fc1 @ (W2 + b2)`` (the "bias" is added to the weights).
- ``l_pt`` uses ``torch.quantile`` (linear interpolation); TF's ``percentile`` default is ``nearest``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labelnoise import auto
from labelnoise.engine import Task, fit
from labelnoise.io import save_torch
from labelnoise.schema import rng
from labelnoise.views import TrainView


# ----------------------------------------------------------------------------- params (section `mentor`)
@dataclass(frozen=True)
class MentorConfig:
    kind: Literal["pd", "dd"]  # pd: fit to a predefined curriculum; dd: learn from the trusted clean subset
    curriculum: Literal["self_paced", "linear", "mixture", "official_pd", "focal"]  # pd target
    percentile: float | Literal["auto"] = rng(0.0, 1.0)  # p of the moving p-th percentile l_pt (auto: labelnoise.auto)
    ema_decay: float = rng(0.0, 1.0)  # moving-average decay of l_pt (paper 0.95, official code 0.5)
    class_percentile: bool  # one l_pt per noisy label instead of one for the batch (our addition)
    lambda1: float = rng(0.0)  # mixture: loss threshold
    lambda2: float = rng(0.0)  # mixture: width of the linear part (0 = hard threshold)
    gamma: float = rng(0.0, lo_open=True)  # linear curricula: v = clip(1 - diff / gamma, 0, 1)
    focal_gamma: float = rng(0.0)  # focal weighting (1 - exp(-l)) ** gamma
    pd_burn_in: float = rng(0.0, 1.0)  # official_pd: all ones before this fraction of training
    pd_linear_from: float = rng(0.0, 1.0)  # official_pd: linear weighting from this fraction on
    label_dim: int = rng(1, 1024)  # label embedding size
    label_input: Literal["noisy", "none"]  # the label feature: the noisy class (paper) or a constant (official code:
    #   its students feed zeros)
    epoch_dim: int = rng(1, 1024)  # training-progress embedding size (100 x epoch_dim)
    hidden: int = rng(1, 4096)  # fully connected layer (tanh)
    epoch_embedding_trainable: bool  # official code: a fixed random table
    grid_size: int = rng(100)  # pd: samples drawn from the (loss, diff, progress) grid
    holdout: float = rng(0.0, 1.0)  # fraction of mentor data held out for MAE / AUROC
    fit_steps: int = rng(1)  # mentor optimisation steps (Adam)
    fit_batch_size: int = rng(1, 1_000_000)
    fit_lr: float = rng(0.0, 10.0, lo_open=True)
    fit_lr_decay: float = rng(0.0, 1.0, lo_open=True)  # lr *= decay every fit_lr_decay_steps (official 0.9 / 1000)
    fit_lr_decay_steps: int = rng(1)
    dd_noise_kind: Literal["auto", "symmetric", "pair", "asymmetric"]  # dd: noise on a copy of the clean subset
    #   (auto: the estimated transition matrix, labelnoise.auto)
    dd_noise_rate: float = rng(0.0, 1.0)
    dd_noise_seed: int = rng(0)
    dd_epochs: int = rng(1, 10_000)  # dd: epochs of the feature-recording student on the clean subset
    dd_max_rise: float = rng(0.0, 1.0)  # dd: a learnt mentor whose weight climbs with the loss by more than this
    #   (weight_rise) is no curriculum: it is learnt again on a copy at dd_fallback_rate
    dd_fallback_rate: float = rng(0.0, 1.0, lo_open=True)  # dd: that copy's symmetric noise (official DD: 0.2)
    seed: int = rng(0)  # mentor initialisation and data sampling


# ---- auto settings from the noise estimate (labelnoise.auto)
PERCENTILE_RANGE = (0.5, 0.8)  # the official MentorNet DD scripts' p at 80 % and 20 % noise


def auto_percentile(rate: float) -> float:
    """``mentor.percentile: auto``: p = clip(1 − r̂, 0.5, 0.8), keep the fraction estimated clean. It reproduces the
    official MentorNet DD scripts' table exactly (p 0.8 / 0.6 / 0.5 at 20 / 40 / 80 % noise; their PD table is
    0.75 / 0.75 / 0.5)."""
    lo, hi = PERCENTILE_RANGE
    return float(np.clip(1.0 - rate, lo, hi))


auto.rule("mentor.percentile", "clip(1 - estimated rate, 0.5, 0.8): the official MentorNet DD table",
          lambda estimate, cfg: auto_percentile(estimate.rate))
# the DD mentor learns on a copy of the trusted subset corrupted with the estimated T̂ (exact per-class counts), so
# it learns to spot the structure the data has (pair, instance-like), not symmetric noise at a guessed rate; where
# the noise source labelled the trusted examples too, on those labels themselves (the real noise, image by image)
auto.rule("mentor.dd_noise_kind", "the trusted subset's own given labels where the noise source labelled it, else "
          "a copy corrupted with the estimated transition matrix",
          lambda estimate, cfg: auto.KEEP, note=auto.estimated_channel)

NUM_PROGRESS = 100  # the epoch feature is the percent of training done, 0..99 (official: 100-row table)
GRAD_CLIP_NORM = 5.0  # official training_mentornet/train.py: clip_by_global_norm(grads, 5)

# The official PD grid (training_mentornet/data_generator.py, generate_pretrain_defined): losses
# arange(0, 10, 0.1) ∪ arange(10, 30, 1), loss differences arange(-5, 5, 0.1), progress 0..99.
GRID_LOSS = torch.cat([torch.arange(100, dtype=torch.float64) * 0.1, torch.arange(10, 30, dtype=torch.float64)])
GRID_DIFF = torch.arange(-50, 50, dtype=torch.float64) * 0.1


# ----------------------------------------------------------------------------- the network


class _OneStepBiLSTMCellState(nn.Module):
    """Cell states (c_fw, c_bw) of a 1-unit bidirectional LSTM run over a length-1 sequence from zero.

    x (B, 2) → (B, 2). With c0 = h0 = 0 each direction computes c = σ(i) · tanh(g), where
    [i, g] = W x + b are the input and candidate gates (``BasicLSTMCell(1, forget_bias=0)`` in the
    official code). Initialisation as TF's: glorot-uniform kernel of the cell's [in + 1, 4] shape,
    zero bias.
    """

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.gates = nn.Linear(in_features, 4)  # rows: i_fw, g_fw, i_bw, g_bw
        limit = math.sqrt(6.0 / ((in_features + 1) + 4))
        nn.init.uniform_(self.gates.weight, -limit, limit)
        nn.init.zeros_(self.gates.bias)

    def forward(self, x: Tensor) -> Tensor:
        i_fw, g_fw, i_bw, g_bw = self.gates(x).unbind(dim=1)  # 4 x (B,)
        return torch.stack([torch.sigmoid(i_fw) * torch.tanh(g_fw), torch.sigmoid(i_bw) * torch.tanh(g_bw)], dim=1)


class MentorNet(nn.Module):
    """v = σ(f(loss, loss − l_pt, label, progress)), the official ``mentornet_nn`` + sigmoid.

    Features: [label_emb (label_dim), progress_emb (epoch_dim), c_fw, c_bw] → FC(hidden, tanh) →
    linear (no separate bias: the official ``fc1 @ (W2 + b2)``). The progress embedding is a fixed
    random table unless ``epoch_embedding_trainable`` (official: fixed).
    """

    def __init__(self, *, num_classes: int, label_dim: int, epoch_dim: int, hidden: int,
                 epoch_embedding_trainable: bool, use_label: bool = True) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.use_label = use_label  # False: every label reads as class 0 (the official code's zero labels)
        self.label_embedding = nn.Embedding(num_classes, label_dim)
        self.epoch_embedding = nn.Embedding(NUM_PROGRESS, epoch_dim)
        # tf.get_variable's default initializer is glorot-uniform for both tables.
        nn.init.xavier_uniform_(self.label_embedding.weight)
        nn.init.xavier_uniform_(self.epoch_embedding.weight)
        self.epoch_embedding.weight.requires_grad_(epoch_embedding_trainable)
        self.lstm = _OneStepBiLSTMCellState(2)
        self.fc1 = nn.Linear(label_dim + epoch_dim + 2, hidden)
        self.out_weight = nn.Parameter(torch.empty(hidden, 1))
        self.out_bias = nn.Parameter(torch.empty(1))
        for p in (self.fc1.weight, self.fc1.bias, self.out_weight, self.out_bias):
            nn.init.normal_(p)  # tf.random_normal, std 1

    @classmethod
    def from_config(cls, cfg: MentorConfig, *, num_classes: int) -> MentorNet:
        return cls(num_classes=num_classes, label_dim=cfg.label_dim, epoch_dim=cfg.epoch_dim, hidden=cfg.hidden,
                   epoch_embedding_trainable=cfg.epoch_embedding_trainable, use_label=cfg.label_input == "noisy")

    def logits(self, loss: Tensor, loss_diff: Tensor, label: Tensor, progress: Tensor) -> Tensor:
        """Pre-sigmoid output (B,), float32 even under autocast. Inputs as in :meth:`forward`."""
        with torch.autocast(loss.device.type, enabled=False):
            x = torch.stack([loss.float(), loss_diff.float()], dim=1)  # (B, 2): the LSTM's one time step
            progress = progress.long().clamp(0, NUM_PROGRESS - 1)  # official: epoch clipped at 99
            feat = torch.cat([
                self.label_embedding(label.long() if self.use_label else torch.zeros_like(label, dtype=torch.long)),
                self.epoch_embedding(progress),  # (B, epoch_dim)
                self.lstm(x),  # (B, 2)
            ], dim=1)  # (B, label_dim + epoch_dim + 2)
            hidden = torch.tanh(self.fc1(feat))  # (B, hidden)
            return (hidden @ (self.out_weight + self.out_bias)).squeeze(1)  # (B,)

    def forward(self, loss: Tensor, loss_diff: Tensor, label: Tensor, progress: Tensor) -> Tensor:
        """Weights v (B,) in (0, 1).

        loss, loss_diff: (B,) float (loss_diff = loss − l_pt); label: (B,) int64 noisy label;
        progress: (B,) int64 percent of training done, 0..99 (larger values are clipped to 99).
        """
        return torch.sigmoid(self.logits(loss, loss_diff, label, progress))


# ----------------------------------------------------------------------------- moving percentile


class MovingPercentile:
    """l_pt: moving average of the p-th percentile of mini-batch losses (official ``mentornet()``).

    Starts at 0 with no bias correction, as the official code; each :meth:`update` first moves the
    average, and the caller then uses loss − (the updated value) as the loss-difference feature.
    The value lives on the device of the losses it was last updated with (no host synchronisation).

    With ``num_classes`` > 0 (``mentor.class_percentile``, our addition) there is one moving percentile
    per (noisy) label: each class's value moves with the p-th percentile of that class's losses in the
    batch (classes absent from the batch keep theirs), and every example is compared with its own label's
    value. A global threshold keeps the easy classes' examples and drops whole hard classes once few
    examples pass (at 80 % symmetric noise the student then collapses onto a few classes); per class,
    each label keeps about the same fraction p.
    """

    def __init__(self, p: float, decay: float, num_classes: int = 0) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"mentor.percentile: must be in [0, 1], got {p}")
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"mentor.ema_decay: must be in [0, 1], got {decay}")
        self.p, self.decay, self.num_classes = float(p), float(decay), int(num_classes)
        self._value = torch.zeros(self.num_classes) if self.num_classes else torch.zeros(())

    @classmethod
    def from_config(cls, m: Any, *, num_classes: int) -> MovingPercentile:
        """From a MentorConfig: per class when ``m.class_percentile``, else one global value."""
        return cls(m.percentile, m.ema_decay, num_classes if m.class_percentile else 0)

    def update(self, losses: Tensor, labels: Tensor | None = None) -> Tensor:
        """losses (B,) (and their int labels (B,) when per class) → the updated l_pt, detached float32 on
        the losses' device: a () tensor, or (B,) with each example's class value when per class.

        l_pt ← decay · l_pt + (1 − decay) · quantile(losses, p) (linear interpolation).
        """
        if losses.numel() == 0:
            raise ValueError("MovingPercentile.update: empty batch of losses")
        losses = losses.detach().float().reshape(-1)
        value = self._value.to(losses.device)
        if not self.num_classes:
            self._value = self.decay * value + (1.0 - self.decay) * torch.quantile(losses, self.p)
            return self._value
        if labels is None or labels.shape != losses.shape:
            raise ValueError("MovingPercentile.update: a per-class percentile needs one label per loss")
        labels = labels.reshape(-1).to(losses.device)
        value = value.clone()
        for c in torch.unique(labels).tolist():
            q = torch.quantile(losses[labels == c], self.p)
            value[c] = self.decay * value[c] + (1.0 - self.decay) * q
        self._value = value
        return value[labels]

    @property
    def value(self) -> float:
        """l_pt (per class: the mean over classes), for logs."""
        return float(self._value.mean())

    def state_dict(self) -> dict[str, Any]:
        return {"p": self.p, "decay": self.decay, "num_classes": self.num_classes,
                "value": self._value.detach().cpu().tolist()}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.p, self.decay, self.num_classes = float(d["p"]), float(d["decay"]), int(d.get("num_classes", 0))
        self._value = torch.tensor(d["value"], dtype=torch.float32, device=self._value.device)


def progress_percent(step: int, total_steps: int) -> int:
    """Percent of training done at optimiser step ``step`` (0-based): floor(100 · step / total), in 0..99.

    The official student script's ``epoch_step = floor(global_step / max_steps * 100)``.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    return int(min(max((100 * step) // total_steps, 0), NUM_PROGRESS - 1))


# ----------------------------------------------------------------------------- curricula (targets v*)


def self_paced(loss_diff: Tensor) -> Tensor:
    """Self-paced learning (hard threshold at l_pt): v* = 1[loss − l_pt <= 0]."""
    return (loss_diff <= 0).float()


def linear(loss_diff: Tensor, *, gamma: float) -> Tensor:
    """Self-paced curriculum learning, linear (official ``vstar_spcl_linear``): clip(1 − diff / γ, 0, 1)."""
    return (1.0 - loss_diff.float() / gamma).clamp(0.0, 1.0)


def mixture(loss: Tensor, *, lambda1: float, lambda2: float) -> Tensor:
    """Mixture weighting (paper eq. 5): 1[l <= λ1] if λ2 = 0, else clip(1 − (l − λ1) / λ2, 0, 1)."""
    if lambda2 == 0:
        return (loss <= lambda1).float()
    return (1.0 - (loss.float() - lambda1) / lambda2).clamp(0.0, 1.0)


def official_pd(loss: Tensor, loss_diff: Tensor, progress: Tensor, *, burn_in: float, linear_from: float,
                gamma: float) -> Tensor:
    """MentorNet PD's curriculum (official ``vstar_mentornet_pd``), by training progress (percent):

    ones while progress < 100 · burn_in; :func:`self_paced` until 100 · linear_from; :func:`linear` after.
    (Official: ones for epoch <= 18, self-paced below 90, linear from 90; with burn_in = 0.18 here
    progress 18 is already self-paced.) ``loss`` is unused; it is an argument so every curriculum
    has the same signature.
    """
    del loss
    v = torch.where(progress < 100 * linear_from, self_paced(loss_diff), linear(loss_diff, gamma=gamma))
    return torch.where(progress < 100 * burn_in, torch.ones_like(v), v)


def focal(loss: Tensor, *, gamma: float) -> Tensor:
    """Focal-loss weighting (official ``vstar_focal_loss``): (1 − exp(−l))^γ."""
    return (1.0 - torch.exp(-loss.float())) ** gamma


CURRICULA = ("self_paced", "linear", "mixture", "official_pd", "focal")


def curriculum(name: str, cfg: MentorConfig) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """The target v*(loss (N,), loss_diff (N,), progress (N,) int 0..99) → (N,) in [0, 1] named ``name``,
    with its constants from ``cfg`` (``gamma``, ``lambda1``/``lambda2``, ``focal_gamma``, ``pd_*``)."""
    if name == "self_paced":
        return lambda loss, diff, progress: self_paced(diff)
    if name == "linear":
        return lambda loss, diff, progress: linear(diff, gamma=cfg.gamma)
    if name == "mixture":
        return lambda loss, diff, progress: mixture(loss, lambda1=cfg.lambda1, lambda2=cfg.lambda2)
    if name == "official_pd":
        return lambda loss, diff, progress: official_pd(loss, diff, progress, burn_in=cfg.pd_burn_in,
                                                        linear_from=cfg.pd_linear_from, gamma=cfg.gamma)
    if name == "focal":
        return lambda loss, diff, progress: focal(loss, gamma=cfg.focal_gamma)
    raise ValueError(f"mentor.curriculum: must be one of {', '.join(CURRICULA)}, got {name!r}")


# ----------------------------------------------------------------------------- mentor data


@dataclass
class MentorFeatures:
    """MentorNet training data: one row per (example, epoch) observation, all (N,) tensors."""

    loss: Tensor  # float32
    loss_diff: Tensor  # float32, loss − l_pt
    label: Tensor  # int64 noisy label
    progress: Tensor  # int64 percent of training, 0..99
    target: Tensor  # float32 v* in [0, 1]

    def __post_init__(self) -> None:
        n = self.loss.shape[0]
        for f in dataclasses.fields(self):
            t = getattr(self, f.name)
            if t.ndim != 1 or t.shape[0] != n:
                raise ValueError(f"MentorFeatures.{f.name}: need shape ({n},), got {tuple(t.shape)}")

    def __len__(self) -> int:
        return int(self.loss.shape[0])

    @classmethod
    def cat(cls, parts: list[MentorFeatures]) -> MentorFeatures:
        if not parts:
            raise ValueError("MentorFeatures.cat: nothing to concatenate")
        return cls(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(cls)})

    def select(self, idx: Tensor) -> MentorFeatures:
        """Rows ``idx`` (int indices or a bool mask (N,))."""
        return MentorFeatures(**{f.name: getattr(self, f.name)[idx] for f in dataclasses.fields(self)})

    def to(self, device: torch.device | str) -> MentorFeatures:
        return MentorFeatures(**{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)})


def pd_grid(cfg: MentorConfig, *, num_classes: int, generator: torch.Generator) -> MentorFeatures:
    """``cfg.grid_size`` rows drawn without replacement from the official grid (:data:`GRID_LOSS` x
    :data:`GRID_DIFF` x progress 0..99, 1.2M points), each with a label drawn uniformly over the
    classes (the curricula ignore it, so the mentor learns to), target v* = ``curriculum(cfg.curriculum)``.
    """
    n_loss, n_diff = GRID_LOSS.numel(), GRID_DIFF.numel()
    total = n_loss * n_diff * NUM_PROGRESS
    if not 0 < cfg.grid_size <= total:
        raise ValueError(f"mentor.grid_size: must be in 1..{total} (the size of the official grid), "
                         f"got {cfg.grid_size}")
    flat = torch.randperm(total, generator=generator)[: cfg.grid_size]  # (N,) grid cells
    i_loss, rest = flat // (n_diff * NUM_PROGRESS), flat % (n_diff * NUM_PROGRESS)
    i_diff, progress = rest // NUM_PROGRESS, rest % NUM_PROGRESS
    loss, diff = GRID_LOSS[i_loss].float(), GRID_DIFF[i_diff].float()
    label = torch.randint(num_classes, (cfg.grid_size,), generator=generator)
    target = curriculum(cfg.curriculum, cfg)(loss, diff, progress).float()
    return MentorFeatures(loss=loss, loss_diff=diff, label=label, progress=progress, target=target)


@torch.no_grad()
def collect_features(
    model: nn.Module,
    x: Tensor,
    y_noisy: Tensor,
    correct: Tensor,
    *,
    percentile: MovingPercentile,
    progress: int,
    batch_size: int,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> MentorFeatures:
    """Mentor features of every example of x under ``model`` (eval mode, no gradient).

    x: uint8 (N, C, H, W); y_noisy: (N,) int64 labels the losses use; correct: (N,) bool, True where
    y_noisy is the true label (known for the corrupted copy of the clean subset) → target v*.
    ``percentile`` is updated mini-batch by mini-batch (size ``batch_size``, in the order of a
    permutation drawn from ``generator``, or sequential when None), and loss_diff = loss − the value
    just updated, as in the student's step. Rows are returned in the order of x (row i = x[i]).
    """
    n = x.shape[0]
    if not (y_noisy.shape == correct.shape == (n,)):
        raise ValueError(f"collect_features: x has {n} images, y_noisy {tuple(y_noisy.shape)}, "
                         f"correct {tuple(correct.shape)}")
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    loss = torch.empty(n)
    diff = torch.empty(n)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]  # (b,)
            xb, yb = x[idx].to(device, non_blocking=True), y_noisy[idx].to(device, non_blocking=True)
            lb = F.cross_entropy(model(xb).float(), yb, reduction="none")  # (b,)
            lpt = percentile.update(lb, yb)
            loss[idx] = lb.cpu()
            diff[idx] = (lb - lpt).cpu()
    finally:
        model.train(was_training)
    return MentorFeatures(loss=loss, loss_diff=diff, label=y_noisy.detach().cpu().long(),
                          progress=torch.full((n,), int(progress), dtype=torch.int64),
                          target=correct.detach().cpu().float())


@dataclass
class TrainingRecord:
    """What :func:`record_training_features` returns."""

    features: MentorFeatures  # (N · epochs) rows, epoch-major
    example: Tensor  # (N · epochs,) int64 index of each row's example in x
    epoch: Tensor  # (N · epochs,) int64 1-based epoch after which the row was recorded
    history: list[dict[str, float]]  # per epoch: epoch, train_loss, train_acc_noisy, lr, progress_lo, progress_hi


def epoch_progress(epoch: int, *, epochs: int) -> tuple[int, int]:
    """(lo, hi): the percents of training whose interval [p, p + 1) overlaps epoch ``epoch`` (0-based) of
    ``epochs``, i.e. [100 e / E, 100 (e + 1) / E). Neighbouring epochs may share a boundary percent;
    together they cover 0..99 whatever the number of steps (a student with another step count hits
    other percents)."""
    if not 0 <= epoch < epochs:
        raise ValueError(f"epoch {epoch} outside 0..{epochs - 1}")
    lo = (100 * epoch) // epochs
    hi = -((-100 * (epoch + 1)) // epochs) - 1  # ceil(100 (e + 1) / E) - 1
    return lo, min(hi, NUM_PROGRESS - 1)


def record_training_features(
    model: nn.Module,
    x: Tensor,
    y_noisy: Tensor,
    correct: Tensor,
    *,
    recipe: Any,
    percentile: MovingPercentile,
    dataset: str,
    device: torch.device,
    generator: torch.Generator,
    log: Callable[[str], None] | None = None,
) -> TrainingRecord:
    """Train ``model`` with plain cross-entropy on (x, y_noisy) for ``recipe.epochs`` epochs through the engine
    (the student's optimiser, schedule, augmentation and precision) and record every example's mentor features
    after each epoch (:func:`collect_features`, one moving percentile carried across epochs, mini-batches of
    ``recipe.batch_size`` as in the student). ``generator`` draws the batch order, the augmentation and the
    recording's own randomness, in that order each epoch.

    DD mentor data, like the official StudentNet dump (id, epoch percent, noisy label, clean label,
    loss). A row recorded after epoch e gets a progress drawn uniformly from the percents that epoch
    spans (:func:`epoch_progress`), so the mentor sees every progress value 0..99 a student may feed
    it, not only E of them (the progress embedding is a fixed random table: on unseen values the
    mentor's output would be arbitrary).
    """
    n = x.shape[0]
    if n == 0:
        raise ValueError("record_training_features: no images")
    x_dev, y_dev = x.to(device), y_noisy.to(device)
    parts: list[MentorFeatures] = []

    class Recorder(Task):
        """Plain cross-entropy; after each epoch: the losses of the model, progress spread over the epoch's
        percents."""

        def end_epoch(self, model: nn.Module, *, epoch: int) -> dict[str, float]:
            lo, hi = epoch_progress(epoch - 1, epochs=recipe.epochs)
            feats = collect_features(model, x_dev, y_dev, correct, percentile=percentile, progress=lo,
                                     batch_size=recipe.batch_size, device=device, generator=generator)
            feats.progress = torch.randint(lo, hi + 1, (n,), generator=generator)
            parts.append(feats)
            return {"progress_lo": lo, "progress_hi": hi}

    empty_x, empty_y = x[:0], y_noisy[:0]  # nothing to evaluate on: the clean subset is what it trains on
    view = TrainView(x_train=x, y_train=y_noisy, x_clean=empty_x, y_clean=empty_y, x_val=empty_x, y_val=empty_y,
                     x_test=empty_x, y_test=empty_y, classes=[str(c) for c in range(int(y_noisy.max()) + 1)],
                     dataset=dataset)
    result = fit(model, view, Recorder(), recipe=recipe, seed=0, device=device, generator=generator,
                 log=log if log is not None else (lambda line: None), name="mentor's student",
                 remedy="lower student.lr or check the data")
    keys = ("epoch", "train_loss", "train_acc_noisy", "lr", "progress_lo", "progress_hi")
    ids = torch.arange(n)
    return TrainingRecord(features=MentorFeatures.cat(parts), example=ids.repeat(recipe.epochs),
                          epoch=torch.arange(1, recipe.epochs + 1).repeat_interleave(n),
                          history=[{k: row[k] for k in keys} for row in result.history])


def split_examples(n: int, *, holdout: float, generator: torch.Generator) -> Tensor:
    """(n,) bool mask of held-out examples: round(holdout · n) drawn at random."""
    held = torch.zeros(n, dtype=torch.bool)
    held[torch.randperm(n, generator=generator)[: round(holdout * n)]] = True
    return held


# ----------------------------------------------------------------------------- fitting


@contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run the mentor's optimisation single-threaded on CPU. Its tensors are tiny (B x 20): intra-op
    threads only add synchronisation (several times slower on 2 cores shared with other processes)."""
    if device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def fit_mentor(
    mentor: MentorNet,
    features: MentorFeatures,
    *,
    cfg: MentorConfig,
    generator: torch.Generator,
    loss: Literal["bce", "mse"],
) -> dict[str, float]:
    """Fit ``mentor`` to ``features.target`` (official ``training_mentornet/train.py``).

    Adam at ``cfg.fit_lr``, × ``cfg.fit_lr_decay`` every ``cfg.fit_lr_decay_steps`` steps (staircase),
    ``cfg.fit_steps`` steps of ``cfg.fit_batch_size`` rows (consecutive slices of fresh permutations
    from ``generator``: epochs over the data), gradient global norm clipped to 5. ``loss``: ``bce``
    (sigmoid cross-entropy on the logits, for 0/1 targets: DD) or ``mse`` (on the sigmoid outputs,
    for soft targets: PD). Deterministic given ``generator`` (a CPU generator) and the mentor's initial
    weights. Runs on the mentor's device; on CPU single-threaded (:func:`_one_cpu_thread`). Leaves the
    mentor in eval mode.

    Returns {"loss_first", "loss_last" (means over the first / last 100 steps), "steps", "lr_last"}.
    """
    n = len(features)
    if n == 0:
        raise ValueError("fit_mentor: no mentor data")
    if loss not in ("bce", "mse"):
        raise ValueError(f"fit_mentor: loss must be 'bce' or 'mse', got {loss!r}")
    device = next(mentor.parameters()).device
    with _one_cpu_thread(device):
        return _fit(mentor, features.to(device), cfg=cfg, generator=generator, loss=loss, device=device)


def _fit(mentor: MentorNet, data: MentorFeatures, *, cfg: MentorConfig, generator: torch.Generator,
         loss: str, device: torch.device) -> dict[str, float]:
    """:func:`fit_mentor`'s loop, on ``data`` already on ``device``."""
    n = len(data)
    mentor.train()
    params = [p for p in mentor.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.fit_lr, fused=True)  # fused: same update, fewer kernels
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.fit_lr_decay_steps, gamma=cfg.fit_lr_decay)
    batch = min(cfg.fit_batch_size, n)
    history = torch.zeros(cfg.fit_steps, device=device)  # per-step loss, read once at the end
    perm, pos = torch.randperm(n, generator=generator).to(device), 0
    for step in range(cfg.fit_steps):
        if pos + batch > n:  # next pass over the data
            perm, pos = torch.randperm(n, generator=generator).to(device), 0
        idx = perm[pos : pos + batch]
        pos += batch
        logits = mentor.logits(data.loss[idx], data.loss_diff[idx], data.label[idx], data.progress[idx])  # (B,)
        target = data.target[idx]
        if loss == "bce":
            objective = F.binary_cross_entropy_with_logits(logits, target)
        else:  # official: l2_loss(sigmoid - v*) * 2 / B = mean squared error
            objective = F.mse_loss(torch.sigmoid(logits), target)
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP_NORM)
        optimizer.step()
        scheduler.step()
        history[step] = objective.detach()
    mentor.eval()
    h = history.cpu()
    k = min(100, cfg.fit_steps)
    return {"loss_first": float(h[:k].mean()), "loss_last": float(h[-k:].mean()), "steps": float(cfg.fit_steps),
            "lr_last": float(optimizer.param_groups[0]["lr"])}


@torch.no_grad()
def predict(mentor: MentorNet, features: MentorFeatures, *, batch_size: int = 65536) -> Tensor:
    """The mentor's weights v (N,) float32 on CPU for every row of ``features``."""
    device = next(mentor.parameters()).device
    was_training = mentor.training
    mentor.eval()
    out = []
    try:
        for s in range(0, len(features), batch_size):
            part = features.select(slice(s, s + batch_size)).to(device)
            out.append(mentor(part.loss, part.loss_diff, part.label, part.progress).float().cpu())
    finally:
        mentor.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def mean_abs_error(mentor: MentorNet, features: MentorFeatures) -> float:
    """mean |v − v*| over the rows of ``features`` (how well a PD mentor follows its curriculum)."""
    return float((predict(mentor, features) - features.target).abs().mean())


def detection_auroc(mentor: MentorNet, features: MentorFeatures) -> float:
    """AUROC of the mentor's weight as a detector of corrupted labels (target < 0.5), via
    :func:`labelnoise.metrics.detection_quality` (a low weight means "corrupted"; NaN if one class)."""
    from labelnoise.metrics import detection_quality

    v = predict(mentor, features).numpy()
    return detection_quality(v, features.target.numpy() < 0.5, threshold=0.5)["auroc"]


@torch.no_grad()
def weight_rise(mentor: MentorNet, *, loss: Tensor, l_pt: float, progress: Sequence[int] = (10, 50, 90)) -> float:
    """How far the mentor's weight rises with the loss, the largest max_j (v_j − min_{i≤j} v_i) along the losses
    ``loss`` (L,) increasing, with the moving percentile at ``l_pt``, over the ``progress`` values and every label:
    0 for a curriculum (a higher loss never weighs more). Needs no truth. A DD mentor learnt where its recording
    student could not tell clean labels from wrong ones (a copy with most labels wrong) has given a band around
    l_pt more weight than the low losses below it, which it never saw."""
    device = next(mentor.parameters()).device
    loss = loss.float().sort().values.to(device)  # (L,)
    rise = 0.0
    for p in progress:
        for c in range(mentor.num_classes if mentor.use_label else 1):
            v = mentor(loss, loss - l_pt, torch.full(loss.shape, c, dtype=torch.int64, device=device),
                       torch.full(loss.shape, int(p), dtype=torch.int64, device=device)).float()  # (L,)
            rise = max(rise, float((v - torch.cummin(v, dim=0).values).max()))
    return rise


@torch.no_grad()
def weight_map(mentor: MentorNet, *, loss: Tensor, loss_diff: Tensor, progress: int,
               label: int | None = None) -> np.ndarray:
    """The mentor's weight over a (loss_diff (D,) x loss (L,)) grid at one progress: (D, L) array.

    ``label=None`` averages over all classes (a DD mentor's weight depends on the label).
    """
    device = next(mentor.parameters()).device
    dd, ll = torch.meshgrid(loss_diff.float(), loss.float(), indexing="ij")  # (D, L) each
    labels = range(mentor.num_classes) if label is None else [label]
    total = torch.zeros(dd.shape)
    for c in labels:
        feats = MentorFeatures(loss=ll.reshape(-1), loss_diff=dd.reshape(-1),
                               label=torch.full((dd.numel(),), c, dtype=torch.int64),
                               progress=torch.full((dd.numel(),), progress, dtype=torch.int64),
                               target=torch.zeros(dd.numel()))
        total += predict(mentor, feats.to(device)).reshape(dd.shape)
    return (total / len(labels)).numpy()


# ----------------------------------------------------------------------------- files


def save_mentor(path: str | Path, mentor: MentorNet, *, cfg: MentorConfig, num_classes: int,
                info: dict[str, Any], dd_transition: np.ndarray | None = None) -> Path:
    """Write {state_dict, config (the mentor params as a dict, settled), num_classes, info, dd_transition (the
    estimated channel a DD mentor's copy was corrupted with, else None)} atomically: what a student needs of its
    mentor, so that it reads no mentor param itself."""
    record = {
        "state_dict": {k: v.detach().cpu().clone() for k, v in mentor.state_dict().items()},
        "config": dataclasses.asdict(cfg),
        "num_classes": int(num_classes),
        "info": info,
        "dd_transition": None if dd_transition is None else np.asarray(dd_transition, dtype=np.float64).tolist(),
    }
    return save_torch(path, record)


NO_MENTOR = "the student's method uses no mentor"


def save_no_mentor(path: str | Path) -> Path:
    """Write the record of no mentor (the student's method uses none): the same bytes whatever the mentor params,
    so that a change to them leaves such a student's stage up to date."""
    return save_torch(path, {"state_dict": None, "config": None, "info": {"note": NO_MENTOR}})


# What a mentor saved before these params were added was learnt and used with (its record lacks them).
BEFORE_PARAMS = {"label_input": "noisy", "dd_max_rise": 1.0, "dd_fallback_rate": 0.2}


def read_mentor(path: str | Path, device: torch.device | str = "cpu") -> tuple[MentorNet, MentorConfig,
                                                                                 np.ndarray | None]:
    """(the mentor written by :func:`save_mentor`, in eval mode on ``device``; its params; the DD copy's channel)."""
    from labelnoise.io import read_torch

    remedy = "run the pretrain_mentor stage (dvc repro pretrain_mentor)"
    record = read_torch(path, remedy=remedy)
    if record.get("state_dict") is None and record.get("config") is None:
        raise ValueError(f"{path} holds no mentor ({NO_MENTOR} when it was written): {remedy}")
    try:
        cfg = MentorConfig(**{**BEFORE_PARAMS, **record["config"]})
        mentor = MentorNet.from_config(cfg, num_classes=int(record["num_classes"]))
        mentor.load_state_dict(record["state_dict"])
    except Exception as e:  # truncated file, another format, missing keys, wrong shapes
        first = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(f"{path}: not a valid MentorNet file ({type(e).__name__}: {first}); "
                         "re-run the pretrain_mentor stage") from None
    t = record.get("dd_transition")
    return mentor.to(device).eval(), cfg, None if t is None else np.asarray(t, dtype=np.float64)


def load_mentor(path: str | Path, device: torch.device | str = "cpu") -> MentorNet:
    """Rebuild a mentor written by :func:`save_mentor`, in eval mode on ``device``."""
    return read_mentor(path, device)[0]


def student_mentor(path: str | Path, device: torch.device | str = "cpu") -> tuple[MentorNet, MentorConfig,
                                                                                    np.ndarray | None]:
    """:func:`read_mentor` for a student: its params must be settled (stage pretrain_mentor settles the ``auto``
    ones from the noise estimate), else one line."""
    mentor, cfg, channel = read_mentor(path, device)
    if cfg.percentile == "auto":
        raise ValueError(f"{path}: its mentor.percentile is still auto (written before the noise estimate settled "
                         "it): re-run the pretrain_mentor stage")
    return mentor, cfg, channel
