"""Phase 2 of label correction: a fresh network (or the student) trained on the corrected soft labels, with its own
lr and schedule; it is the final model. Tanaka et al. 2018's second step: soft-target cross-entropy on every label
(``correction.retrain_loss: soft``). Or ``semi``: the corrected labels the correction is confident about
(probability >= ``semi_threshold``) and the kept ones (the trusted subset) are labels, the other images are
unlabelled data, and the network trains with MixMatch (:mod:`labelnoise.engine.mixmatch`, DivideMix's pieces with
one network: its own sharpened mean prediction over two views as the guess)."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from labelnoise.engine import FitResult, Task, fit, log_to_stderr, module_fingerprint
from labelnoise.engine import mixmatch as mm
from labelnoise.runtime import derived_seed
from labelnoise.views import TrainView


def compatibility_loss(logits: Tensor, soft_labels: Tensor) -> Tensor:
    """L_c = −(1/B) Σ_i Σ_j y_ij log s_ij with s = softmax(logits).

    logits (B, C), soft_labels (B, C) (rows sum to 1) → () scalar. Equals KL(y‖s) averaged over the batch
    plus the labels' mean entropy, which does not depend on the network.
    """
    return mm.soft_cross_entropy(logits, soft_labels)


def soft_cross_entropy(logits: Tensor, soft_labels: Tensor) -> dict[str, Tensor]:
    """Phase-2 loss: soft-target cross-entropy (= L_c, no prior or entropy term). → {"loss", "l_c"}."""
    l_c = compatibility_loss(logits, soft_labels)
    return {"loss": l_c, "l_c": l_c}


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


class SemiTask(Task):
    """Phase 2 with ``retrain_loss: semi``: MixMatch on labelled examples (``labelled`` (N,) bool; target: the
    corrected soft label) and unlabelled ones (target: the sharpened mean softmax of the network over the views)."""

    def __init__(self, targets: Tensor, labelled: Tensor, x: Tensor, *, cfg: Any, crop_padding: int,
                 seed: int) -> None:
        super().__init__()
        self.targets, self.labelled, self.x, self.cfg, self.crop_padding = targets, labelled, x, cfg, crop_padding
        self.generator = torch.Generator().manual_seed(derived_seed(seed, "semi"))  # views, mixing

    def __call__(self, model: nn.Module, xb: Tensor, yb: Tensor, *, step: int,
                 idx: Tensor | None = None) -> dict[str, Tensor]:
        assert idx is not None, "the semi-supervised phase needs the batch's positions"
        views = mm.views(self.x, idx, xb, augment=self.cfg.semi_view_augment, padding=self.crop_padding,
                         generator=self.generator)
        lab, soft = self.labelled[idx], self.targets[idx]  # (B,), (B, K)
        probs, logits = mm.mean_softmax(model, views)
        guess = mm.sharpen(probs[~lab], self.cfg.semi_temperature)  # (U, K)
        out = mm.mixmatch_loss(model, views, lab, soft[lab], guess, alpha=self.cfg.semi_mixup_alpha,
                               lambda_u=self.cfg.semi_lambda_u, generator=self.generator)
        return {**out, "logits": logits, "target": soft.argmax(dim=1), "labelled": lab.float().mean()}

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Any) -> None:
        self.generator.set_state(state["generator"])


def semi_labelled(soft_labels: Tensor, threshold: float, kept: np.ndarray | None = None) -> Tensor:
    """(N,) bool: the examples phase 2 ``semi`` treats as labelled: a corrected label of probability >= ``threshold``,
    or a kept one (``kept`` (N,) bool: the trusted subset, the mentor-trusted)."""
    labelled = soft_labels.float().max(dim=1).values >= threshold
    if kept is not None:
        labelled |= torch.as_tensor(kept, dtype=torch.bool, device=labelled.device)
    return labelled


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
    kept: np.ndarray | None = None,
) -> RetrainResult:
    """Phase 2: train the fresh network ``model`` on ``soft_labels`` (N, C) (the corrected labels of
    ``data.x_train``) with soft-target cross-entropy (``cfg.retrain_loss: soft``) or MixMatch (``semi``: ``kept``
    (N,) bool marks labels that are labelled whatever their probability) for ``cfg.retrain_epochs`` epochs, lr
    ``cfg.retrain_lr`` on schedule ``cfg.retrain_schedule`` (other SGD settings from the recipe).
    The best clean-subset epoch is tracked (model selection; test accuracy is monitoring only)."""
    device = torch.device(device)
    n = data.x_train.shape[0]
    if soft_labels.shape != (n, len(data.classes)):
        raise ValueError(f"soft labels of shape {tuple(soft_labels.shape)}, expected ({n}, {len(data.classes)})")
    config = {"correction": dataclasses.asdict(cfg), "recipe": dataclasses.asdict(recipe), "seed": seed,
              "init": module_fingerprint(model), "labels": _digest(soft_labels)}
    phase = phase_recipe(recipe, lr=cfg.retrain_lr, schedule=cfg.retrain_schedule, epochs=cfg.retrain_epochs)
    targets = soft_labels.float().to(device)
    task: Task = SoftTargetTask(targets)
    if cfg.retrain_loss == "semi":
        if cfg.semi_threshold == "auto":
            raise ValueError("correction.semi_threshold: auto is settled from the noise estimate by stage "
                             "correct_labels; give a value to retrain directly")
        labelled = semi_labelled(targets, cfg.semi_threshold, kept)
        log(f"retrain (semi): {int(labelled.sum())} of {n} labels used, the rest unlabelled "
            f"(threshold {cfg.semi_threshold:g})")
        task = SemiTask(targets, labelled, data.x_train, cfg=cfg, crop_padding=recipe.crop_padding, seed=seed)
        config["kept"] = _digest(kept)
    result = fit(model, data, task, recipe=phase,
                 seed=derived_seed(seed, "retrain"), device=device, config=config, checkpoint_path=checkpoint_path,
                 on_epoch=_renamed(on_epoch), log=log, name="retrain",
                 purpose="label correction: retrain",
                 remedy="label correction (phase 2): lower correction.retrain_lr")
    return RetrainResult(model=result.model, history=_phase_history(result), best_state=result.best_state,
                         best_epoch=result.best_epoch, best_clean_acc=result.best_clean_acc, seconds=result.seconds,
                         resumed_epochs=result.resumed_epochs)
