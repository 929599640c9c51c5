"""Method ``glc``: gold loss correction (Hendrycks, Mazeika, Wilson & Gimpel, NeurIPS 2018, "Using Trusted Data to
Train Deep Networks on Labels Corrupted by Severe Noise"; official code github.com/mmazeika/glc).

  1. A network trains on the noisy (untrusted) labels with cross-entropy (the ``ce`` fit, the shared recipe):
     it models p(ỹ | x).
  2. The corruption matrix is estimated on the trusted examples (paper, Eq. 2; :func:`labelnoise.noise_estimate.
     glc_transition`): Ĉ[i, j] = mean over the trusted x of true class i of p(ỹ = j | x): row i, what class i's
     labels turn into.
  3. A fresh network g (same architecture, the recipe again) trains on the noisy and the trusted examples
     together: a noisy example's loss is the forward-corrected −log (softmax(g(x)) Ĉ)[ỹ], a trusted example's the
     plain −log softmax(g(x))[y] (paper, Section 3; the official code's mixed batches).

Only the noisy labels and the trusted subset are used (a TrainView). Ĉ is written to the student's metrics as
its row-mean diagonal (``glc_c_diag``) and kept in the fit's extra results. Phase 1 is checkpointed on its own and
reused once finished. The trusted subset is training data in phase 2, so its accuracy there is a training
accuracy; the final model is phase 2's. The per-example records are phase 2's, of the noisy examples; their
``weight`` is how likely the model finds the given label under the estimated corruption, (softmax(g(x)) Ĉ)[ỹ],
a label-quality score (low = likely wrong).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labelnoise.engine import Task, fit, predict_logits, weight_epochs
from labelnoise.methods.base import Method, MethodContext, MethodResult, register
from labelnoise.noise_estimate import glc_transition
from labelnoise.runtime import derived_seed, seeded
from labelnoise.views import subset_view, with_trusted


class GoldCorrectedTask(Task):
    """Phase 3's loss on a train split of ``n_noisy`` noisy examples followed by the trusted ones (positions ``idx``
    >= ``n_noisy``): forward-corrected cross-entropy through ``corruption`` (K, K) for the noisy, plain for the
    trusted; the mean over the batch."""

    def __init__(self, corruption: np.ndarray, *, n_noisy: int) -> None:
        super().__init__()
        self.log_c = torch.log(torch.as_tensor(corruption, dtype=torch.float32).clamp_min(1e-8))  # (K, K)
        self.n_noisy = n_noisy

    def __call__(self, model: nn.Module, xb: Tensor, yb: Tensor, *, step: int,
                 idx: Tensor | None = None) -> dict[str, Tensor]:
        logits = model(xb)  # (B, K)
        log_p = F.log_softmax(logits.float(), dim=1)  # (B, K) log p(y | x)
        log_c = self.log_c.to(log_p.device)
        log_noisy = torch.logsumexp(log_p + log_c[:, yb].T, dim=1)  # (B,) log Σ_i p(i | x) Ĉ[i, ỹ]
        log_plain = log_p.gather(1, yb[:, None]).squeeze(1)  # (B,) log p(y | x)
        trusted = idx >= self.n_noisy if idx is not None else torch.zeros_like(yb, dtype=torch.bool)
        per_example = -torch.where(trusted, log_plain, log_noisy)  # (B,)
        return {"loss": per_example.mean(), "logits": logits, "per_example": per_example.detach(),
                "weight": log_noisy.detach().exp()}



def _train(ctx: MethodContext) -> MethodResult:
    recipe, data = ctx.recipe, with_trusted(ctx.data)  # GLC always trains on the trusted examples too
    ctx.require_trusted()
    n, k = data.n_noisy, data.num_classes
    config = {"recipe": dataclasses.asdict(recipe), "seed": ctx.seed}

    # ---- 1. a network on the noisy labels alone (reused once finished)
    ctx.log(f"glc 1/2: cross-entropy on the {n} noisy labels, to estimate the corruption")
    noisy_fit = fit(ctx.model, subset_view(data, np.arange(n)), Task(label_smoothing=recipe.label_smoothing),
                    recipe=recipe, seed=ctx.seed, device=ctx.device, config=config,
                    checkpoint_path=ctx.phase_checkpoint("noisy"), log=ctx.log, name="glc-noisy",
                    remedy="lower train.lr or check the data")

    # ---- 2. the corruption matrix from its predictions on the trusted examples
    logits = predict_logits(noisy_fit.model, data.x_clean, batch_size=recipe.eval_batch_size, device=ctx.device)
    corruption = glc_transition(torch.softmax(logits, dim=1).numpy(), data.y_clean.numpy(), k)  # (K, K)
    ctx.log(f"glc: estimated corruption matrix, mean diagonal {np.diag(corruption).mean():.3f}")

    # ---- 3. a fresh network on noisy (corrected loss) + trusted (plain loss) examples
    model = seeded(ctx.new_model, derived_seed(ctx.seed, "glc_init"))  # its own stream: independent of phase 1
    task = GoldCorrectedTask(corruption, n_noisy=n)
    result = fit(model, data, task, recipe=recipe, seed=ctx.seed, device=ctx.device,
                 config={**config, "corruption": corruption.round(6).tolist()}, checkpoint_path=ctx.checkpoint_path,
                 record_epochs=weight_epochs(ctx.weights_at, recipe.epochs), on_epoch=ctx.on_epoch, log=ctx.log,
                 name="glc", remedy="lower train.lr or check the data")
    weights = {key: value[:, :n] if value.ndim == 2 else value for key, value in result.weights.items()}
    result = dataclasses.replace(result, weights=weights, extra={**result.extra, "corruption": corruption})
    metrics = {"glc_c_diag": float(np.diag(corruption).mean()),
               "glc_noisy_model_test_acc": noisy_fit.history[-1]["test_acc"]}
    return MethodResult(fit=result, weights=weights, metrics=metrics)


METHOD = register(Method(
    name="glc", order=3, display="GLC", scores_labels=True,
    summary="gold loss correction: the corruption estimated on the trusted subset, forward-corrected retraining",
    train=_train,
))
