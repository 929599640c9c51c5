"""CIFAR-10 (Krizhevsky 2009): 60 000 colour photos of 10 classes, 32x32, 50 000 train + 10 000 official test."""

from __future__ import annotations

from labelnoise.datasets import Cifar, Dataset, register_dataset

# Asymmetric noise {true: noisy}: Patrini et al. 2017 (loss correction), also Co-teaching and Joint Optimization
# (Tanaka et al. 2018).
CIFAR10_MAP: dict[int, int] = {
    9: 1,  # truck -> automobile
    2: 0,  # bird -> airplane
    4: 7,  # deer -> horse
    3: 5,  # cat -> dog
    5: 3,  # dog -> cat
}

CIFAR10 = register_dataset(Dataset(
    name="cifar10",
    shape=(3, 32, 32),
    num_classes=10,
    official_test=True,
    source=Cifar("CIFAR10"),
    augment="crop_flip",  # random crop + horizontal flip, as every CIFAR paper trains
    class_map=CIFAR10_MAP,
    open_set_auto="cifar100",  # CIFAR-100 and CIFAR-10 share no class by construction
))
