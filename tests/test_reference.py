"""The instance-noise reference classifier: trained on the clean subset with the shared recipe and its own
overrides, seeded by its own seed only, bit-identical probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from labelnoise import reference
from labelnoise.config import load_config
from labelnoise.noise.instance import corrupt_instance

REPO = Path(__file__).resolve().parent.parent


def digits_clean_and_train(n_clean: int = 150, n_train: int = 300):
    """Digits (1, 8, 8) split into a small clean subset and a small train pool, class-stratified enough."""
    from labelnoise.datasets import _load_digits

    d = _load_digits()
    images, labels, classes = d.images, d.labels, d.classes
    order = np.random.default_rng(0).permutation(len(labels))
    clean, train = order[:n_clean], order[n_clean : n_clean + n_train]
    return images[clean], labels[clean], images[train], labels[train], classes


def test_reference_classifier_is_seeded_and_bit_identical(one_thread) -> None:
    import torch

    x_fit, y_fit, x_train, y_train, classes = digits_clean_and_train()
    cfg = load_config(REPO / "params.yaml", ["noise.instance.epochs=4", "noise.instance.batch_size=32"])
    kw = dict(classes=classes, dataset="digits", recipe=reference.recipe_for(cfg.train, cfg.noise.instance))
    torch.manual_seed(0)
    a = reference.reference_probabilities(x_fit, y_fit, x_train, seed=4, **kw)
    torch.manual_seed(1)  # the global RNG (seeded by base.seed in a stage) must not matter
    b = reference.reference_probabilities(x_fit, y_fit, x_train, seed=4, **kw)
    c = reference.reference_probabilities(x_fit, y_fit, x_train, seed=5, **kw)
    assert a.shape == (len(x_train), 10) and a.dtype == np.float64
    np.testing.assert_allclose(a.sum(axis=1), 1.0)
    np.testing.assert_array_equal(a, b)  # same seed: bit-identical probabilities, hence labels
    assert not np.array_equal(a, c)
    assert (a.argmax(axis=1) == y_train).mean() > 0.5  # it learned something from 150 clean digits
    la, lb = corrupt_instance(y_train, a, rate=0.4), corrupt_instance(y_train, b, rate=0.4)
    np.testing.assert_array_equal(la.labels, lb.labels)


def test_the_recipe_is_the_shared_one_with_the_reference_overrides() -> None:
    cfg = load_config(REPO / "params.yaml", ["train.lr=0.3", "train.momentum=0.5", "noise.instance.lr=0.07"])
    settings = cfg.noise.instance
    r = reference.recipe_for(cfg.train, settings)
    assert (r.model, r.epochs, r.lr, r.batch_size, r.precision) == (
        settings.model, settings.epochs, 0.07, settings.batch_size, "fp32")
    assert r.momentum == 0.5 and r.weight_decay == cfg.train.weight_decay  # everything else: the shared recipe
