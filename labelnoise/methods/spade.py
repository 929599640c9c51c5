"""Method ``spade``: MentorNet (Jiang et al., ICML 2018, Alg. 1 "SPADE"). A mentor network weights every example
of the student's mini-batch from its loss, the loss's distance to a moving percentile, its (noisy) label and the
training progress; after a burn-in of example dropout the student minimises the weighted loss, and the mentor
may be refitted during training.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labelnoise import distributed
from labelnoise.engine import Task
from labelnoise.mentornet import (
    MentorConfig,
    MentorFeatures,
    MovingPercentile,
    collect_features,
    curriculum,
    fit_mentor,
    progress_percent,
)
from labelnoise.mentornet.pretrain import dd_copy
from labelnoise.methods.base import Method, MethodContext, register
from labelnoise.runtime import STREAMS, derived_seed
from labelnoise.schema import rng


# ----------------------------------------------------------------------------- params (block `student.spade`)
@dataclass(frozen=True)
class SpadeParams:
    burn_in: float = rng(0.0, 1.0)  # first fraction of training: v ~ Bernoulli(burn_in_keep), no mentor
    burn_in_keep: float = rng(0.0, 1.0)  # keep probability during burn-in (example dropout)
    fixed_progress: bool  # after burn-in the mentor sees the progress at its end (official DD scripts:
    #   fixed_epoch_after_burn_in), not the current one
    weight_norm: Literal["batch", "sum"]  # Σ v·l / B (the paper, official code) or Σ v·l / Σ v
    sample_weights: bool  # probabilistic sampling layer, v <- Bernoulli(v)
    mentor_update: Literal["none", "lr_change", "every_k"]  # when the mentor is refitted during training
    mentor_update_every: int = rng(1)  # every_k: epochs between refits
    mentor_update_steps: int = rng(1)  # Adam steps of one refit (mentor.fit_* settings otherwise)
    mentor_update_batches: int = rng(1)  # pd mentor: a refit fits the curriculum on the last N mini-batches
    mentor_update_lr_drop: float = rng(0.0, 1.0, lo_open=True)  # lr_change on a continuous schedule: refit when
    #                                        the lr falls below this fraction of the lr at the previous refit


class _RecentBatches:
    """Ring buffer of the mentor inputs of the last ``capacity`` mini-batches (PD refits fit on them).

    Rows are mini-batches, padded with NaN losses when a batch is short; lives on the training device.
    """

    def __init__(self, capacity: int, batch_size: int, device: torch.device) -> None:
        self.loss = torch.full((capacity, batch_size), math.nan, device=device)  # (R, B)
        self.loss_diff = torch.full((capacity, batch_size), math.nan, device=device)  # (R, B)
        self.label = torch.zeros((capacity, batch_size), dtype=torch.int64, device=device)  # (R, B)
        self.progress = torch.zeros(capacity, dtype=torch.int64)  # (R,) on the CPU: Python ints written
        self.count = 0  # mini-batches written so far

    def add(self, loss: Tensor, loss_diff: Tensor, label: Tensor, progress: int) -> None:
        r, b = self.count % self.loss.shape[0], loss.shape[0]
        self.loss[r].fill_(math.nan)
        self.loss[r, :b] = loss
        self.loss_diff[r, :b] = loss_diff
        self.label[r, :b] = label
        self.progress[r] = progress
        self.count += 1

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(loss, loss_diff, label, progress), each (M,), the examples of the buffered batches."""
        rows = min(self.count, self.loss.shape[0])
        loss = self.loss[:rows]  # (rows, B)
        seen = ~torch.isnan(loss)
        progress = self.progress[:rows].to(loss.device)[:, None].expand_as(loss)
        return loss[seen], self.loss_diff[:rows][seen], self.label[:rows][seen], progress[seen]

    def state_dict(self) -> dict[str, Any]:
        return {"loss": self.loss.cpu(), "loss_diff": self.loss_diff.cpu(), "label": self.label.cpu(),
                "progress": self.progress.clone(), "count": self.count}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name in ("loss", "loss_diff", "label"):
            getattr(self, name).copy_(state[name])
        self.progress.copy_(state["progress"])
        self.count = int(state["count"])


class SpadeTask(Task):
    """Method ``spade`` (MentorNet, Jiang et al. 2018, Alg. 1 "SPADE"): the mentor weights every example of
    the student's mini-batch, and (optionally) is refitted during training.

    One mini-batch (``__call__``):
      forward → per-example cross-entropy l (B,) on the noisy labels
      → l_pt ← EMA of the p-th percentile of l (``mentor.percentile``, ``mentor.ema_decay``; updated first,
        then used, as the official ``mentornet()`` does)
      → v = mentor(l, l − l_pt, noisy label, progress %) with no gradient into the mentor
        (progress = percent of all training steps done, 0..99, as the official ``epoch_step``)
      → optional probabilistic sampling layer: v ← Bernoulli(v) (``student.sample_weights``)
      → loss = Σ v·l / Σ v (``student.weight_norm: sum``, the default) or Σ v·l / B (``batch``).
    ``batch`` is the paper's objective and the official code (``reduce_mean(loss * v)`` in
    cifar_train_mentornet.py): a batch the mentor mostly rejects moves the student less, so with a mean weight
    of ~0.6 the effective learning rate is ~0.6x that of the CE baseline. ``sum`` keeps the baseline's step
    size for the examples the mentor keeps.
    Burn-in: for the first ``student.burn_in`` fraction of the steps, v ~ Bernoulli(``burn_in_keep``) per
    example (example dropout) and the mentor is not called; l_pt keeps updating.
    Weight decay is the optimiser's own (the official code scales it by Σv/B; we do not).

    Mentor updates (``after_step``, at the cadence ``student.mentor_update``; never during burn-in, never
    after the last step): ``every_k`` every ``mentor_update_every`` epochs; ``lr_change`` when a multistep
    milestone lowers the lr, or on other schedules when the lr falls below ``mentor_update_lr_drop`` times the lr
    of the previous refit (the highest lr so far before the first one), at most once per epoch. A refit runs
    ``student.mentor_update_steps`` Adam steps of :func:`labelnoise.mentornet.fit_mentor`:
      - PD: towards its curriculum ``mentor.curriculum`` on the mentor inputs of the last
        ``student.mentor_update_batches`` mini-batches (MSE);
      - DD: on the trusted clean subset with a copy of its labels corrupted by ``mentor.dd_noise_*`` (so which
        labels are wrong is known), the features measured with the current student (BCE).
    All randomness comes from generators derived from ``seed`` and saved in ``state_dict``.
    """

    weighted = True

    def __init__(
        self,
        mentor: nn.Module,
        *,
        cfg: SpadeParams,  # the method's params block
        recipe: Any,  # the training recipe (batch size, schedule, label smoothing)
        mentor_cfg: MentorConfig,
        total_steps: int,
        steps_per_epoch: int,
        device: torch.device,
        seed: int,
        num_classes: int,
        clean: tuple[Tensor, Tensor] | None = None,
        dataset: str = "",
        n_noisy: int | None = None,  # train positions from here on are trusted examples (v = 1)
        dd_transition: np.ndarray | None = None,  # the channel of the DD mentor's copy (its record's), for refits
        dd_given: Tensor | None = None,  # the noise source's labels of the trusted subset (the copy, where known)
    ) -> None:
        super().__init__(label_smoothing=recipe.label_smoothing)
        self.mentor = mentor.to(device).eval()  # called under no_grad: the student's backward never reaches it
        self.cfg, self.recipe, self.mentor_cfg = cfg, recipe, mentor_cfg
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        self.device, self.seed, self.num_classes = device, seed, num_classes
        self.n_noisy, self.dd_transition = n_noisy, dd_transition
        self.burn_in_steps = round(cfg.burn_in * total_steps)
        self.percentile = MovingPercentile.from_config(mentor_cfg, num_classes=num_classes)
        self.generator = torch.Generator(device=device).manual_seed(derived_seed(seed, "weighting"))
        self.refits: list[dict[str, float]] = []  # one row per mentor update: step, progress, fit statistics
        self._lr_ref = 0.0  # lr_change: the lr at the previous refit (before the first: the highest lr so far)
        self._recent = (_RecentBatches(cfg.mentor_update_batches, recipe.batch_size, device)
                        if cfg.mentor_update != "none" and mentor_cfg.kind == "pd" else None)
        self._clean = None
        if cfg.mentor_update != "none" and mentor_cfg.kind == "dd":
            if clean is None or clean[0].shape[0] == 0:
                raise ValueError("student.mentor_update with a dd mentor needs the trusted clean subset "
                                 "(data.trusted_size > 0 or data.trusted_file)")
            x, y = clean  # DD's training signal with a known mask: the mentor's own corrupted copy
            noisy = dd_copy(y.cpu().numpy(), mentor_cfg, num_classes=num_classes, dataset=dataset,
                            transition=dd_transition, given=None if dd_given is None else dd_given.cpu().numpy())
            self._clean = x, torch.from_numpy(noisy.labels), torch.from_numpy(~noisy.mask)

    # ---- one mini-batch
    def __call__(self, model: nn.Module, xb: Tensor, yb: Tensor, *, step: int,
                 idx: Tensor | None = None) -> dict[str, Tensor]:
        logits = model(xb)  # (B, K)
        per_example = F.cross_entropy(logits.float(), yb, reduction="none",
                                      label_smoothing=self.label_smoothing)  # (B,)
        loss = per_example.detach()  # (B,) the mentor's input; no gradient flows through v
        v, loss_diff, parts, own = self.global_weights(loss, yb, step=step, percentile=self.percentile, idx=idx)
        return {"loss": self.weighted_mean(v, per_example, own), "logits": logits, "per_example": loss,
                "loss_diff": loss_diff[own], "weight": v[own], **{k: t[own] for k, t in parts.items()}}

    def global_weights(self, loss: Tensor, label: Tensor, *, step: int, percentile: MovingPercentile,
                       remember: bool = True, idx: Tensor | None = None,
                       ) -> tuple[Tensor, Tensor, dict[str, Tensor], slice]:
        """:meth:`mentor_weights` of the whole global mini-batch (under torchrun: every rank's losses and labels,
        gathered, so l_pt, v and the refit inputs are the same on all ranks), and this rank's slice of it. With the
        batch's train positions ``idx``, trusted examples (positions >= ``n_noisy``: include_trusted) get v = 1."""
        loss_all, own = distributed.gather(loss)
        label_all, _ = distributed.gather(label)
        v, loss_diff, parts = self.mentor_weights(loss_all, label_all, step=step, percentile=percentile)
        if idx is not None and self.n_noisy is not None:
            idx_all, _ = distributed.gather(idx)
            v = torch.where(idx_all >= self.n_noisy, torch.ones_like(v), v)  # (B,) their labels are true
        if remember:
            self._remember(loss_all, loss_diff, label_all, step=step)
        return v, loss_diff, parts, own

    def progress(self, step: int) -> int:
        """The progress the mentor is fed at ``step``: percent of training done, or with ``fixed_progress`` at most
        the percent at the end of burn-in."""
        end = self.burn_in_steps if self.cfg.fixed_progress else step
        return progress_percent(min(step, end), self.total_steps)

    @torch.no_grad()
    def mentor_weights(self, loss: Tensor, label: Tensor, *, step: int,
                       percentile: MovingPercentile) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """The weights v (B,) of examples with losses ``loss`` (B,) (detached) and int labels ``label`` (B,).

        Updates ``percentile`` (l_pt) first, then uses it. During burn-in v ~ Bernoulli(``burn_in_keep``) and
        the mentor is not called; after it v = mentor(l, l − l_pt, label, progress %), then the optional
        sampling layer. Returns (v, loss_diff (B,), {"mentor_weight": the mentor's v} after burn-in, else {}).
        """
        with torch.autocast(self.device.type, enabled=False):  # the mentor runs in fp32
            l_pt = percentile.update(loss, label)  # EMA of the batch's p-th percentile, updated then used
            loss_diff = loss - l_pt  # (B,)
            if step < self.burn_in_steps:  # burn-in: example dropout, no mentor
                keep = torch.full_like(loss, self.cfg.burn_in_keep)
                return torch.bernoulli(keep, generator=self.generator), loss_diff, {}  # (B,) 0/1
            progress_b = torch.full_like(label, self.progress(step))  # (B,) int64
            v = self.mentor(loss, loss_diff, label, progress_b).float()  # (B,) in (0, 1)
            parts = {"mentor_weight": v}
            if self.cfg.sample_weights:  # probabilistic sampling layer
                v = torch.bernoulli(v, generator=self.generator)
        return v, loss_diff, parts

    def weighted_mean(self, v: Tensor, per_example: Tensor, own: slice = slice(None)) -> Tensor:
        """Σ v·l / Σ v (``student.weight_norm: sum``) or Σ v·l / B (``batch``, official); v (B,) is a constant.
        Under torchrun v is the global batch's and ``per_example`` this rank's ``own`` part: the sums run over
        the global batch once DistributedDataParallel averages the ranks' gradients (hence × world size)."""
        norm = v.sum().clamp_min(1e-8) if self.cfg.weight_norm == "sum" else v.shape[0]
        return (v[own] * per_example).sum() / norm * distributed.world_size()

    def _remember(self, loss: Tensor, loss_diff: Tensor, label: Tensor, *, step: int) -> None:
        """Keep the batch's mentor inputs for PD refits (only when refits are on)."""
        if self._recent is not None:
            self._recent.add(loss, loss_diff, label, self.progress(step))

    # ---- mentor updates
    def _refit_due(self, *, step: int, lr: float, next_lr: float) -> bool:
        upcoming = step + 1  # the refit happens between `step` and the next one
        due = False
        if self.cfg.mentor_update == "every_k":
            due = upcoming % (self.cfg.mentor_update_every * self.steps_per_epoch) == 0
        elif self.cfg.mentor_update == "lr_change":
            if not self.refits:
                self._lr_ref = max(self._lr_ref, lr)
            if self.recipe.schedule == "multistep":
                due = next_lr < lr
            else:  # at most one refit per epoch: a schedule decaying to 0 would otherwise halve ever faster
                spaced = not self.refits or upcoming - self.refits[-1]["step"] >= self.steps_per_epoch
                due = next_lr < self.cfg.mentor_update_lr_drop * self._lr_ref and spaced
        return due and self.burn_in_steps <= upcoming < self.total_steps

    def after_step(self, model: nn.Module, *, step: int, lr: float, next_lr: float) -> None:
        """Refit the mentor when ``student.mentor_update`` says so (``step`` just finished, 0-based)."""
        if self.cfg.mentor_update != "none" and self._refit_due(step=step, lr=lr, next_lr=next_lr):
            self.refit(model, step=step + 1, lr=next_lr)
            self._lr_ref = next_lr  # lr_change: the next refit waits for the lr to halve again

    def refit(self, model: nn.Module, *, step: int, lr: float) -> dict[str, float]:
        """A few mentor optimisation steps (PD: towards the curriculum; DD: on the corrupted clean copy)."""
        was_training = model.training
        generator = torch.Generator().manual_seed(derived_seed(self.seed, STREAMS["mentor_refit"] + len(self.refits)))
        fit_cfg = dataclasses.replace(self.mentor_cfg, fit_steps=self.cfg.mentor_update_steps)
        progress = progress_percent(step, self.total_steps)
        try:
            if self._recent is not None:  # PD
                loss, loss_diff, label, prog = self._recent.tensors()
                target = curriculum(self.mentor_cfg.curriculum, self.mentor_cfg)(loss, loss_diff, prog)
                features = MentorFeatures(loss=loss, loss_diff=loss_diff, label=label, progress=prog,
                                          target=target.float())
                stats = fit_mentor(self.mentor, features, cfg=fit_cfg, generator=generator, loss="mse")
            else:  # DD
                x, y_noisy, correct = self._clean
                features = collect_features(model, x, y_noisy, correct, percentile=copy.deepcopy(self.percentile),
                                            progress=progress, batch_size=self.recipe.batch_size, device=self.device,
                                            generator=generator)
                stats = fit_mentor(self.mentor, features, cfg=fit_cfg, generator=generator, loss="bce")
        finally:
            self.mentor.eval()
            model.train(was_training)
        row = {"step": float(step), "progress": float(progress), "lr": float(lr),
               **{k: float(v) for k, v in stats.items() if isinstance(v, (int, float))}}
        self.refits.append(row)
        return row

    # ---- reporting and checkpoints
    def result(self) -> dict[str, Any]:
        """The mentor refits of the run: one dict per refit (step, progress, lr, fit statistics)."""
        return {"mentor_updates": [dict(r) for r in self.refits]}

    def summary(self) -> dict[str, float]:
        """Per-epoch extras for the history: the current l_pt and the number of mentor updates so far."""
        return {"l_pt": float(self.percentile.value), "mentor_updates": float(len(self.refits))}

    def state_dict(self) -> dict[str, Any]:
        return {
            "percentile": self.percentile.state_dict(), "generator": self.generator.get_state(),
            "mentor": {k: v.detach().cpu().clone() for k, v in self.mentor.state_dict().items()},
            "lr_ref": self._lr_ref, "refits": [dict(r) for r in self.refits],
            "recent": self._recent.state_dict() if self._recent is not None else None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.percentile.load_state_dict(state["percentile"])
        self.generator.set_state(state["generator"])
        self.mentor.load_state_dict(state["mentor"])
        self._lr_ref = float(state["lr_ref"])
        self.refits = [dict(r) for r in state["refits"]]
        if self._recent is not None:
            self._recent.load_state_dict(state["recent"])


def mentor_task(task_cls: type[SpadeTask], ctx: MethodContext) -> SpadeTask:
    """``task_cls`` (SpadeTask or a subclass) for ``ctx``: the mentor, its params and the clean subset (DD refits)."""
    if ctx.mentor is None or ctx.mentor_cfg is None:
        raise ValueError(f"student.method {ctx.name!r} needs a mentor (run stage pretrain_mentor first)")
    return task_cls(ctx.mentor, cfg=ctx.params, recipe=ctx.recipe, mentor_cfg=ctx.mentor_cfg,
                    total_steps=ctx.total_steps, steps_per_epoch=ctx.steps_per_epoch, device=ctx.device, seed=ctx.seed,
                    num_classes=len(ctx.data.classes), clean=(ctx.data.x_clean, ctx.data.y_clean),
                    dataset=ctx.data.dataset, n_noisy=ctx.data.n_noisy if ctx.data.trusted_in_train else None,
                    dd_transition=ctx.mentor_channel, dd_given=ctx.data.y_clean_given)


def burn_in_note(params: Mapping[str, Any], epoch: int, epochs: int) -> str:
    """The records of an epoch that lies (partly) in the burn-in: v there is an example-dropout draw."""
    burn_in = float(params.get("burn_in", 0.0))
    if epoch <= burn_in * epochs:
        return "burn-in: v = example dropout"
    return "partly burn-in" if epoch - 1 < burn_in * epochs else ""


METHOD = register(Method(
    name="spade", order=20, display="SPADE", uses_mentor=True, scores_labels=True, params=SpadeParams,
    summary="MentorNet weights every example; burn-in, then student and mentor trained together",
    note=burn_in_note, task=lambda ctx: mentor_task(SpadeTask, ctx),
))
