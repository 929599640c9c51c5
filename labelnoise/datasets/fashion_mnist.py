"""Fashion-MNIST (Xiao et al. 2017): 70 000 garments and shoes, 28x28 grey, 60 000 train + 10 000 official test.
Offline from Debian's ``dataset-fashion-mnist`` (a ``data.mirrors`` folder)."""

from __future__ import annotations

from labelnoise.datasets import Dataset, Idx, register_dataset

# Asymmetric noise {true: noisy}: our analogue of the CIFAR-10 map, pairs of look-alike garments and shoes.
FASHION_MNIST_MAP: dict[int, int] = {
    6: 0,  # shirt -> T-shirt/top
    0: 6,  # T-shirt/top -> shirt
    2: 4,  # pullover -> coat
    4: 2,  # coat -> pullover
    5: 7,  # sandal -> sneaker
    7: 5,  # sneaker -> sandal
}

# sha256 of the decompressed IDX payloads of the official files, as shipped by Debian's dataset-fashion-mnist
# (same payload as zalandoresearch/fashion-mnist; Debian recompressed the .gz, so torchvision's md5 differs).
PAYLOAD_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

FASHION_MNIST = register_dataset(Dataset(
    name="fashion_mnist",
    shape=(1, 28, 28),
    num_classes=10,
    official_test=True,
    source=Idx("FashionMNIST", payload_sha256=PAYLOAD_SHA256),
    augment="none",
    class_map=FASHION_MNIST_MAP,
    open_set_auto="digits",  # scikit-learn's bundled 8x8 digits, upsampled to 28x28: always offline
))
