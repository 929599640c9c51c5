"""Model registry (timm style): ``create_model(name, **kw)`` → an ``nn.Module`` that eats uint8 images.

Every model starts with :class:`Normalize`: uint8 (B, C, H, W) → float, ``/255``, then per-channel
``(x - mean) / std`` with ``mean``/``std`` stored as buffers. The statistics are computed by the
caller from the TRAIN images (no labels needed, see :func:`channel_stats`), so a checkpoint is
self-contained: evaluation needs only the state_dict and uint8 images.

Models:
- ``cnn``: 3 conv blocks (32-64-128, conv3x3 + BN + ReLU, max-pool between), global average
  pooling, a hidden FC layer (256, ReLU) and the linear head. Works on 8x8 digits, 28x28
  (Fashion-)MNIST and 32x32 CIFAR. (What the hidden layer is worth, measured: docs/layout.md.)
- ``preact_resnet32``: the CIFAR pre-activation ResNet-32 (He et al. 2016b, "Identity Mappings"):
  3 stages x 5 basic blocks, 16/32/64 channels; the network MentorNet uses on CIFAR.
- ``wrn56_10``: the wide ResNet of the official MentorNet code on CIFAR (its ``resnet101`` student:
  pre-activation, 3 stages x 9 basic blocks, 16-channel stem then 160/320/640 channels, leaky ReLU 0.1;
  shortcuts here are 1x1 projections where the shape changes, the official code pads an average-pooled input).
- ``resnet18``: torchvision's ResNet-18; for small images (<= 64 px) the stem becomes a stride-1
  conv without max-pool, as is standard on CIFAR.

``create_model(..., members=2)`` builds an :class:`Ensemble` of that many independently initialised networks of
one architecture, whose prediction is their mean logits (DivideMix's two networks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

# ----------------------------------------------------------------------------- input


class Normalize(nn.Module):
    """uint8 (B, C, H, W) in [0, 255] → float32 ``(x / 255 - mean) / std`` per channel.

    ``mean``/``std`` are buffers (in [0, 1] units), so they travel in the state_dict.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} channels but std has {len(std)}")
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) uint8 → (B, C, H, W) float32
        # One fused multiply-add: x * 1/(255 std) - mean/std. Keeps x's memory format (channels_last).
        scale = 1.0 / (255.0 * self.std)
        return x.to(torch.float32) * scale - self.mean / self.std


class ImageClassifier(nn.Module):
    """``normalize`` (uint8 → standardised float) followed by ``net`` (logits (B, K)).

    ``name``, ``in_channels`` and ``image_size`` (when given) are what the network was built for: images of
    another shape (data re-prepared after the model was trained, say) fail with one clear ``ValueError``
    instead of a shape error deep inside a layer, or silently wrong logits after global pooling.
    """

    def __init__(self, normalize: Normalize, net: nn.Module, *, name: str = "model",
                 in_channels: int | None = None, image_size: int | None = None) -> None:
        super().__init__()
        self.normalize = normalize
        self.net = net
        self.name, self.in_channels, self.image_size = name, in_channels, image_size

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) uint8 → (B, K)
        if self.in_channels is not None and (
                x.dim() != 4 or x.shape[1] != self.in_channels or max(x.shape[2:]) != self.image_size):
            raise ValueError(f"{self.name} was built for images (B, {self.in_channels}, {self.image_size}, "
                             f"{self.image_size}), got {tuple(x.shape)}: the data changed after the model was "
                             "trained; re-run the stages from train_student (dvc repro)")
        return self.net(self.normalize(x))


class Ensemble(nn.Module):
    """Networks of one architecture side by side (``members``); the prediction is their mean logits (the official
    DivideMix test: the sum of its two networks' outputs, whose argmax is the same). Training methods that own
    several networks (DivideMix) reach each one as ``members[i]``."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) uint8 → (B, K) mean logits
        return torch.stack([member(x) for member in self.members]).mean(dim=0)


@torch.no_grad()
def channel_stats(images: Tensor, *, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images (N, C, H, W), in [0, 1] units.

    Computed chunk by chunk in float64 so the whole dataset is never converted to float at once.
    A constant channel gets std 1 (avoids dividing by zero).
    """
    if images.dim() != 4:
        raise ValueError(f"expected images of shape (N, C, H, W), got {tuple(images.shape)}")
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].to(torch.float64) / 255.0  # (b, C, H, W)
        total += x.sum(dim=(0, 2, 3))
        total_sq += x.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / max(count, 1)
    var = (total_sq / max(count, 1) - mean.square()).clamp_min(0.0)
    std = var.sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))
    return mean.tolist(), std.tolist()


# ----------------------------------------------------------------------------- cnn


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    # bias=False: BatchNorm's shift makes a conv bias redundant.
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """conv3x3-BN-ReLU blocks (``widths``), max-pool between blocks, global average pool, FC-ReLU, linear head.

    28x28 → 14x14 → 7x7; 8x8 → 4x4 → 2x2. Global pooling makes it independent of the image size.
    ``hidden=0`` gives the plain linear head.
    """

    def __init__(
        self, *, num_classes: int, in_channels: int, widths: Sequence[int] = (32, 64, 128), hidden: int = 256
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for i, width in enumerate(widths):
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            layers += _conv_bn_relu(cin, width)
            cin = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        if hidden:
            self.head: nn.Module = nn.Sequential(
                nn.Linear(cin, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)
            )
        else:
            self.head = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) → (B, K)
        return self.head(torch.flatten(self.pool(self.features(x)), 1))  # (B, widths[-1]) → (B, K)


class ConvPoolNet(nn.Module):
    """The block of the airbench line of fast CIFAR networks (Jordan 2024, "94% on CIFAR-10 in 3.29 seconds"):
    conv3x3 → max-pool 2 → BN → GELU → conv3x3 → BN → GELU, one block per width (``widths``); global max pool,
    a linear head. The second conv of a block runs at the pooled resolution: depth at a quarter of the cost.

    32x32 → 16x16 → 8x8 → 4x4. Without airbench's whitening layer, test-time augmentation and lookahead: the
    project's recipe (optimiser, schedule, augmentation) trains it like any other network.
    """

    def __init__(self, *, num_classes: int, in_channels: int, widths: Sequence[int] = (64, 128, 256)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for width in widths:
            layers += [nn.Conv2d(cin, width, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(width),
                       nn.GELU(), nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.GELU()]
            cin = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) → (B, K)
        return self.head(torch.flatten(torch.amax(self.features(x), dim=(2, 3)), 1))  # (B, widths[-1]) → (B, K)


# ----------------------------------------------------------------------------- preact resnet


class PreActBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 + shortcut (He et al. 2016b, Fig. 4e)."""

    def __init__(self, cin: int, cout: int, stride: int, leak: float = 0.0) -> None:
        super().__init__()
        self.leak = leak
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        # Projection shortcut (1x1 conv) only where the shape changes.
        self.shortcut = (
            nn.Conv2d(cin, cout, 1, stride=stride, bias=False) if stride != 1 or cin != cout else None
        )

    def act(self, x: Tensor) -> Tensor:
        return torch.nn.functional.leaky_relu(x, self.leak) if self.leak else torch.relu(x)

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.bn1(x))
        # The shortcut branches off after the first pre-activation when it projects (as in the paper).
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.act(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """CIFAR PreAct ResNet: stem conv3x3 (``stem`` channels, default the first width), 3 stages of ``blocks``
    blocks (``widths``, default 16/32/64), BN-ReLU, GAP, linear; ``leak`` > 0: leaky ReLUs.

    Depth = 6 * blocks + 2 (blocks=5 → ResNet-32; blocks=9, widths 160/320/640 → the wide ResNet-56-10).
    """

    def __init__(
        self, *, num_classes: int, in_channels: int, blocks: int = 5, widths: Sequence[int] = (16, 32, 64),
        stem: int | None = None, leak: float = 0.0,
    ) -> None:
        super().__init__()
        self.leak = leak
        cin = stem or widths[0]
        self.stem = nn.Conv2d(in_channels, cin, 3, padding=1, bias=False)
        stages: list[nn.Module] = []
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            stage = [PreActBlock(cin, width, stride, leak)] + [PreActBlock(width, width, 1, leak)
                                                               for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            cin = width
        self.stages = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(cin)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) → (B, K)
        out = self.bn(self.stages(self.stem(x)))
        out = torch.nn.functional.leaky_relu(out, self.leak) if self.leak else torch.relu(out)
        return self.head(torch.flatten(self.pool(out), 1))


# ----------------------------------------------------------------------------- torchvision resnet18

SMALL_IMAGE = 64  # at or below this size the ImageNet stem (stride-2 7x7 conv + max-pool) loses too much


def _resnet18(*, num_classes: int, in_channels: int, image_size: int, pretrained: bool) -> nn.Module:
    from torchvision.models import ResNet18_Weights, resnet18

    net = resnet18(weights=None)
    if pretrained:
        weights = ResNet18_Weights.IMAGENET1K_V1
        try:
            state = weights.get_state_dict(progress=False)
        except Exception as e:  # offline, proxy, corrupt cache: one clear line, no traceback chain
            raise RuntimeError(
                f"resnet18: could not load torchvision's pretrained weights ({type(e).__name__}: {e}); "
                "connect to the internet once (they are cached in $TORCH_HOME) or set train.pretrained=false"
            ) from None
        net.load_state_dict(state)
    conv1 = net.conv1
    if image_size <= SMALL_IMAGE:
        net.maxpool = nn.Identity()
        if pretrained:
            conv1.stride = (1, 1)  # keep the pretrained 7x7 filters, drop their down-sampling
        else:
            conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)  # CIFAR stem
    if in_channels != 3:
        new = nn.Conv2d(
            in_channels, 64, conv1.kernel_size, stride=conv1.stride, padding=conv1.padding, bias=False
        )
        if pretrained:
            # Grey (or other) inputs: average the RGB filters, rescaled so activations keep their size.
            with torch.no_grad():
                mean_rgb = conv1.weight.mean(dim=1, keepdim=True)  # (64, 1, k, k)
                new.weight.copy_(mean_rgb.repeat(1, in_channels, 1, 1) * (3.0 / in_channels))
        conv1 = new
    net.conv1 = conv1
    net.fc = nn.Linear(net.fc.in_features, num_classes)
    return net


# ----------------------------------------------------------------------------- registry

Builder = Callable[..., nn.Module]

_REGISTRY: dict[str, Builder] = {
    "cnn": lambda *, num_classes, in_channels, image_size, pretrained: SmallCNN(
        num_classes=num_classes, in_channels=in_channels
    ),
    "cnn_wide": lambda *, num_classes, in_channels, image_size, pretrained: SmallCNN(
        num_classes=num_classes, in_channels=in_channels, widths=(64, 128, 256)
    ),
    "convpool": lambda *, num_classes, in_channels, image_size, pretrained: ConvPoolNet(
        num_classes=num_classes, in_channels=in_channels
    ),
    "convpool_small": lambda *, num_classes, in_channels, image_size, pretrained: ConvPoolNet(
        num_classes=num_classes, in_channels=in_channels, widths=(32, 64, 128)
    ),
    "preact_resnet20": lambda *, num_classes, in_channels, image_size, pretrained: PreActResNet(
        num_classes=num_classes, in_channels=in_channels, blocks=3
    ),
    "preact_resnet32": lambda *, num_classes, in_channels, image_size, pretrained: PreActResNet(
        num_classes=num_classes, in_channels=in_channels, blocks=5
    ),
    "wrn56_10": lambda *, num_classes, in_channels, image_size, pretrained: PreActResNet(
        num_classes=num_classes, in_channels=in_channels, blocks=9, widths=(160, 320, 640), stem=16, leak=0.1
    ),
    "resnet18": _resnet18,
}


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    pretrained: bool = False,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    members: int = 1,
) -> nn.Module:
    """Build model ``name`` taking uint8 (B, in_channels, H, W) images → logits (B, num_classes).

    ``mean``/``std``: per-channel statistics of the train images in [0, 1] units
    (:func:`channel_stats`); ``None`` means 0 and 1 (scaling by 1/255 only).
    ``pretrained`` is only meaningful for ``resnet18`` (torchvision weights, needs network access once).
    ``members`` > 1: an :class:`Ensemble` of that many such networks, initialised one after the other.
    """
    if members > 1:
        return Ensemble([create_model(name, num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                                      pretrained=pretrained, mean=mean, std=std) for _ in range(members)])
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r} (known: {', '.join(list_models())})")
    if pretrained and name != "resnet18":
        raise ValueError(f"{name}: no pretrained weights (only resnet18 has them)")
    mean = [0.0] * in_channels if mean is None else list(mean)
    std = [1.0] * in_channels if std is None else list(std)
    if len(mean) != in_channels or len(std) != in_channels:
        raise ValueError(f"mean/std need {in_channels} values (one per channel), got {len(mean)}/{len(std)}")
    build = _REGISTRY[name]
    net = build(num_classes=num_classes, in_channels=in_channels, image_size=image_size, pretrained=pretrained)
    return ImageClassifier(Normalize(mean, std), net, name=name, in_channels=in_channels, image_size=image_size)


# ----------------------------------------------------------------------------- saved models


MODEL_RECORD_KEYS = ("model_name", "model_kwargs", "state_dict")  # what load_model needs of a model record


def network_kwargs(images: Tensor, num_classes: int, *, members: int = 1) -> dict[str, Any]:
    """:func:`create_model`'s keyword arguments for uint8 ``images`` (N, C, H, W): the class count, channels, size
    and the images' per-channel statistics; ``members`` > 1: an ensemble."""
    _, channels, height, width = images.shape
    mean, std = channel_stats(images)  # (C,) each
    return dict(num_classes=num_classes, in_channels=channels, image_size=max(height, width), mean=mean, std=std,
                **({"members": members} if members > 1 else {}))


def model_record(
    model: nn.Module, *, model_name: str, model_kwargs: dict[str, Any], epoch: int, clean_acc: float,
    config: dict[str, Any], classes: Sequence[str],
) -> dict[str, Any]:
    """The dict written for a trained model (``models/student.pt``); :func:`load_model` reads it back.

    ``model_kwargs`` are ``create_model``'s keyword arguments; ``pretrained`` is stored as False
    because the weights are in ``state_dict`` (loading never downloads). ``classes``: the K class names, so the
    model describes its output; its input is uint8 images of ``model_kwargs``' ``in_channels`` and ``image_size``
    (it normalises them itself), which :func:`labelnoise.api.predict` makes any image file into.
    """
    if len(classes) != int(model_kwargs["num_classes"]):
        raise ValueError(f"{len(classes)} class names for a model of {model_kwargs['num_classes']} classes")
    kwargs = {**model_kwargs, "pretrained": False}
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return {
        "model_name": model_name,
        "model_kwargs": kwargs,
        "state_dict": state,
        "num_classes": int(kwargs["num_classes"]),
        "epoch": int(epoch),
        "clean_acc": float(clean_acc),
        "config": config,
        "classes": [str(c) for c in classes],
    }


def load_model(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild a model saved by the student stage (:func:`model_record`); returns it in eval mode on ``device``."""
    from labelnoise.io import read_torch

    record = read_torch(path, remedy="re-run the stage that trained it (dvc repro)", keys=MODEL_RECORD_KEYS)
    return model_from_record(record, device)


def model_from_record(record: dict[str, Any], device: torch.device | str = "cpu") -> nn.Module:
    """The network of a model record (:func:`model_record`), in eval mode on ``device``."""
    kwargs = {**record["model_kwargs"], "pretrained": False}
    model = create_model(record["model_name"], **kwargs)
    model.load_state_dict(record["state_dict"])
    return model.to(device).eval()
