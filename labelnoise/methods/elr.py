"""Method ``elr``: early-learning regularisation (Liu, Niles-Weed, Razavian and Fernandez-Granda, NeurIPS 2020,
"Early-Learning Regularization Prevents Memorization of Noisy Labels"; official code github.com/shengliu66/ELR,
``ELR/model/loss.py``). A network first fits the clean majority ("early learning"); a temporal ensemble of its own
predictions t_i (a moving average, momentum β) then serves as a target that the regulariser keeps the prediction
near, so the wrong labels are not memorised:

  loss = mean cross-entropy(ỹ) + λ · mean log(1 − ⟨t_i, p_i⟩),   t_i ← β·t_i + (1 − β)·p_i / Σ p_i (detached),

p_i the softmax clamped to [1e-4, 1 − 1e-4] as in the official code. t_i starts at 0 and is updated each time
example i is in a batch (official). The records' weight is t_i[ỹ_i], the ensemble's probability of the given label
(a label-quality score, low = likely wrong). ELR+ (two networks, weight averaging, mixup) is not here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labelnoise import auto
from labelnoise.engine import Task
from labelnoise.methods.base import Method, MethodContext, register
from labelnoise.schema import rng


@dataclass(frozen=True)
class ELRParams:
    beta: float | Literal["auto"] = rng(0.0, 1.0)  # momentum of the temporal ensemble of predictions
    lam: float | Literal["auto"] = rng(0.0, 1e6)  # weight λ of the regulariser


# ---- auto: the official configurations (ELR/config_cifar10.json: β 0.7, λ 3; config_cifar10_asym.json: β 0.9,
# λ 1; config_cifar100.json: β 0.9, λ 7)
def _settings(estimate: auto.NoiseEstimate) -> tuple[float, float]:
    if estimate.num_classes >= 100:
        return 0.9, 7.0
    return (0.9, 1.0) if estimate.structured else (0.7, 3.0)


auto.rule("student.elr.beta", "the official beta: 0.7 (CIFAR-10), 0.9 for structured noise or 100 classes",
          lambda estimate, cfg: _settings(estimate)[0])
auto.rule("student.elr.lam", "the official lambda: 3 (CIFAR-10), 1 for structured noise, 7 for 100 classes",
          lambda estimate, cfg: _settings(estimate)[1])


class ELRTask(Task):
    """Cross-entropy plus the early-learning regulariser over a train split of ``n`` examples (module docstring)."""

    weighted = True

    def __init__(self, cfg: ELRParams, *, n: int, num_classes: int, label_smoothing: float = 0.0) -> None:
        super().__init__(label_smoothing=label_smoothing)
        if "auto" in (cfg.beta, cfg.lam):
            raise ValueError("student.elr: auto is settled from the noise estimate by stage train_student "
                             "(labelnoise.auto.settle_stage); give values to train the task directly")
        self.cfg = cfg
        self.target = torch.zeros(n, num_classes)  # (N, K) the temporal ensemble, moved to the device on first use

    def __call__(self, model: nn.Module, xb: Tensor, yb: Tensor, *, step: int,
                 idx: Tensor | None = None) -> dict[str, Tensor]:
        assert idx is not None, "ELR needs the batch's positions"
        logits = model(xb).float()  # (B, K)
        if self.target.device != logits.device:
            self.target = self.target.to(logits.device)
        p = torch.softmax(logits, dim=1).clamp(1e-4, 1.0 - 1e-4)  # (B, K)
        with torch.no_grad():
            t = self.cfg.beta * self.target[idx] + (1 - self.cfg.beta) * p / p.sum(dim=1, keepdim=True)
            self.target[idx] = t
        ce = F.cross_entropy(logits, yb, reduction="none", label_smoothing=self.label_smoothing)  # (B,)
        reg = torch.log(1.0 - (t * p).sum(dim=1)).mean()
        return {"loss": ce.mean() + self.cfg.lam * reg, "logits": logits, "per_example": ce.detach(),
                "weight": t.gather(1, yb[:, None]).squeeze(1), "elr_reg": reg.detach()}

    def state_dict(self) -> dict[str, Any]:
        return {"target": self.target.cpu()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.target = state["target"].to(self.target.device)


def _task(ctx: MethodContext) -> ELRTask:
    return ELRTask(ctx.params, n=ctx.data.x_train.shape[0], num_classes=ctx.data.num_classes,
                   label_smoothing=ctx.recipe.label_smoothing)


METHOD = register(Method(
    name="elr", order=35, display="ELR", scores_labels=True, params=ELRParams,
    summary="early-learning regularisation: a temporal ensemble of predictions keeps the network off wrong labels",
    task=_task,
))
