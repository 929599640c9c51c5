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
trusted subset alone, cross-fitted over its folds with ``student.clean_only``'s budget, never see a given label;
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

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from labelnoise.config import Config
from labelnoise.datasets import load_prepared
from labelnoise.engine.folds import out_of_fold_probs
from labelnoise.io import save_json
from labelnoise.models import channel_stats, create_model
from labelnoise.noise import load_noisy
from labelnoise.noise_estimate import (
    channel_misfit,
    confident_joint_transition,
    confusion_transition,
    glc_transition,
    noise_rate,
    prior_from_noisy,
)
from labelnoise.plots import plot_matrices
from labelnoise.runtime import derived_seed, resolve_device
from labelnoise.trusted import trusted_recipe
from labelnoise.views import make_train_view, trusted_only, without_test
from stages.common import PATHS, require, setup, stage_run


def run(cfg: Config) -> dict[str, Any]:
    """Estimate the noise of the train labels; write PATHS.noise_estimate and PATHS.noise_estimate_plot."""
    require(PATHS.prepared, PATHS.noisy)
    setup(cfg)
    e, device = cfg.estimate, resolve_device(cfg.base.device)
    view = make_train_view(load_prepared(PATHS.prepared), load_noisy(PATHS.noisy))
    k, has_trusted = view.num_classes, view.x_clean.shape[0] > 0
    use = ("confusion" if has_trusted else "confident_joint") if e.use == "auto" else e.use
    if use != "confident_joint" and not has_trusted:
        raise ValueError(f"estimate.use: {use} needs a trusted clean subset (data.clean_size > 0 or data.clean_file); "
                         "use auto or confident_joint")
    _, channels, height, width = view.x_train.shape
    mean, std = channel_stats(view.x_train)
    kwargs = dict(num_classes=k, in_channels=channels, image_size=max(height, width), mean=mean, std=std)
    recipe = dataclasses.replace(cfg.train, epochs=e.epochs)

    with stage_run("estimate_noise", cfg) as tracked:
        probs, trusted_probs, fold = out_of_fold_probs(
            lambda: create_model(cfg.train.model, **kwargs), view, folds=e.folds, recipe=recipe, seed=cfg.base.seed,
            device=device, checkpoint_path=Path(PATHS.estimate_ckpt), also=view.x_clean if has_trusted else None)
        noisy = view.y_train.numpy()
        marginal = np.bincount(noisy, minlength=k) / max(noisy.size, 1)  # (K,) the noisy labels' class frequencies
        estimates: dict[str, dict[str, Any]] = {}
        if has_trusted:
            t, prior = confusion_transition(noisy, probs, fold, trusted_probs, view.y_clean.numpy(), k)
            estimates["confusion"] = {"transition": t, "prior": prior, "rate": noise_rate(t, prior)}
            t = glc_transition(trusted_probs.mean(axis=0), view.y_clean.numpy(), k)
            prior = prior_from_noisy(marginal, t)
            estimates["glc"] = {"transition": t, "prior": prior, "rate": noise_rate(t, prior)}
        t, prior = confident_joint_transition(noisy, probs)
        estimates["confident_joint"] = {"transition": t, "prior": prior, "rate": noise_rate(t, prior)}
        chosen = estimates[use]
        fit = None
        if has_trusted and e.trusted_folds:  # the misfit check: networks that never saw a given label
            check = trusted_recipe(cfg.train, cfg.trusted)
            ckpt = Path(PATHS.estimate_ckpt)
            held, on_noisy, part = out_of_fold_probs(
                lambda: create_model(cfg.train.model, **kwargs), without_test(trusted_only(view)),
                folds=e.trusted_folds, recipe=check, seed=derived_seed(cfg.base.seed, "trusted_check"), device=device,
                checkpoint_path=ckpt.with_name(f"{ckpt.stem}.trusted{ckpt.suffix}"), also=view.x_train)
            y_clean = view.y_clean.numpy()
            fit = channel_misfit(noisy, on_noisy, [held[part == f] for f in range(e.trusted_folds)],
                                 [y_clean[part == f] for f in range(e.trusted_folds)], chosen["transition"],
                                 chosen["prior"])
            fit.update(tolerance=e.misfit_tolerance,
                       class_conditional=fit["gap"] <= e.misfit_tolerance + 2 * fit["se"])
        report = {
            "use": use, "rate": chosen["rate"], "transition": chosen["transition"].tolist(),
            "classes": list(view.classes), "n_train": int(noisy.size), "n_trusted": int(view.x_clean.shape[0]),
            "folds": e.folds, "epochs": e.epochs,
            "fit": fit,  # channel_misfit of the estimate used (None: no trusted subset or estimate.trusted_folds 0)
            "estimates": {name: {"rate": est["rate"], "transition": est["transition"].tolist(),
                                 "prior": est["prior"].tolist()} for name, est in estimates.items()},
            "glc": None if not has_trusted else "the folds' mean p(noisy | x) on the trusted examples, by true class",
            "confusion": None if not has_trusted else ("each fold network's confusion on the trusted examples "
                                                       "inverted out of its joint with the noisy labels"),
        }
        save_json(PATHS.noise_estimate, report)
        plot_matrices({f"{name} (rate {est['rate']:.3f})": est["transition"] for name, est in estimates.items()},
                      PATHS.noise_estimate_plot, labels=view.classes, xlabel="noisy label", ylabel="true class",
                      title=f"Estimated transition matrices ({view.dataset}; the pipeline uses {use})")
        metrics = {"estimated_rate": chosen["rate"],
                   **{f"estimated_rate_{name}": est["rate"] for name, est in estimates.items()},
                   **({} if fit is None else {"channel_misfit": fit["gap"]})}
        tracked.log_metrics(metrics)
        tracked.log_artifact(PATHS.noise_estimate)
        tracked.log_artifact(PATHS.noise_estimate_plot)
        tracked.set_tags({"noise_estimate": use})
    return metrics
