"""Augmentation on uint8 batches, drawn from the run's own seeded generator (so a resume repeats it exactly)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from labelnoise.datasets import get_dataset


def resolve_augment(augment: str, dataset: str) -> str:
    """An ``augment`` param: ``auto`` → the dataset's own default (its registry entry: ``crop_flip`` for CIFAR,
    ``none`` for the small grey datasets)."""
    if augment == "auto":
        return get_dataset(dataset).augment
    return augment


def crop_flip(x: Tensor, *, padding: int, generator: torch.Generator) -> Tensor:
    """Random crop after zero padding + random horizontal flip, independently per image.

    x: uint8 (B, C, H, W) → uint8 (B, C, H, W). Randomness comes only from ``generator`` (seeded,
    checkpointed), so runs and resumes repeat exactly. torchvision's v2 transforms draw one crop per
    call (the whole batch would share it), so the per-image offsets are gathered here.
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding), value=0)  # (B, C, H+2p, W+2p)
    offsets = torch.randint(0, 2 * padding + 1, (b, 2), generator=generator).to(x.device)  # (B, 2) row, col
    flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)  # (B,)
    rows = offsets[:, 0:1] + torch.arange(h, device=x.device)  # (B, H)
    cols = offsets[:, 1:2] + torch.arange(w, device=x.device)  # (B, W)
    out = padded[
        torch.arange(b, device=x.device)[:, None, None, None],
        torch.arange(c, device=x.device)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]  # (B, C, H, W)
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


