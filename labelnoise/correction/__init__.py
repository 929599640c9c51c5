"""Label correction: the train labels are corrected, then a fresh network is trained on them (the final model).

Where the labels come from (:func:`~labelnoise.correction.correct.correct`):

- ``correction.epochs`` 0 (the default): one step, the class posterior of a teacher's prediction and the given label
  under the noise channel (:mod:`~labelnoise.correction.posterior`); the teacher (``correction.teacher``) is the
  student, a network trained on the trusted subset alone (:mod:`labelnoise.trusted`), or the mean of the two;
- ``correction.epochs`` > 0: joint optimization of network and labels (Tanaka et al., CVPR 2018;
  :mod:`~labelnoise.correction.joint`), from the student or from scratch.

Then phase 2 (:mod:`~labelnoise.correction.retrain`): a fresh network on the corrected soft labels. Training never
sees the true train labels: every phase takes a :class:`~labelnoise.views.TrainView`; the clean subset is the
model-selection signal. :mod:`~labelnoise.correction.report` measures the recovery against the true labels, after
training (evaluation only). Every phase trains through the engine with its own resume file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from labelnoise import auto
from labelnoise.schema import rng


# ----------------------------------------------------------------------------- params (section `correction`)
@dataclass(frozen=True)
class CorrectionConfig:
    init: Literal["student", "scratch"]  # phase 1 starts from the trained student or a fresh network
    epochs: int = rng(0, 10_000)  # phase 1: alternating optimisation of network and labels (0: none, the labels
    #   are the posterior of the starting network's predictions)
    lr: float = rng(0.0, 10.0, lo_open=True)  # phase 1: high constant lr (paper 0.08 symmetric, 0.03 asymmetric)
    prior_alpha: float = rng(0.0)  # weight of the prior term L_p (paper 1.2 sym / 0.8 asym; official code 1.0)
    entropy_beta: float = rng(0.0)  # weight of the entropy term L_e (paper 0.8 sym / 0.4 asym; official code 0.5)
    prior: Literal["uniform", "clean"]  # class prior p: uniform, or estimated from the clean subset
    buffer: int = rng(1, 1000)  # K: epochs of softmax outputs averaged into the new labels
    begin: int = rng(1)  # first epoch (1-based) at which labels are updated
    update: Literal["soft", "hard"]  # new label = buffer mean, or its argmax (one-hot)
    update_every: int = rng(1)  # epochs between label updates
    noisy_label_weight: float | Literal["auto"] = rng(0.0, 1.0)  # w: y ∝ s̄ · (w·onehot(noisy) + (1−w)/C); 0 = the
    #   paper's y = s̄; auto: y ∝ s̄ · T̂[:, noisy], T̂ the estimated transition matrix (labelnoise.auto)
    include_trusted: bool  # the trusted subset joins both phases' training data with its true labels (kept)
    teacher: Literal["auto", "student", "trusted", "ensemble"]  # epochs 0: whose prediction p the labels'
    #   posterior starts from: the student, a network trained on the trusted subset alone (the `trusted` budget),
    #   or the mean of the two softmaxes; auto: :func:`auto_teacher`
    trust_mentor: bool  # examples whose mentor weight exceeds trust_threshold keep their label
    trust_threshold: float = rng(0.0, 1.0)
    retrain_init: Literal["student", "scratch"]  # phase 2 fine-tunes the student or trains a fresh network (paper)
    retrain_epochs: int = rng(1, 10_000)  # phase 2: the final network trained on the corrected labels
    retrain_lr: float = rng(0.0, 10.0, lo_open=True)
    retrain_schedule: Literal["constant", "multistep", "cosine", "onecycle"]
    retrain_loss: Literal["soft", "semi"]  # phase 2: soft-target cross-entropy on every corrected label, or semi:
    #   MixMatch with the confident corrected labels and the kept ones labelled, the rest unlabelled (retrain.py)
    semi_threshold: float | Literal["auto"] = rng(0.0, 1.0)  # semi: labelled where the corrected label's probability
    #   is >= this; auto: 1 − r̂ (as likely right as a given label on average, r̂ the estimated rate)
    semi_lambda_u: float = rng(0.0, 1e6)  # semi: weight of the unlabelled (guessing) loss
    semi_temperature: float = rng(0.0, 100.0, lo_open=True)  # semi: sharpening of the guesses
    semi_mixup_alpha: float = rng(0.0, 1000.0, lo_open=True)  # semi: MixMatch's Beta(α, α)
    semi_view_augment: Literal["none", "crop_flip"]  # semi: the views the guesses average (padding train.crop_padding)


# ----------------------------------------------------------------------------- auto settings (labelnoise.auto)
def auto_teacher(estimate: auto.NoiseEstimate, cfg: Any) -> str:
    """``correction.teacher: auto``: the mean of the student's and a trusted-only network's predictions
    (``ensemble``) where the estimated channel explains the labels; the trusted-only network alone where the misfit
    check failed (the student learnt the misleading labels); the student without a trusted subset or with a phase
    1 (``correction.epochs`` > 0: it starts from the student). Measured in docs/methods.md ("Label correction")."""
    if not estimate.n_trusted or cfg.correction.epochs:
        return "student"
    return "ensemble" if estimate.class_conditional else "trusted"


def auto_noisy_label_weight(estimate: auto.NoiseEstimate, cfg: Any) -> Any:
    """``correction.noisy_label_weight: auto``: the corrected label is the posterior of the class given the teacher's
    prediction s̄ and the given label ỹ under the estimated channel, y ∝ s̄ · T̂[:, ỹ] (Bayes' rule; the stage takes
    T̂ from the estimate) — where the estimate's misfit check passed. Where it failed (the noise is not
    class-conditional as estimated: ``estimate.misfit_tolerance``), 0: the given labels are ignored and the
    corrected label is the teacher's prediction (self-training)."""
    return auto.KEEP if estimate.class_conditional else 0.0


def _weight_note(estimate: auto.NoiseEstimate) -> str:
    if estimate.class_conditional:
        return auto.estimated_channel(estimate)
    return "0: the given labels ignored (the estimated channel does not explain them: estimate.misfit_tolerance)"


auto.rule("correction.semi_threshold", "1 - the estimated rate: a corrected label is used as a label when it is as "
          "likely right as a given label is on average", lambda estimate, cfg: round(1.0 - estimate.rate, 4))
auto.rule("correction.teacher", "ensemble (student + trusted-only network); trusted where the misfit check fails; "
          "student without a trusted subset or with a phase 1", auto_teacher)
auto.rule("correction.noisy_label_weight", "posterior under the estimated transition matrix: s̄ · T[:, noisy label]; "
          "0 (labels ignored) where the misfit check fails", auto_noisy_label_weight, note=_weight_note)


# the package's API (imported after the config: the modules below read it)
from labelnoise.correction.correct import Corrected, correct, mentor_trust  # noqa: E402
from labelnoise.correction.joint import (  # noqa: E402
    JointTask,
    LabelBuffer,
    class_prior,
    entropy_loss,
    joint_loss,
    joint_optimize,
    label_update_due,
    prior_loss,
)
from labelnoise.correction.posterior import (  # noqa: E402
    Relabelled,
    mean_softmax,
    noisy_label_posterior,
    one_hot,
    posterior_labels,
    update_labels,
)
from labelnoise.correction.report import correction_figures, correction_report, recovery_report  # noqa: E402
from labelnoise.correction.retrain import (  # noqa: E402
    RetrainResult,
    SoftTargetTask,
    compatibility_loss,
    retrain,
    soft_cross_entropy,
)

__all__ = ["CorrectionConfig", "Corrected", "JointTask", "LabelBuffer", "Relabelled", "RetrainResult", "SoftTargetTask",
           "auto_noisy_label_weight", "auto_teacher", "class_prior", "compatibility_loss", "correct",
           "correction_figures", "correction_report", "entropy_loss", "joint_loss", "joint_optimize",
           "label_update_due", "mean_softmax", "mentor_trust", "noisy_label_posterior", "one_hot", "posterior_labels",
           "prior_loss", "recovery_report", "retrain", "soft_cross_entropy", "update_labels"]
