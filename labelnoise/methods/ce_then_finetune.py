"""Method ``ce_then_finetune``: cross-entropy on the noisy labels (the ``ce`` fit, the shared recipe), then the same
network fine-tuned on the trusted clean subset alone (``student.ce_then_finetune``: its epochs, peak learning rate
and augmentation; the schedule and optimiser are the recipe's).

The second baseline a practitioner with a trusted subset tries: the noisy data teaches features, the trusted data
the decision. The CE phase is checkpointed on its own and reused once finished, so a killed fine-tune resumes
without training the CE phase again. The history is both phases in a row (fine-tune epochs numbered after the
CE ones); the final model is the fine-tuned one (its last epoch: the trusted subset is its training data, so its
accuracy selects nothing there). The per-example records are the CE phase's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from labelnoise.engine import Task, fit, module_fingerprint, weight_epochs
from labelnoise.methods.base import Method, MethodContext, MethodResult, register
from labelnoise.schema import rng
from labelnoise.views import trusted_only


@dataclass(frozen=True)
class CeThenFinetuneParams:
    finetune_epochs: int = rng(1, 100_000)  # epochs over the trusted subset after the CE phase
    finetune_lr: float = rng(0.0, 10.0, lo_open=True)  # peak learning rate of the fine-tune (the recipe's schedule)
    finetune_augment: Literal["auto", "none", "crop_flip"]  # the fine-tune's augmentation



def _train(ctx: MethodContext) -> MethodResult:
    p, recipe = ctx.params, ctx.recipe
    ctx.require_trusted()
    task = Task(label_smoothing=recipe.label_smoothing)
    # ---- phase 1: plain CE on the noisy labels (reused when a finished checkpoint of the same config exists)
    ce = fit(ctx.model, ctx.data, task, recipe=recipe, seed=ctx.seed, device=ctx.device,
             config={"recipe": dataclasses.asdict(recipe), "seed": ctx.seed},
             checkpoint_path=ctx.phase_checkpoint("ce"), on_epoch=ctx.on_epoch, log=ctx.log,
             record_epochs=weight_epochs(ctx.weights_at, recipe.epochs), remedy="lower train.lr or check the data")
    # ---- phase 2: the same network on the trusted subset alone
    tune = dataclasses.replace(recipe, epochs=p.finetune_epochs, lr=p.finetune_lr, augment=p.finetune_augment)
    ctx.log(f"ce_then_finetune: fine-tuning {p.finetune_epochs} epochs on the {ctx.data.x_clean.shape[0]} trusted "
            f"examples (peak lr {p.finetune_lr:g})")
    offset = len(ce.history)

    def on_epoch(row: dict[str, float]) -> None:
        if ctx.on_epoch is not None:
            ctx.on_epoch({**row, "epoch": row["epoch"] + offset})

    fine = fit(ce.model, trusted_only(ctx.data), task, recipe=tune, seed=ctx.seed + 1, device=ctx.device,
               config={"recipe": dataclasses.asdict(tune), "seed": ctx.seed + 1,
                       "start": module_fingerprint(ce.model)},  # resumes only on top of this CE phase
               checkpoint_path=ctx.checkpoint_path, on_epoch=on_epoch, log=ctx.log, name="finetune",
               remedy="lower student.ce_then_finetune.finetune_lr")
    history = [*ce.history, *({**row, "epoch": row["epoch"] + offset} for row in fine.history)]
    result = dataclasses.replace(fine, history=history, best_epoch=offset + fine.best_epoch,
                                 seconds=ce.seconds + fine.seconds, weights=ce.weights)
    return MethodResult(fit=result, weights=ce.weights)


METHOD = register(Method(
    name="ce_then_finetune", order=2, display="CE + fine-tune", params=CeThenFinetuneParams,
    summary="cross-entropy on the noisy labels, then fine-tuned on the trusted clean subset",
    train=_train,
))
