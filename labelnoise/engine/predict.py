"""Prediction and accuracy of a model on a uint8 split, in eval mode, batch by batch."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """Autocast to ``dtype`` on ``device``'s type; ``None``: off (plain fp32)."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


@torch.inference_mode()
def predict_logits(
    model: nn.Module, x: Tensor, *, batch_size: int, device: torch.device | str,
    autocast_dtype: torch.dtype | None = None, channels_last: bool = False,
) -> Tensor:
    """Logits of ``model`` in eval mode. x: uint8 (N, C, H, W) on any device → float32 (N, K) on CPU."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size].to(device, non_blocking=True)  # (b, C, H, W) uint8
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with autocast(device, autocast_dtype):
                out.append(model(xb).float().cpu())  # (b, K)
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 0)


def evaluate_accuracy(
    model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int, device: torch.device | str,
    autocast_dtype: torch.dtype | None = None, channels_last: bool = False,
) -> dict[str, float]:
    """Accuracy and mean cross-entropy against labels y (N,). Empty split → NaN (n = 0)."""
    if x.shape[0] == 0:
        return {"acc": math.nan, "loss": math.nan, "n": 0}
    logits = predict_logits(model, x, batch_size=batch_size, device=device, autocast_dtype=autocast_dtype,
                            channels_last=channels_last)  # (N, K)
    y = y.cpu()
    return {
        "acc": (logits.argmax(dim=1) == y).float().mean().item(),
        "loss": F.cross_entropy(logits, y).item(),
        "n": int(y.shape[0]),
    }


