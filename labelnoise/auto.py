"""Settings from the noise estimate, not from the user: the params whose value may be ``auto``, and the rule that
turns stage estimate_noise's estimate (reports/noise_estimate.json) into each. A user does not know the noise
rate; the papers' settings are per noise level (their tables), so ``auto`` reads the level off the estimate.

Every rule, with where it comes from (the README lists them too):

- ``mentor.percentile``: p = clip(1 − r̂, 0.5, 0.8), keep the fraction estimated clean. It reproduces the official
  MentorNet DD scripts' table exactly (p 0.8 / 0.6 / 0.5 at 20 / 40 / 80 % noise; their PD table is 0.75 / 0.75
  / 0.5).
- ``mentor.dd_noise_kind``: the DD mentor learns on a copy of the trusted subset corrupted with the *estimated*
  transition matrix T̂ (exact per-class counts, :func:`labelnoise.noise.corrupt` ``transition``), so it learns to
  spot the structure the data has (pair, instance-like), not symmetric noise at a guessed rate.
- ``student.mentormix.mixup_alpha`` and ``second_reweight``: the official MentorMix CIFAR-10 settings at the
  noise level nearest r̂ (α 2 / 8 / 8 / 4 at 20 / 40 / 60 / 80 %, the second reweighting on from 60 %).
- ``correction.noisy_label_weight``: the corrected label is the posterior of the class given the network's
  averaged prediction s̄ and the given label ỹ under the estimated channel, y ∝ s̄ · T̂[:, ỹ] (Bayes' rule; a
  number w instead assumes a symmetric channel w·I + (1 − w)/C) — where the estimate's misfit check passed.
  Where it failed (the noise is not class-conditional as estimated: ``estimate.misfit_tolerance``), 0: the given
  labels are ignored and the corrected label is the teacher's prediction (self-training).
- ``correction.teacher``: the mean of the student's and a trusted-only network's predictions (``ensemble``) where
  the check passed; the trusted-only network alone where it failed (the student learnt the misleading labels);
  the student where there is no trusted subset. Measured in the README ("Label correction").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from labelnoise.io import load_json

AUTO = "auto"

# The official MentorMix CIFAR-10 settings (Jiang et al. 2020, its code's run scripts), by noise level.
MENTORMIX_LEVELS = (0.2, 0.4, 0.6, 0.8)
MENTORMIX_ALPHA = (2.0, 8.0, 8.0, 4.0)
MENTORMIX_SECOND_REWEIGHT = (False, False, True, True)
PERCENTILE_RANGE = (0.5, 0.8)  # the official MentorNet DD scripts' p at 80 % and 20 % noise


@dataclass(frozen=True)
class NoiseEstimate:
    """What the auto rules read of stage estimate_noise's report: the estimated noise rate r̂ and transition
    matrix T̂ (K, K), and the estimator that gave them."""

    rate: float
    transition: np.ndarray
    use: str
    n_trusted: int = 0
    class_conditional: bool = True  # the misfit check passed, or there was none (nothing speaks against it)

    @classmethod
    def from_report(cls, report: dict[str, Any]) -> NoiseEstimate:
        t = np.asarray(report["transition"], dtype=np.float64)
        fit = report.get("fit") or {}
        return cls(rate=float(report["rate"]), transition=t, use=str(report["use"]),
                   n_trusted=int(report.get("n_trusted", 0)),
                   class_conditional=bool(fit.get("class_conditional", True)))


def teacher(estimate: NoiseEstimate, *, joint_epochs: int = 0) -> str:
    """``correction.teacher: auto``: ensemble where the channel explains the labels, trusted where it does not,
    student without a trusted subset or with a phase 1 (``correction.epochs`` > 0: it starts from the student)."""
    if not estimate.n_trusted or joint_epochs:
        return "student"
    return "ensemble" if estimate.class_conditional else "trusted"


def percentile(rate: float) -> float:
    """``mentor.percentile: auto``: clip(1 − r̂, 0.5, 0.8)."""
    lo, hi = PERCENTILE_RANGE
    return float(np.clip(1.0 - rate, lo, hi))


def _level(rate: float) -> int:
    return int(np.argmin([abs(rate - level) for level in MENTORMIX_LEVELS]))


def mixup_alpha(rate: float) -> float:
    """``student.mentormix.mixup_alpha: auto``: the official α at the noise level nearest r̂."""
    return MENTORMIX_ALPHA[_level(rate)]


def second_reweight(rate: float) -> bool:
    """``student.mentormix.second_reweight: auto``: on at the official levels that use it (60, 80 %)."""
    return MENTORMIX_SECOND_REWEIGHT[_level(rate)]


def auto_keys(cfg: Any, sections: list[str] | tuple[str, ...]) -> list[str]:
    """The dotted keys under ``sections`` (params section names, or ``student``) whose value is ``auto`` and that
    a rule here settles."""
    keys = []
    for key in RULES:
        section, *path = key.split(".")
        if section not in sections:
            continue
        value = getattr(cfg, section)
        for name in path:
            value = getattr(value, name)
        if value == AUTO:
            keys.append(key)
    return keys


def settle(cfg: Any, estimate: NoiseEstimate, keys: list[str]) -> tuple[Any, dict[str, Any]]:
    """``cfg`` with the ``auto`` params in ``keys`` replaced by their rule's value, and {key: value} of every key
    settled (for the run's records). ``mentor.dd_noise_kind`` and ``correction.noisy_label_weight`` (where the
    misfit check passed) stay ``auto`` in the config: the stages that read them take T̂ from ``estimate``."""
    chosen: dict[str, Any] = {}
    if "mentor.percentile" in keys:
        chosen["mentor.percentile"] = percentile(estimate.rate)
        cfg = dataclasses.replace(cfg, mentor=dataclasses.replace(cfg.mentor, percentile=chosen["mentor.percentile"]))
    mix = {}
    if "student.mentormix.mixup_alpha" in keys:
        mix["mixup_alpha"] = chosen["student.mentormix.mixup_alpha"] = mixup_alpha(estimate.rate)
    if "student.mentormix.second_reweight" in keys:
        mix["second_reweight"] = chosen["student.mentormix.second_reweight"] = second_reweight(estimate.rate)
    if mix:
        block = dataclasses.replace(cfg.student.mentormix, **mix)
        cfg = dataclasses.replace(cfg, student=dataclasses.replace(cfg.student, mentormix=block))
    fixed = {}
    if "correction.teacher" in keys:
        fixed["teacher"] = chosen["correction.teacher"] = teacher(estimate, joint_epochs=cfg.correction.epochs)
    for key in ("mentor.dd_noise_kind", "correction.noisy_label_weight"):
        if key in keys:
            chosen[key] = f"the estimated transition matrix ({estimate.use}, rate {estimate.rate:.3f})"
    if "correction.noisy_label_weight" in keys and not estimate.class_conditional:
        fixed["noisy_label_weight"] = 0.0
        chosen["correction.noisy_label_weight"] = ("0: the given labels ignored (the estimated channel does not "
                                                   "explain them: estimate.misfit_tolerance)")
    if fixed:
        cfg = dataclasses.replace(cfg, correction=dataclasses.replace(cfg.correction, **fixed))
    return cfg, chosen


def settle_stage(cfg: Any, params: Iterable[str], estimate_path: str | Path, *,
                 used: Callable[[str], bool] = lambda key: True) -> tuple[Any, dict[str, Any], NoiseEstimate | None]:
    """A stage's ``auto`` params settled from the estimate at ``estimate_path`` (stage estimate_noise's report):
    those in the sections of ``params`` (the stage's entries of STAGE_PARAMS) that this run ``used`` (e.g. a
    mentor's only for a method with one). Returns (the config with values in their place, {key: value chosen},
    the estimate, or None when nothing the run uses is auto). A missing estimate is one line naming the params
    that need it."""
    params = tuple(params)
    sections = tuple(dict.fromkeys(k.split(".")[0] for k in params))
    keys = [key for key in auto_keys(cfg, sections)  # only keys under the stage's entries (a section or a block)
            if used(key) and any(key == p or key.startswith(p + ".") for p in params)]
    if not keys:
        return cfg, {}, None
    if not Path(estimate_path).is_file():
        raise FileNotFoundError(f"{estimate_path} does not exist: {', '.join(keys)} = auto read the noise estimate; "
                                "run stage estimate_noise first (dvc repro), or set them to values")
    estimate = NoiseEstimate.from_report(load_json(estimate_path))
    settled, chosen = settle(cfg, estimate, keys)
    return settled, chosen, estimate


# key -> the rule in one line (README "Settings from the estimate", the CLI's records)
RULES: dict[str, str] = {
    "mentor.percentile": "clip(1 - estimated rate, 0.5, 0.8): the official MentorNet DD table",
    "mentor.dd_noise_kind": "the trusted copy corrupted with the estimated transition matrix",
    "student.mentormix.mixup_alpha": "the official MentorMix alpha at the nearest noise level (2/8/8/4)",
    "student.mentormix.second_reweight": "on at the nearest official level 60 or 80 %",
    "correction.noisy_label_weight": "posterior under the estimated transition matrix: s̄ · T[:, noisy label]; "
                                     "0 (labels ignored) where the misfit check fails",
    "correction.teacher": "ensemble (student + trusted-only network); trusted where the misfit check fails; "
                          "student without a trusted subset or with a phase 1",
}
