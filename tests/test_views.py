"""The train view: noisy labels in place of the true ones, which it does not carry; massive noise's subset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from labelnoise import noise, views
from labelnoise.datasets import Prepared
from labelnoise.noise import NoisyLabels
from tests.test_datasets import _prepared


def test_train_view_holds_no_true_train_labels() -> None:
    p = _prepared()
    true = p.labels[p.train_idx]
    noisy = (true + 1) % 4  # every label changed
    view = views.make_train_view(p, NoisyLabels(noisy, noisy != true))
    assert views.TRAIN_VIEW_FIELDS == ("x_train", "y_train", "x_clean", "y_clean", "x_val", "y_val",
                                          "x_test", "y_test", "classes", "dataset", "trusted_in_train",
                                          "y_clean_given")
    assert view.y_clean_given is None  # the noise gave the trusted examples no label of its own
    for name in views.TRAIN_VIEW_FIELDS:
        value = getattr(view, name)
        assert not isinstance(value, Prepared)
        if isinstance(value, torch.Tensor) and value.ndim == 1 and len(value) == len(true):
            assert not np.array_equal(value.numpy(), true), name
    assert torch.equal(view.y_train, torch.from_numpy(noisy))
    assert view.x_train.dtype == torch.uint8 and view.x_train.shape == (len(p.train_idx), 1, 8, 8)
    assert view.y_clean.dtype == torch.int64 and torch.equal(view.y_clean, torch.from_numpy(p.labels[p.clean_idx]))
    assert view.x_val.shape == (0, 1, 8, 8) and view.y_val.shape == (0,)  # no val: empty of the right dims
    assert view.num_classes == 4 and view.dataset == "digits"
    with pytest.raises(ValueError, match="train examples"):
        views.make_train_view(p, NoisyLabels(noisy[:-1], noisy[:-1] != true[:-1]))
    with pytest.raises(TypeError, match="NoisyLabels"):  # labels alone would silently drop open-set images
        views.make_train_view(p, noisy)
    given = (p.labels[p.clean_idx] + 1) % 4  # a label file's labels of the trusted examples travel beside theirs
    paired = views.make_train_view(p, NoisyLabels(noisy, noisy != true, trusted=given))
    assert torch.equal(paired.y_clean_given, torch.from_numpy(given))
    assert views.trusted_only(paired).y_clean_given is None and views.without_evaluation(paired).y_clean_given is None
    with pytest.raises(ValueError, match="given labels of trusted examples"):
        views.make_train_view(p, NoisyLabels(noisy, noisy != true, trusted=given[:-1]))


def test_train_view_of_massive_noise_holds_only_its_examples(tmp_path: Path) -> None:
    p = _prepared()
    true = p.labels[p.train_idx]
    nl = noise.massive.corrupt_massive(true, alpha=1.0, n_clean=8, num_classes=4, rng=np.random.default_rng(0))
    path = noise.save_noisy(tmp_path / "noisy.npz", nl)
    again = noise.load_noisy(path)
    np.testing.assert_array_equal(again.index, nl.index)
    view = views.make_train_view(p, again)
    np.testing.assert_array_equal(view.x_train.numpy(), p.images[p.train_idx[nl.index]])
    np.testing.assert_array_equal(view.y_train.numpy(), nl.labels)
    np.testing.assert_array_equal(views.true_train_labels(p, again), true[nl.index])
    np.testing.assert_array_equal(views.true_train_labels(p, NoisyLabels(true, true != true)), true)
