"""Stage `estimate_noise`: how noisy are the train labels? Estimated from what a user has — the noisy labels and the
trusted clean subset — never from the true train labels (a TrainView).

``estimate.folds`` networks (the recipe's, ``estimate.epochs`` each) train with cross-entropy on the other folds
of the noisy train set (:func:`labelnoise.engine.folds.out_of_fold_probs`, resumable per fold). From them:

- the confusion inversion (:func:`labelnoise.noise_estimate.confusion_transition`): each fold network's confusion
  on the trusted examples inverted out of the joint of its predictions and the noisy labels (needs a trusted
  subset);
- GLC's transition matrix (Hendrycks et al. 2018): the folds' mean predicted p(ỹ | x) on the trusted examples,
  row by true class (needs a trusted subset);
- the confident joint's (Northcutt et al. 2021): cleanlab's calibrated confident joint of the noisy labels and
  the out-of-sample probabilities.

The check of the estimate used (``estimate.trusted_folds`` > 0, with a trusted subset): networks trained on the
trusted subset alone, cross-fitted over its folds with the ``trusted`` budget, never see a given label;
:func:`labelnoise.noise_estimate.channel_misfit` measures how far their agreement with the given labels is from
what the estimated channel predicts. Beyond ``estimate.misfit_tolerance`` (+ 2 standard errors) the noise is not
class-conditional as estimated, and the ``auto`` settings of label correction ignore the given labels.

For each, the noise rate Σ_i π_i (1 − T[i, i]) with the true-class prior π its own (confusion inversion,
confident joint) or solved from the noisy labels' marginal (GLC). ``estimate.use`` names the one the pipeline
reports as its estimate (``auto``: the confusion inversion where there is a trusted subset, else the confident
joint); the other stages' ``auto`` settings read it. Writes PATHS.noise_estimate
(JSON) and PATHS.noise_estimate_plot (the estimated matrices). Stage evaluate holds them against the truth where
it exists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from labelnoise.config import Config
from labelnoise.datasets import load_prepared
from labelnoise.io import save_json, save_npz
from labelnoise.noise import load_noisy
from labelnoise.noise_estimate import estimator, has_paired
from labelnoise.plots import plot_matrices
from labelnoise.steps import estimate as step
from labelnoise.views import make_train_view
from stages.common import PATHS, require, setup, stage_run


def run(cfg: Config) -> dict[str, Any]:
    """Estimate the noise of the train labels; write PATHS.noise_estimate and PATHS.noise_estimate_plot."""
    require(PATHS.prepared, PATHS.noisy)
    setup(cfg)
    view = make_train_view(load_prepared(PATHS.prepared), load_noisy(PATHS.noisy))
    estimator(cfg.estimate, has_trusted=view.x_clean.shape[0] > 0, has_paired=has_paired(view))  # fails before the run
    with stage_run("estimate_noise", cfg) as tracked:
        report, predicted = step.estimate_noise(cfg, view, checkpoint_path=Path(PATHS.estimate_ckpt))
        save_json(PATHS.noise_estimate, report)
        empty = np.zeros((0, view.num_classes), dtype=np.float32)  # no misfit check: no trusted-only predictions
        save_npz(PATHS.trusted_probs, train=predicted.get("train", empty), test=predicted.get("test", empty))
        plot_matrices({f"{name} (rate {est['rate']:.3f})": np.asarray(est["transition"])
                       for name, est in report["estimates"].items()},
                      PATHS.noise_estimate_plot, labels=view.classes, xlabel="noisy label", ylabel="true class",
                      title=f"Estimated transition matrices ({view.dataset}; the pipeline uses {report['use']})")
        metrics = {"estimated_rate": report["rate"],
                   **{f"estimated_rate_{name}": est["rate"] for name, est in report["estimates"].items()},
                   **({} if report["fit"] is None else {"channel_misfit": report["fit"]["gap"]})}
        tracked.log_metrics(metrics)
        tracked.log_artifact(PATHS.noise_estimate)
        tracked.log_artifact(PATHS.noise_estimate_plot)
        tracked.set_tags({"noise_estimate": report["use"]})
    return metrics
