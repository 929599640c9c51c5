"""scikit-learn's bundled 8x8 handwritten digits (1797 images): always offline, the dataset of the tiny preset.

This file is the whole dataset, and the example to copy for a new one: save ``labelnoise/datasets/<name>.py``
with a function that returns the arrays and one ``register_dataset`` call; the package imports every such file,
so ``data.dataset: <name>`` works with no other change. (For files verified into a cache, use ``Idx`` or
``Cifar`` as ``mnist.py`` and ``cifar10.py`` do, or subclass ``Cached``.)
"""

from __future__ import annotations

import numpy as np

from labelnoise.datasets import Arrays, Bundled, Dataset, register_dataset
from labelnoise.datasets.mnist import MNIST_MAP


def load() -> Arrays:
    """All digits: images uint8 (1797, 1, 8, 8), pixel values 0..16 scaled to 0..255; labels int64 (1797,)."""
    from sklearn.datasets import load_digits  # lazy: only this dataset needs scikit-learn

    d = load_digits()
    images = (d.images.astype(np.int64) * 255 // 16).astype(np.uint8)[:, None]  # (N, 8, 8) -> (N, 1, 8, 8)
    return Arrays(
        images=images,
        labels=d.target.astype(np.int64),
        n_official_train=len(images),  # all of them: there is no official test part
        classes=[str(c) for c in d.target_names],  # class names in label order: "0" .. "9"
    )


DIGITS = register_dataset(Dataset(
    name="digits",  # the value of params `data.dataset`
    shape=(1, 8, 8),  # (C, H, W): load() is checked against it, and so is num_classes
    num_classes=10,
    official_test=False,  # so stage download holds out `data.test_size` images as the test split
    source=Bundled(load),  # how the arrays are obtained: a function here; nothing to download or verify
    augment="none",  # what `student.augment: auto` picks (crop_flip suits 32x32 photos, not 8x8 digits)
    class_map=MNIST_MAP,  # `noise.asymmetric.class_map: auto`: the same ten digits, the same confusions
    open_set_auto="white_noise",  # `noise.open_set.source: auto`: seeded uniform pixels, offline like digits
    same_classes=("mnist",),  # MNIST images show digits too, so they are never open-set noise for it (and back)
))
