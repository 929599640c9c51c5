"""The one training engine: every network of the project (the student, the DD mentor's recording student, both
label-correction phases, the instance-noise reference classifier, cleanlab's folds) trains through :func:`fit`.

- :mod:`~labelnoise.engine.loop`: :func:`fit` (epochs, evaluation, best epoch, checkpoints, resume, Ctrl-C) and
  :func:`train_one_epoch` (the steps);
- :mod:`~labelnoise.engine.task`: the :class:`Task` a method implements (its loss and hooks);
- :mod:`~labelnoise.engine.optim`: SGD and the lr schedules; :mod:`~labelnoise.engine.augment`: crop + flip;
- :mod:`~labelnoise.engine.predict`: logits and accuracy of a split;
- :mod:`~labelnoise.engine.records`: per-example records of chosen epochs and their file;
- :mod:`~labelnoise.engine.checkpoint`: fingerprints, config differences, RNG states;
- :mod:`~labelnoise.engine.folds`: out-of-fold predictions (cross-fitting).

The engine knows no method, dataset or params file: it takes a model, a :class:`~labelnoise.views.TrainView`, a
task and a training recipe (any object with the ``train`` params' fields).
"""

from labelnoise.engine.augment import crop_flip, resolve_augment
from labelnoise.engine.checkpoint import data_fingerprint, module_fingerprint
from labelnoise.engine.loop import (
    EpochState,
    FitResult,
    NonFiniteLossError,
    TrainingInterrupted,
    fit,
    log_to_stderr,
    train_one_epoch,
)
from labelnoise.engine.optim import lr_factor, make_optimizer, make_scheduler
from labelnoise.engine.predict import evaluate_accuracy, predict_logits
from labelnoise.engine.records import WeightLog, load_weights, save_weights, weight_epochs
from labelnoise.engine.task import Task

__all__ = [
    "EpochState", "FitResult", "NonFiniteLossError", "Task", "TrainingInterrupted", "WeightLog", "crop_flip",
    "data_fingerprint", "evaluate_accuracy", "fit", "load_weights", "log_to_stderr", "lr_factor", "make_optimizer",
    "make_scheduler", "module_fingerprint", "predict_logits", "resolve_augment", "save_weights", "train_one_epoch",
    "weight_epochs",
]
