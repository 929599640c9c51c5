"""Method ``mentormix``: MentorMix (Jiang et al., ICML 2020, "Beyond Synthetic Noise"): the MentorNet's weights pick
each example's mixup partner (importance sampling inside the mini-batch) and mixing ratio, and may weight the
mixed examples' losses again.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labelnoise import auto
from labelnoise.engine.mixmatch import beta_draw
from labelnoise.mentornet import MovingPercentile
from labelnoise.methods.base import Method, register
from labelnoise.methods.spade import SpadeParams, SpadeTask, burn_in_note, mentor_task
from labelnoise.schema import rng


# ----------------------------------------------------------------------------- params (block `student.mentormix`)
@dataclass(frozen=True)
class MentorMixParams:
    """The mixing. The mentor's weighting (burn-in, refits, ``weight_norm`` for the second reweighting) is SPADE's
    block ``student.spade``, shared: :class:`MentorMixSettings` joins the two."""

    mixup_alpha: float | Literal["auto"] = rng(0.0, 1000.0, lo_open=True)  # λ ~ Beta(α, α), λ = max(λ, 1 - λ)
    mix_temperature: float = rng(0.0, 1000.0, lo_open=True)  # partners drawn from softmax(v / T) (official: T = 1)
    second_reweight: bool | Literal["auto"]  # weight the mixed examples' losses by the mentor again


@dataclass(frozen=True)
class MentorMixSettings(MentorMixParams, SpadeParams):
    """What the task reads: ``student.spade`` (the weighting) and ``student.mentormix`` (the mixing)."""


# ---- auto settings from the noise estimate (labelnoise.auto): the official MentorMix CIFAR-10 settings (Jiang et al.
# 2020, its code's run scripts) at the noise level nearest the estimated rate
LEVELS = (0.2, 0.4, 0.6, 0.8)
MIXUP_ALPHA = (2.0, 8.0, 8.0, 4.0)
SECOND_REWEIGHT = (False, False, True, True)


def nearest_level(rate: float) -> int:
    """The index of the official noise level nearest ``rate``."""
    return int(np.argmin([abs(rate - level) for level in LEVELS]))


auto.rule("student.mentormix.mixup_alpha", "the official MentorMix alpha at the nearest noise level (2/8/8/4)",
          lambda estimate, cfg: MIXUP_ALPHA[nearest_level(estimate.rate)])
auto.rule("student.mentormix.second_reweight", "on at the nearest official level 60 or 80 %",
          lambda estimate, cfg: SECOND_REWEIGHT[nearest_level(estimate.rate)])


def mentor_mix(x: Tensor, y: Tensor, v: Tensor, *, alpha: float, temperature: float,
               generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """MentorMix's "sample" and "mixup" steps (Jiang et al. 2020, Alg. 1; official ``mentor_mix_up``).

    x: (B, C, H, W) images (any dtype), y: (B, K) float label distributions (one-hot), v: (B,) mentor weights.
    Each example i draws a partner j ~ softmax(v / T) over the batch (importance sampling, with replacement,
    so examples the mentor trusts are picked more often), and λ_i ~ Beta(α, α), λ_i = max(λ_i, 1 − λ_i);
    λ_i is kept where v_i >= 0.5 and replaced by 1 − λ_i otherwise, so a trusted example dominates its own
    mix and a distrusted one is mostly replaced by its partner. Returns (x̃ = λ·x + (1 − λ)·x_j float32,
    ỹ = λ·y + (1 − λ)·y_j (B, K), λ (B,), partner index j (B,)). All randomness comes from ``generator``.
    """
    b = x.shape[0]
    probs = torch.softmax(v.float() / temperature, dim=0)  # (B,)
    partner = torch.multinomial(probs, b, replacement=True, generator=generator)  # (B,)
    lam = beta_draw(alpha, b, generator=generator, device=v.device)  # (B,)
    lam = torch.maximum(lam, 1.0 - lam)
    lam = torch.where(v >= 0.5, lam, 1.0 - lam)  # (B,)
    lam_x = lam.view(b, *([1] * (x.dim() - 1)))  # (B, 1, 1, 1)
    xf = x.float()
    x_mix = lam_x * xf + (1.0 - lam_x) * xf[partner]  # (B, C, H, W)
    y_mix = lam[:, None] * y + (1.0 - lam[:, None]) * y[partner]  # (B, K)
    return x_mix, y_mix, lam, partner


@contextmanager
def _batch_stats_only(model: nn.Module) -> Iterator[None]:
    """Batch norm uses the batch's statistics without updating its running averages (train mode only).

    MentorMix's first forward pass only measures losses for the mentor; as in the official code (whose
    running averages are updated by the mixed pass alone), the running statistics describe the inputs
    the network is trained on.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in norms:
            m.track_running_stats = True


class MentorMixTask(SpadeTask):
    """Method ``mentormix`` (Jiang et al. 2020, "Beyond Synthetic Noise", Alg. 1; official
    ``cifar_train_mentormix.py``): weight, sample, mixup, weight again.

    One mini-batch (``__call__``):
      weight: forward with no gradient → per-example cross-entropy l (B,) on the noisy labels → v as SPADE
        (:meth:`SpadeTask.mentor_weights`: l_pt, burn-in v ~ Bernoulli(``burn_in_keep``), mentor, sampling
        layer). v only steers the mixing: the official code never puts v·l into the loss.
      sample + mixup: :func:`mentor_mix` with ``student.mentormix.mixup_alpha`` and ``mix_temperature``.
      forward/loss on the mixed batch: l̃ (B,) = cross-entropy against the soft mixed labels;
        loss = mean l̃ (official ``reduce_mean``), or with ``student.mentormix.second_reweight``:
      weight again: v2 = mentor weights of l̃ with their own moving percentile (same p and decay; official
        avg_name "mixed"), the label input being the mixed example's dominant label (the official code feeds
        label 0 to both calls), and loss = Σ v2·l̃ / B (``weight_norm: batch``, official) or / Σ v2 (``sum``).
    The official code drops weight decay under second_reweight (its regulariser collection is empty there);
    here the optimiser's weight decay always applies (the presets set 0 where the official run had none).
    Mentor refits (``student.spade.mentor_update``) work as for SPADE on the first weighting's inputs.
    """

    def __init__(self, mentor: nn.Module, **kwargs: Any) -> None:
        super().__init__(mentor, **kwargs)
        auto.refuse_unsettled(self.cfg, "student.mentormix", ("mixup_alpha", "second_reweight"))
        self.mix_percentile = MovingPercentile.from_config(self.mentor_cfg, num_classes=self.num_classes)

    def __call__(self, model: nn.Module, xb: Tensor, yb: Tensor, *, step: int,
                 idx: Tensor | None = None) -> dict[str, Tensor]:
        ls = self.label_smoothing
        # ---- weight: losses of the batch as it is; no gradient (official: stop_gradient on loss and logits)
        with torch.no_grad(), _batch_stats_only(model):
            logits = model(xb)  # (B, K)
        loss = F.cross_entropy(logits.float(), yb, reduction="none", label_smoothing=ls)  # (B,)
        v_all, diff_all, parts_all, own = self.global_weights(loss, yb, step=step, percentile=self.percentile,
                                                              idx=idx)
        v, loss_diff, parts = v_all[own], diff_all[own], {k: t[own] for k, t in parts_all.items()}

        # ---- sample + mixup (no gradient into v, λ or the partners)
        onehot = F.one_hot(yb, logits.shape[1]).float()  # (B, K)
        x_mix, y_mix, lam, partner = mentor_mix(xb, onehot, v, alpha=self.cfg.mixup_alpha,
                                                temperature=self.cfg.mix_temperature, generator=self.generator)
        if xb.is_contiguous(memory_format=torch.channels_last) and not xb.is_contiguous():
            x_mix = x_mix.contiguous(memory_format=torch.channels_last)

        # ---- forward on the mixed batch, soft-label cross-entropy
        mixed = F.cross_entropy(model(x_mix).float(), y_mix, reduction="none", label_smoothing=ls)  # (B,)
        if self.cfg.second_reweight:  # ---- weight again
            dominant = torch.where(lam >= 0.5, yb, yb[partner])  # (B,) label of the larger share
            v2, _, _, own2 = self.global_weights(mixed.detach(), dominant, step=step, percentile=self.mix_percentile,
                                                 remember=False)
            total, parts["mix_weight"] = self.weighted_mean(v2, mixed, own2), v2[own2]
        else:
            total = mixed.mean()
        return {"loss": total, "logits": logits, "per_example": loss, "loss_diff": loss_diff, "weight": v, **parts}

    def summary(self) -> dict[str, float]:
        """SPADE's extras, plus the second weighting's l_pt when it is on."""
        extra = {"l_pt_mix": float(self.mix_percentile.value)} if self.cfg.second_reweight else {}
        return {**super().summary(), **extra}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "mix_percentile": self.mix_percentile.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.mix_percentile.load_state_dict(state["mix_percentile"])


METHOD = register(Method(
    name="mentormix", order=30, display="MentorMix", uses_mentor=True, scores_labels=True, params=MentorMixParams,
    shares=("spade", MentorMixSettings), note=burn_in_note,
    summary="MentorNet weights steer mixup partners and ratios, then weight the mix again",
    task=lambda ctx: mentor_task(MentorMixTask, ctx),
))
