"""Method ``dividemix``: DivideMix (Li, Socher and Hoi, ICLR 2020, "Learning with Noisy Labels as Semi-supervised
Learning"; official code github.com/LiJunnan1992/DivideMix, ``Train_cifar.py``): two networks; each epoch a
two-component Gaussian mixture on each network's per-example losses divides the data *for the other network* into
a labelled set (likely clean) and an unlabelled set; each network then trains on the two sets with MixMatch
(label co-refinement, label co-guessing, sharpening, mixup) and a prior penalty. The prediction is the two
networks' mean (:class:`labelnoise.models.Ensemble`).

Deviations from the official code, each named here and in docs/methods.md:
- both networks take their step on the same mini-batch, one after the other in one optimiser step (official: a
  whole epoch of network 1, then one of network 2); each still uses the division of the other and the other in
  eval mode for co-guessing;
- a mini-batch is one slice of the epoch's permutation, split into its labelled and unlabelled examples (official:
  a labelled batch of B and an unlabelled batch of B, the unlabelled loader cycled), so an epoch sees every
  example once and the labelled share of a batch varies;
- the warm-up trains both networks on the same batches (official: each its own shuffle);
- the trusted subset (``student.include_trusted``) is always labelled with clean probability 1 and stays out of
  the mixture fits;
- with ``view_augment: none`` there is one view (the official two crops + flips of an image are then equal): its guesses
  average one view, and the mix holds each image once.
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
from labelnoise.engine import Task, predict_logits
from labelnoise.engine import mixmatch as mm
from labelnoise.methods.base import Method, MethodContext, register
from labelnoise.runtime import derived_seed, resolve_channels_last, resolve_precision
from labelnoise.schema import rng

GMM = dict(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4)  # the official mixture fit


# ----------------------------------------------------------------------------- params (block `student.dividemix`)
@dataclass(frozen=True)
class DivideMixParams:
    warm_up: int = rng(1, 10_000)  # epochs of cross-entropy on every label before the first division (official
    #                                CIFAR-10: 10 of 300 epochs)
    confidence_penalty: bool | Literal["auto"]  # the warm-up also penalises confident predictions (negative
    #                                             entropy; official: for asymmetric noise only)
    p_threshold: float | Literal["auto"] = rng(0.0, 1.0)  # labelled where the other network's clean probability > τ
    lambda_u: float | Literal["auto"] = rng(0.0, 1e6)  # weight of the unlabelled (guessing) loss
    rampup_epochs: float = rng(0.0)  # λ_u ramps linearly from 0 over this many epochs after the warm-up (official 16)
    temperature: float = rng(0.0, 100.0, lo_open=True)  # sharpening T of the guesses (official 0.5)
    mixup_alpha: float = rng(0.0, 1000.0, lo_open=True)  # λ ~ Beta(α, α), λ = max(λ, 1 − λ) (official 4)
    loss_history: int | Literal["auto"] = rng(1, 1000)  # the mixture fits the mean normalised loss of the last N
    #                                                     epochs (official: 5 at 90 % noise, else 1)
    view_augment: Literal["none", "crop_flip"]  # the two views of every image (official: crop + flip; the padding
    #                                            is train.crop_padding, official 4)


# ---- auto settings from the noise estimate: the official per-level settings (DivideMix, appendix B, Table 7; the
# authors' replies in LiJunnan1992/DivideMix issues 10 and 50: τ = 0.6 and five-epoch loss averaging at 90 %)
LEVELS = (0.2, 0.5, 0.8, 0.9)
LAMBDA_U = {10: (0.0, 25.0, 25.0, 50.0), 100: (25.0, 150.0, 150.0, 150.0)}  # CIFAR-10, CIFAR-100; asymmetric: 0
P_THRESHOLD = (0.5, 0.5, 0.5, 0.6)
LOSS_HISTORY = (1, 1, 1, 5)


def _level(estimate: auto.NoiseEstimate) -> int:
    return int(np.argmin([abs(estimate.rate - level) for level in LEVELS]))


def _lambda_u(estimate: auto.NoiseEstimate, cfg: Any) -> float:
    if estimate.structured:
        return 0.0  # CIFAR-10, 40 % asymmetric
    return LAMBDA_U[100 if estimate.num_classes >= 100 else 10][_level(estimate)]


auto.rule("student.dividemix.lambda_u", "the official lambda_u at the nearest level 20/50/80/90 % (CIFAR-10: "
          "0/25/25/50, 100 classes: 25/150/150/150); 0 for structured noise", _lambda_u)
auto.rule("student.dividemix.p_threshold", "the official tau at the nearest level (0.6 at 90 %, else 0.5)",
          lambda estimate, cfg: 0.5 if estimate.structured else P_THRESHOLD[_level(estimate)])
auto.rule("student.dividemix.loss_history", "5 epochs of losses at the nearest level 90 %, else 1 (official)",
          lambda estimate, cfg: 1 if estimate.structured else LOSS_HISTORY[_level(estimate)])
auto.rule("student.dividemix.confidence_penalty", "on for structured (asymmetric) noise (official)",
          lambda estimate, cfg: estimate.structured)


@contextmanager
def _eval_mode(net: nn.Module) -> Iterator[None]:
    """``net`` in eval mode for a forward pass (the other network's guesses, official ``net2.eval()``)."""
    was = net.training
    net.eval()
    try:
        yield
    finally:
        net.train(was)


class DivideMixTask(Task):
    """One mini-batch for both networks of an :class:`~labelnoise.models.Ensemble` of two (module docstring).

    Warm-up (the first ``warm_up`` epochs): each network's cross-entropy on the given labels of its view, plus the
    negative entropy with ``confidence_penalty``. After the warm-up, for network k with the other network o:
      divide: labelled ⇔ the clean probability w from o's mixture > τ (trusted examples: w = 1);
      co-refine: labelled targets = sharpen(w·onehot(ỹ) + (1 − w)·mean softmax of k on the views, T);
      co-guess: unlabelled targets = sharpen(mean softmax of k (train mode) and o (eval mode) on the views, T);
      mix: :func:`labelnoise.engine.mixmatch.mix` of all views with their targets (α);
      loss_k = Lx (soft cross-entropy, labelled) + λ_u·ramp·Lu (squared error, unlabelled) + prior penalty.
    The step minimises loss_0 + loss_1 (the networks share no weights, so each gets its own gradient).
    :meth:`end_epoch` refits the division from each network's losses in eval mode. The records' weight is the mean
    clean probability of the two divisions (1 during the warm-up), a label-quality score.
    """

    weighted = True

    def __init__(self, cfg: DivideMixParams, *, x: Tensor, labels: Tensor, n_noisy: int, num_classes: int,
                 steps_per_epoch: int, seed: int, eval_batch_size: int, device: torch.device, crop_padding: int = 4,
                 autocast_dtype: torch.dtype | None = None, channels_last: bool = False) -> None:
        super().__init__()
        auto.refuse_unsettled(cfg, "student.dividemix", ("p_threshold", "lambda_u", "loss_history",
                                                         "confidence_penalty"))
        self.cfg, self.x, self.labels, self.n_noisy = cfg, x, labels, n_noisy
        self.num_classes, self.steps_per_epoch, self.seed = num_classes, steps_per_epoch, seed
        self.crop_padding = crop_padding
        self.eval = dict(batch_size=eval_batch_size, device=device, autocast_dtype=autocast_dtype,
                         channels_last=channels_last)
        n = x.shape[0]
        self.prob = torch.ones(2, n, device=device)  # (2, N) clean probability of each network's division
        self.history = torch.zeros(2, 0, n_noisy)  # (2, L, n_noisy) the last normalised losses (CPU)
        self.divided = False
        self.generator = torch.Generator().manual_seed(derived_seed(seed, "dividemix"))  # views, mixing

    # ---- one mini-batch
    def __call__(self, model: nn.Module, xb: Tensor, yb: Tensor, *, step: int,
                 idx: Tensor | None = None) -> dict[str, Tensor]:
        assert idx is not None, "DivideMix needs the batch's positions"
        members = model.members
        views = mm.views(self.x, idx, xb, augment=self.cfg.view_augment, padding=self.crop_padding,
                         generator=self.generator)
        if not self.divided:
            return self._warm_up(members, views, yb)
        weight = mm.ramp(step / self.steps_per_epoch, start=self.cfg.warm_up, length=self.cfg.rampup_epochs)
        weight *= self.cfg.lambda_u
        onehot = F.one_hot(yb, self.num_classes).float()  # (B, K)
        total, parts, logits = 0.0, {"lx": 0.0, "lu": 0.0, "penalty": 0.0}, None
        for k in (0, 1):
            net, other = members[k], members[1 - k]
            w = self.prob[1 - k][idx]  # (B,) the other network's clean probability
            lab = w > self.cfg.p_threshold  # (B,)
            own, first = mm.mean_softmax(net, views)  # (B, K) train mode, as the official code
            if logits is None:  # network 0 on the first view: the train accuracy, the loss records
                logits = first
            theirs = own[:0]
            if (~lab).any():
                with _eval_mode(other):
                    theirs = mm.mean_softmax(other, [v[~lab] for v in views])[0]
            guess = mm.sharpen((own[~lab] + theirs) / 2, self.cfg.temperature)  # (U, K) co-guessing
            refined = mm.sharpen(w[lab, None] * onehot[lab] + (1 - w[lab, None]) * own[lab],
                                 self.cfg.temperature)  # (L, K) co-refinement
            out = mm.mixmatch_loss(net, views, lab, refined, guess, alpha=self.cfg.mixup_alpha, lambda_u=weight,
                                   generator=self.generator)
            total = total + out["loss"]
            parts = {key: parts[key] + out[key] / 2 for key in parts}
        score = self.prob[:, idx].mean(dim=0)  # (B,)
        labelled = (self.prob[:, idx] > self.cfg.p_threshold).float().mean()
        return {"loss": total, "logits": logits, "per_example": F.cross_entropy(logits, yb, reduction="none"),
                "weight": score, **parts, "labelled": labelled,
                "lambda_u": torch.tensor(float(weight), device=yb.device)}

    def _warm_up(self, members: nn.ModuleList, views: list[Tensor], yb: Tensor) -> dict[str, Tensor]:
        total, logits_all = 0.0, []
        for k in (0, 1):
            logits = members[k](views[k % len(views)]).float()  # (B, K): each network its own view
            loss = F.cross_entropy(logits, yb)
            if self.cfg.confidence_penalty:  # − entropy: penalise confident predictions (asymmetric noise)
                p = torch.softmax(logits, dim=1)
                loss = loss + (p * torch.log(p.clamp_min(1e-12))).sum(dim=1).mean()
            total = total + loss
            logits_all.append(logits.detach())
        mean = torch.stack(logits_all).mean(dim=0)
        zero = torch.zeros((), device=yb.device)
        return {"loss": total, "logits": mean, "per_example": F.cross_entropy(mean, yb, reduction="none"),
                "weight": torch.ones_like(yb, dtype=torch.float32), "lx": total.detach() / 2, "lu": zero,
                "penalty": zero, "labelled": torch.ones((), device=yb.device), "lambda_u": zero}

    # ---- the division, after every epoch from the end of the warm-up on
    def end_epoch(self, model: nn.Module, *, epoch: int) -> dict[str, float]:
        """Refit both divisions (the history's ``labelled`` is the share of each batch a division labels)."""
        if epoch < self.cfg.warm_up:
            return {}
        from sklearn.mixture import GaussianMixture

        n = self.n_noisy
        labels = self.labels[:n].cpu()
        losses = []
        for member in model.members:
            logits = predict_logits(member, self.x[:n], **self.eval)  # (n, K) eval mode, no augmentation
            loss = F.cross_entropy(logits, labels, reduction="none")  # (n,)
            losses.append((loss - loss.min()) / (loss.max() - loss.min()).clamp_min(1e-12))
        self.history = torch.cat([self.history, torch.stack(losses)[:, None]], dim=1)[:, -self.cfg.loss_history:]
        for k in (0, 1):
            fitted = self.history[k].mean(dim=0).double().numpy().reshape(-1, 1)  # (n, 1)
            gmm = GaussianMixture(**GMM, random_state=derived_seed(self.seed, f"dividemix.gmm.{epoch}.{k}") % 2**31)
            gmm.fit(fitted)
            clean = gmm.predict_proba(fitted)[:, int(np.argmin(gmm.means_.ravel()))]  # the low-loss component
            self.prob[k, :n] = torch.as_tensor(clean, dtype=torch.float32, device=self.prob.device)
        self.divided = True
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"prob": self.prob.cpu(), "history": self.history, "divided": self.divided,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.prob = state["prob"].to(self.prob.device)
        self.history, self.divided = state["history"], bool(state["divided"])
        self.generator.set_state(state["generator"])


def _task(ctx: MethodContext) -> DivideMixTask:
    if not hasattr(ctx.model, "members") or len(ctx.model.members) != 2:
        raise ValueError("student.method dividemix trains an Ensemble of two networks (create_model(..., members=2))")
    data, recipe = ctx.data, ctx.recipe
    return DivideMixTask(ctx.params, x=data.x_train, labels=data.y_train, n_noisy=data.n_noisy,
                         num_classes=data.num_classes, steps_per_epoch=ctx.steps_per_epoch, seed=ctx.seed,
                         eval_batch_size=recipe.eval_batch_size, device=ctx.device, crop_padding=recipe.crop_padding,
                         autocast_dtype=resolve_precision(recipe.precision, ctx.device),
                         channels_last=resolve_channels_last(recipe.channels_last, ctx.device))


def warm_up_note(params: Mapping[str, Any], epoch: int, epochs: int) -> str:
    """The records of a warm-up epoch: no division yet, every weight is 1."""
    return "warm-up: no division yet (weight 1)" if epoch <= int(params.get("warm_up", 0)) else ""


METHOD = register(Method(
    name="dividemix", order=40, display="DivideMix", scores_labels=True, networks=2, params=DivideMixParams,
    summary="two networks divide the data for each other by a loss mixture, then MixMatch on the division",
    note=warm_up_note, task=_task,
))
