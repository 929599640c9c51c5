"""The instance-noise reference classifier: a ``cnn`` trained on the trusted clean subset only scores every train
example (``noise.kind: instance`` flips the examples it finds hardest; see
:func:`labelnoise.noise.instance.corrupt_instance`). It trains through the engine, above the noise models, which work
on arrays only and are handed it as a :class:`labelnoise.noise.Classifier` (:func:`trainer`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from labelnoise.engine import Task, fit, predict_logits
from labelnoise.models import create_model, network_kwargs
from labelnoise.runtime import resolve_channels_last, resolve_device, seeded
from labelnoise.views import TrainView


def reference_probabilities(
    x_fit: np.ndarray,
    y_fit: np.ndarray,
    x_score: np.ndarray,
    *,
    classes: list[str],
    dataset: str,
    recipe: Any,
    seed: int,
    device: Any = "cpu",
    log: Callable[[str], None] | None = None,
) -> np.ndarray:
    """Train the reference classifier (``recipe.model``) on (x_fit, y_fit) and return its probabilities on x_score.

    x_fit: uint8 (n_fit, C, H, W) with labels y_fit (n_fit,), the trusted clean subset; x_score: uint8
    (n, C, H, W), the train images (their labels are not passed: the classifier never sees them). Trained with
    plain cross-entropy through the engine with ``recipe`` (the ``train`` recipe with the ``noise.instance``
    overrides, :func:`recipe_for`); ``seed`` alone decides the initial weights and the batch order. Returns
    (n, K) float64 rows summing to 1 (softmax of the float32 logits, taken in float64). ``log(line)`` gets the
    per-epoch lines (None: silent).
    """
    xf, yf = torch.from_numpy(np.ascontiguousarray(x_fit)), torch.from_numpy(np.asarray(y_fit, dtype=np.int64))
    empty_x, empty_y = xf[:0], yf[:0]
    view = TrainView(x_train=xf, y_train=yf, x_clean=empty_x, y_clean=empty_y, x_val=empty_x, y_val=empty_y,
                     x_test=empty_x, y_test=empty_y, classes=list(classes), dataset=dataset)
    kwargs = network_kwargs(xf, len(classes))
    model = seeded(lambda: create_model(recipe.model, **kwargs), seed)  # `seed` only
    result = fit(model, view, Task(label_smoothing=recipe.label_smoothing), recipe=recipe, seed=seed, device=device,
                 log=(lambda line: log(f"reference classifier: {line}")) if log is not None else (lambda line: None),
                 purpose="instance-noise reference", remedy="lower noise.instance.lr")
    device = torch.device(device)
    logits = predict_logits(result.model, torch.from_numpy(np.ascontiguousarray(x_score)),
                            batch_size=recipe.eval_batch_size, device=device,
                            channels_last=resolve_channels_last(recipe.channels_last, device))  # (n, K) float32
    return torch.softmax(logits.double(), dim=1).numpy()


def recipe_for(train: Any, settings: Any) -> Any:
    """The reference classifier's recipe: the ``train`` recipe with the overrides of ``settings`` (the block
    ``noise.instance``: its network, epochs, peak lr, batch size and precision; fp32 by default, so the noisy labels
    do not depend on the CPU)."""
    return dataclasses.replace(train, model=settings.model, pretrained=False, epochs=settings.epochs,
                               lr=settings.lr, batch_size=settings.batch_size, precision=settings.precision)


def trainer(train: Any, *, device: str = "auto", log: Callable[[str], None] | None = None) -> Callable[..., np.ndarray]:
    """The reference classifier as the noise models take it (:class:`labelnoise.noise.Classifier`): trains with the
    ``train`` recipe and a model's ``settings`` (:func:`recipe_for`, seeded by ``settings.seed``) on ``device`` (the
    ``base.device`` param, resolved when it trains: a model that trains none needs no device)."""

    def train_and_score(x_fit: np.ndarray, y_fit: np.ndarray, x_score: np.ndarray, *, classes: list[str],
                        dataset: str, settings: Any) -> np.ndarray:
        return reference_probabilities(x_fit, y_fit, x_score, classes=classes, dataset=dataset,
                                       recipe=recipe_for(train, settings), seed=settings.seed,
                                       device=resolve_device(device), log=log)

    return train_and_score
