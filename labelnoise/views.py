"""What training sees: a :class:`TrainView` of the prepared data with the noisy train labels in place of the true
ones, which it does not carry. The true train labels reach evaluation code only (:func:`true_train_labels`)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from labelnoise.datasets import Prepared
from labelnoise.noise import NoisyLabels


@dataclass(frozen=True)
class TrainView:
    """Everything the training stages may see: noisy train labels, never the true ones.

    x_* are uint8 (n, C, H, W) tensors, y_* int64 (n,). ``val`` may be empty: (0, C, H, W) / (0,).
    """

    x_train: torch.Tensor
    y_train: torch.Tensor  # noisy labels
    x_clean: torch.Tensor
    y_clean: torch.Tensor  # trusted subset, true labels
    x_val: torch.Tensor
    y_val: torch.Tensor  # held-out, true labels
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    dataset: str
    trusted_in_train: int = 0  # the last this many train examples are the trusted subset, true labels (with_trusted)
    y_clean_given: torch.Tensor | None = None  # the noisy source's labels of the trusted subset, where it gave them

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def n_noisy(self) -> int:
        """The train examples with noisy labels: positions 0..n_noisy-1 of the train split (the trusted follow)."""
        return self.x_train.shape[0] - self.trusted_in_train


def digest(t: torch.Tensor) -> str:
    """A short hash of a tensor's values (16 hex digits)."""
    t = t.detach().cpu().contiguous()
    return hashlib.blake2b(t.numpy().tobytes() if t.numel() else b"", digest_size=8).hexdigest()


def test_split_id(view: TrainView) -> str:
    """Which test split a test accuracy was measured on: the test images' shape and the hashes of them and their
    labels."""
    return f"{tuple(view.x_test.shape)}:{digest(view.x_test)}:{digest(view.y_test)}"


def true_train_labels(prepared: Prepared, noisy: NoisyLabels) -> np.ndarray | None:
    """The true labels of the examples ``noisy`` labels, (m,) int64: for evaluation code only. None where the
    dataset has no true train labels (``data.truth: false``): then nothing may be measured against them."""
    idx = prepared.train_idx[noisy.positions(len(prepared.train_idx))]
    return prepared.labels[idx] if prepared.trusted(idx) or not idx.size else None


def make_train_view(prepared: Prepared, noisy: NoisyLabels) -> TrainView:
    """The training inputs: the noisy labels ``noisy.labels`` (int64 (n_train,), aligned with
    ``prepared.train_idx``) replace the true train labels, which this view does not carry; for open-set
    noise the train images of the masked examples are replaced by ``noisy.images``. The clean subset, val
    and test are never touched. The mask itself is not part of the view. A test split without true labels
    (``data.truth: false`` and no test split in the data) is left out: the view's test split is empty."""
    if not isinstance(noisy, NoisyLabels):
        raise TypeError("make_train_view: pass the NoisyLabels object (load_noisy(...)), not its labels: "
                        "open-set noise replaces train images too")
    labels = noisy.labels
    positions = noisy.positions(len(prepared.train_idx))  # massive noise trains on part of the split
    if labels.shape != positions.shape or (positions.size and positions[-1] >= len(prepared.train_idx)):
        raise ValueError(f"noisy labels: {labels.shape[0] if labels.ndim else 0} values for "
                         f"{len(prepared.train_idx)} train examples (re-run inject_noise after download)")
    if labels.size and (labels.min() < 0 or labels.max() >= len(prepared.classes)):
        raise ValueError(f"noisy labels must lie in [0, {len(prepared.classes)})")
    if noisy.images is not None and noisy.images.shape[1:] != prepared.images.shape[1:]:
        raise ValueError(f"open-set images are {noisy.images.shape[1:]}, the dataset's {prepared.images.shape[1:]} "
                         "(re-run inject_noise after download)")

    def x(idx: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(prepared.images[idx]))  # (n, C, H, W) uint8, a copy

    def y(idx: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(prepared.labels[idx].astype(np.int64))

    if noisy.trusted is not None and noisy.trusted.shape != prepared.clean_idx.shape:
        raise ValueError(f"noisy labels: {noisy.trusted.size} given labels of trusted examples for "
                         f"{prepared.clean_idx.size} trusted examples (re-run inject_noise after download)")
    test = prepared.test_idx if prepared.trusted(prepared.test_idx) else prepared.test_idx[:0]
    x_train = x(prepared.train_idx[positions])
    if noisy.images is not None:  # open-set noise: the masked examples' images are replaced (in index order)
        x_train[torch.from_numpy(noisy.mask)] = torch.from_numpy(noisy.images)
    return TrainView(
        x_train=x_train, y_train=torch.from_numpy(labels.astype(np.int64, copy=True)),
        x_clean=x(prepared.clean_idx), y_clean=y(prepared.clean_idx),
        x_val=x(prepared.val_idx), y_val=y(prepared.val_idx),
        x_test=x(test), y_test=y(test),
        classes=list(prepared.classes), dataset=prepared.dataset,
        y_clean_given=None if noisy.trusted is None else torch.from_numpy(noisy.trusted.astype(np.int64, copy=True)),
    )


TRAIN_VIEW_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(TrainView))


def without_test(view: TrainView) -> TrainView:
    """The view without test images: a fit on it monitors no test accuracy (a network that only predicts, whose
    per-epoch test evaluation would cost a third of its training time)."""
    return replace(view, x_test=view.x_test[:0], y_test=view.y_test[:0])


def without_evaluation(view: TrainView) -> TrainView:
    """The view without test images and without a clean subset: a fit on it evaluates nothing after each epoch and
    keeps its last epoch (a network that only predicts afterwards, such as a cross-fitting fold's)."""
    return replace(without_test(view), x_clean=view.x_clean[:0], y_clean=view.y_clean[:0], y_clean_given=None)


def trusted_only(view: TrainView) -> TrainView:
    """The view whose train split is the trusted clean subset with its true labels (and no clean subset left to
    select on: the fit keeps its last epoch). For methods that train on the trusted data alone."""
    empty_x, empty_y = view.x_clean[:0], view.y_clean[:0]
    return replace(view, x_train=view.x_clean, y_train=view.y_clean, x_clean=empty_x, y_clean=empty_y,
                   trusted_in_train=view.x_clean.shape[0], y_clean_given=None)


def with_trusted(view: TrainView) -> TrainView:
    """The view whose train split is the noisy train examples followed by the trusted ones (positions n.. of the
    new split, n = ``view.n_noisy``), each with its own label; the clean subset stays for monitoring, but it is now
    training data, so its accuracy is a training accuracy. A view that holds them already is returned as it is."""
    if view.trusted_in_train:
        return view
    return replace(view, x_train=torch.cat([view.x_train, view.x_clean]),
                   y_train=torch.cat([view.y_train, view.y_clean]), trusted_in_train=view.x_clean.shape[0])


def subset_view(view: TrainView, idx: np.ndarray) -> TrainView:
    """``view`` with only the train examples ``idx`` (ascending; clean subset, val and test unchanged); the trusted
    ones among them stay last."""
    idx = np.asarray(idx, dtype=np.int64)
    if idx.size > 1 and (np.diff(idx) <= 0).any():
        raise ValueError("subset_view: the train positions must be ascending")
    index = torch.from_numpy(idx)
    return replace(view, x_train=view.x_train[index], y_train=view.y_train[index],
                   trusted_in_train=int((idx >= view.n_noisy).sum()))
