"""CIFAR-100 (Krizhevsky 2009): 60 000 colour photos of 100 classes in 20 superclasses, 32x32, 50 000 train +
10 000 official test."""

from __future__ import annotations

import numpy as np

from labelnoise.datasets import Cifar, Dataset, register_dataset

# Superclass (coarse label, 0..19) of each fine label 0..99, as in the dataset's own `coarse_labels` field; fine
# labels are in the order of `fine_label_names` (alphabetical).
CIFAR100_COARSE: tuple[int, ...] = (
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3,
    3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15,
    0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10,
    16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19,
    2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19,
    18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
)


def superclass_map(coarse: tuple[int, ...] = CIFAR100_COARSE) -> dict[int, int]:
    """Each fine class → the next class of its superclass (circularly, by fine label index).

    This is the true superclass structure. Note: Patrini et al.'s and Co-teaching's reference code flip within
    blocks of 5 *consecutive* fine indices instead, which are not superclasses.
    """
    c = np.asarray(coarse)
    out: dict[int, int] = {}
    for s in range(int(c.max()) + 1):
        members = np.flatnonzero(c == s).tolist()  # 5 fine labels, increasing
        out.update({a: b for a, b in zip(members, members[1:] + members[:1], strict=True)})
    return out


CIFAR100 = register_dataset(Dataset(
    name="cifar100",
    shape=(3, 32, 32),
    num_classes=100,
    official_test=True,
    source=Cifar("CIFAR100"),
    augment="crop_flip",
    class_map=superclass_map(),
    open_set_auto="white_noise",
))
