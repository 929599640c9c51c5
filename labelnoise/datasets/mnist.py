"""MNIST (LeCun et al. 1998): 70 000 handwritten digits, 28x28 grey, 60 000 train + 10 000 official test."""

from __future__ import annotations

from labelnoise.datasets import Dataset, Idx, register_dataset

# Asymmetric noise {true: noisy}: 2 -> 7, 3 -> 8, 5 <-> 6, 7 -> 1 (Patrini et al. 2017, Han et al. 2018).
MNIST_MAP: dict[int, int] = {
    2: 7,
    3: 8,
    5: 6,
    6: 5,
    7: 1,
}

MNIST = register_dataset(Dataset(
    name="mnist",
    shape=(1, 28, 28),
    num_classes=10,
    official_test=True,
    source=Idx("MNIST"),  # no payload table: torchvision's archive md5s are the proof
    augment="none",
    class_map=MNIST_MAP,
    open_set_auto="fashion_mnist",  # digits would be MNIST's own classes
    same_classes=("digits",),
))
