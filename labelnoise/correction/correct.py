"""Label correction end to end, on arrays and networks (no files): the labels from the teacher's posterior or joint
optimization, then the final network retrained on them. What stage correct_labels and the Python API call."""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from labelnoise.correction.joint import joint_optimize
from labelnoise.correction.posterior import Relabelled, mean_softmax, posterior_labels
from labelnoise.correction.retrain import RetrainResult, retrain
from labelnoise.engine import evaluate_accuracy, log_to_stderr
from labelnoise.methods import label_scores
from labelnoise.runtime import derived_seed, ledger, resolve_precision
from labelnoise.schema import ConfigError
from labelnoise.trusted import train_on_trusted
from labelnoise.views import TrainView, with_trusted, without_test


@dataclass
class Corrected:
    """What :func:`correct` gives: the labels (``labels.soft_labels`` (n, C), the noisy examples' only), the final
    network (``final``), the examples the mentor's trust kept (``kept`` (n,) bool or None), and the test accuracy of
    the student and of the teacher the labels came from (monitoring only)."""

    labels: Relabelled
    final: RetrainResult
    kept: np.ndarray | None
    student_test_acc: float
    teacher_test_acc: float

    @property
    def soft(self) -> np.ndarray:
        """(n, C) float32 corrected soft labels."""
        return self.labels.soft_labels.numpy().astype(np.float32)

    @property
    def hard(self) -> np.ndarray:
        """(n,) int64 their argmax."""
        return self.soft.argmax(axis=1).astype(np.int64)


def mentor_trust(weights: Mapping[str, np.ndarray] | None, *, threshold: float, n: int) -> np.ndarray:
    """Examples the mentor trusts: final weight v > ``threshold`` → bool (n,).

    ``weights``: the student's per-example records as engine.load_weights reads them ({"epochs" (E,), "weight"
    (E, n), NaN where unseen, "method"}); the last saved epoch's row is used, an unseen example (NaN) is not
    trusted. Refused (ConfigError naming ``correction.trust_mentor``) when there are no weights or they are all 1
    (a student whose method scores no label, where every example would be trusted and nothing corrected).
    """
    hint = ("train the student with a method that scores every label (spade, mentormix, cleanlab), or set "
            "correction.trust_mentor=false")
    if weights is None or "weight" not in weights or np.asarray(weights["weight"]).size == 0:
        raise ConfigError(f"correction.trust_mentor: the student's weight file has no per-example mentor weights; "
                          f"{hint}")
    w = np.asarray(weights["weight"], dtype=np.float64)
    if w.ndim != 2 or w.shape[1] != n:
        raise ConfigError(f"correction.trust_mentor: mentor weights of shape {w.shape}, expected (E, {n}) "
                          "(re-run train_student)")
    last = label_scores(weights.get("method"), weights)  # (n,) the last saved epoch
    seen = np.isfinite(last) if last is not None else np.zeros(n, dtype=bool)
    if last is None or not seen.any() or np.all(last[seen] == 1.0):
        raise ConfigError(f"correction.trust_mentor: every mentor weight is 1 (a ce student), so every example "
                          f"would be trusted and no label corrected; {hint}")
    return seen & (np.nan_to_num(last, nan=-math.inf) > threshold)


def _teacher(kind: str, view: TrainView, student: nn.Module, fresh: Callable[[str], nn.Module],
             trusted_probs: Mapping[str, np.ndarray] | None, *, trusted: Any, recipe: Any, seed: int,
             device: torch.device, checkpoint_path: Path | None, on_epoch: Any,
             log: Callable[[str], None]) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's softmax on the train images (n, C) and on the test images (n_test, C), CPU float32: the
    student's (``student``), a trusted-only network's (``trusted``: the noise estimate's, else one trained here), or
    their mean (``ensemble``)."""
    def on(x: torch.Tensor, models: list[nn.Module]) -> torch.Tensor:
        return mean_softmax(models, x, batch_size=recipe.eval_batch_size, device=device)

    if kind == "student":
        return on(view.x_train, [student]), on(view.x_test, [student])
    if trusted_probs is not None:  # the misfit check's networks: reused, nothing trained
        alone = (torch.from_numpy(np.asarray(trusted_probs["train"], dtype=np.float32)),
                 torch.from_numpy(np.asarray(trusted_probs["test"], dtype=np.float32)))
        shapes = ((view.x_train.shape[0], view.num_classes), (view.x_test.shape[0], view.num_classes))
        if (tuple(alone[0].shape), tuple(alone[1].shape)) != shapes:
            raise ValueError(f"the trusted-only predictions have shapes {tuple(alone[0].shape)} and "
                             f"{tuple(alone[1].shape)}, the data {shapes[0]} and {shapes[1]}: "
                             "re-run the estimate_noise stage")
        ledger({"network": "label correction: trusted teacher", "reused": True, "epochs": trusted.epochs,
                "images_per_epoch": int(view.x_clean.shape[0]), "images": trusted.epochs * int(view.x_clean.shape[0])})
    else:
        fit = train_on_trusted(fresh("teacher_init"), without_test(view), cfg=trusted, recipe=recipe,
                               seed=derived_seed(seed, "teacher"), device=device, checkpoint_path=checkpoint_path,
                               on_epoch=on_epoch, log=log)
        alone = (on(view.x_train, [fit.model]), on(view.x_test, [fit.model]))
    if kind == "trusted":  # the student's own predictions are not needed
        return alone
    return (on(view.x_train, [student]) + alone[0]) / 2, (on(view.x_test, [student]) + alone[1]) / 2


def correct(
    view: TrainView,
    student: nn.Module,
    fresh: Callable[[str], nn.Module],
    *,
    cfg: Any,
    trusted: Any,
    recipe: Any,
    seed: int,
    device: torch.device,
    transition: np.ndarray | None = None,
    weights: Mapping[str, np.ndarray] | None = None,
    trusted_probs: Mapping[str, np.ndarray] | None = None,
    checkpoint_path: Path | None = None,
    on_epoch: Callable[[str], Callable[[dict[str, float]], None] | None] = lambda phase: None,
    log: Callable[[str], None] = log_to_stderr,
) -> Corrected:
    """Correct the noisy labels of ``view`` (``n`` train examples) and retrain on them.

    ``student``: the trained student (phase 1 starts from it with ``correction.init: student``; a teacher).
    ``fresh(stream)``: a new network of the student's kind, its initial weights from the seed stream ``stream``.
    ``cfg``: params ``correction`` (settled: no ``auto`` teacher); ``trusted``: params ``trusted`` (the trusted
    teacher's budget); ``recipe``: the training recipe of every phase (each with its own lr, schedule, epochs).
    ``transition`` (C, C): the estimated channel (``noisy_label_weight: auto``); ``weights``: the student's records
    (``trust_mentor``). ``trusted_probs``: the predictions of networks trained on the trusted subset alone that the
    noise estimate's misfit check already trained ({"train": (n, C), "test": (n_test, C)}): they are the trusted
    teacher, and none is trained here (without them: one network on the whole trusted subset, the ``trusted``
    budget). Resume files beside ``checkpoint_path`` (``.teacher``, ``.joint``; phase 2 at it); ``on_epoch(phase)``
    gives each phase's per-epoch logger (phase: teacher, joint, retrain).
    """
    c = cfg
    n = view.x_train.shape[0]
    if c.teacher != "student" and c.epochs:
        raise ValueError(f"correction.teacher: {c.teacher} needs correction.epochs: 0 (phase 1 starts from the "
                         "student); set correction.teacher: student or correction.epochs: 0")
    if c.teacher != "student" and view.x_clean.shape[0] == 0:
        raise ValueError(f"correction.teacher: {c.teacher} needs a trusted clean subset (data.trusted_size > 0 or "
                         "data.trusted_file); use correction.teacher: student")
    kept = mentor_trust(weights, threshold=c.trust_threshold, n=n) if c.trust_mentor else None  # (n,) bool
    ckpt = Path(checkpoint_path) if checkpoint_path is not None else None

    def beside(phase: str) -> Path | None:
        return None if ckpt is None else ckpt.with_name(f"{ckpt.stem}.{phase}{ckpt.suffix}")

    accuracy = dict(batch_size=recipe.eval_batch_size, device=device,
                    autocast_dtype=resolve_precision(recipe.precision, device))
    student_test_acc = evaluate_accuracy(student, view.x_test, view.y_test, **accuracy)["acc"]

    # ---- the teacher's prediction p (n, C): the student's, a trusted-only one's (correction.teacher), or their mean
    start = time.perf_counter()
    p, p_test = _teacher(c.teacher, view, student, fresh, trusted_probs, trusted=trusted, recipe=recipe, seed=seed,
                         device=device, checkpoint_path=beside("teacher"), on_epoch=on_epoch("teacher"), log=log)
    teacher_test_acc = (float((p_test.argmax(dim=1) == view.y_test.cpu()).float().mean())  # monitoring only
                        if view.x_test.shape[0] else math.nan)

    # ---- the labels (phase 1 or one step), then phase 2: a fresh network on them. With correction.include_trusted
    # the trusted subset follows the n noisy examples in both, its true labels kept.
    data = with_trusted(view) if c.include_trusted and view.x_clean.shape[0] else view
    extra = data.trusted_in_train
    keep = (None if kept is None and not extra else
            np.concatenate([kept if kept is not None else np.zeros(n, dtype=bool), np.ones(extra, bool)]))
    if c.epochs:
        labels = joint_optimize(student if c.init == "student" else fresh("joint_init"), data, cfg=c, recipe=recipe,
                                seed=seed, device=device, trusted=keep, transition=transition,
                                checkpoint_path=beside("joint"), on_epoch=on_epoch("joint"), log=log)
    else:
        if (c.noisy_label_weight == "auto") != (transition is not None):
            raise ValueError("correction.noisy_label_weight: auto goes with the estimated transition matrix, "
                             "and only it")
        k = view.num_classes  # the trusted examples (positions n..) keep their labels: any prediction will do
        probs = torch.cat([p, torch.nn.functional.one_hot(data.y_train[n:], k).float()])
        labels = posterior_labels(
            probs, data.y_train, model=student, weight=c.noisy_label_weight, update=c.update, device=device,
            keep=None if keep is None else torch.as_tensor(keep, device=device),
            channel=None if transition is None else torch.as_tensor(transition, dtype=torch.float32, device=device),
            seconds=time.perf_counter() - start)
    # phase 2: the final network, fine-tuned from the student or (the paper's) a fresh one
    start_from = copy.deepcopy(student) if c.retrain_init == "student" else fresh("retrain_init")
    final = retrain(start_from, data, labels.soft_labels, cfg=c, recipe=recipe, seed=seed, device=device,
                    checkpoint_path=ckpt, on_epoch=on_epoch("retrain"), log=log, kept=keep)
    labels = dataclasses.replace(labels, soft_labels=labels.soft_labels[:n], hard_history=labels.hard_history[:, :n])
    return Corrected(labels=labels, final=final, kept=kept, student_test_acc=student_test_acc,
                     teacher_test_acc=teacher_test_acc)
