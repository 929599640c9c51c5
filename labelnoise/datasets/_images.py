"""Images of one dataset fitted to another's shape: the replacement images of open-set noise."""

from __future__ import annotations

import numpy as np


def fit_images(images: np.ndarray, shape: tuple[int, int, int], *, chunk: int = 4096) -> np.ndarray:
    """uint8 (M, C, H, W) images → uint8 (M, *shape): channels by repetition (1 → 3) or ITU-R 601 luma
    (3 → 1), size by bilinear resampling (antialiased when shrinking), rounded to the nearest integer."""
    import torch  # lazy: importing the datasets package needs numpy only
    import torch.nn.functional as F

    c_out, h_out, w_out = shape
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"fit_images: need uint8 (M, C, H, W), got {images.dtype} {images.shape}")
    c_in = images.shape[1]
    if c_in not in (1, 3) or c_out not in (1, 3):
        raise ValueError(f"fit_images: can map 1 or 3 channels only, got {c_in} -> {c_out}")
    luma = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float32).view(1, 3, 1, 1)
    out = np.empty((len(images), c_out, h_out, w_out), dtype=np.uint8)
    for start in range(0, len(images), chunk):
        x = torch.from_numpy(images[start : start + chunk]).float()  # (b, C, H, W) in 0..255
        if c_in == 3 and c_out == 1:
            x = (x * luma).sum(dim=1, keepdim=True)
        elif c_in == 1 and c_out == 3:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[2:] != (h_out, w_out):
            shrink = h_out < x.shape[2] or w_out < x.shape[3]
            x = F.interpolate(x, size=(h_out, w_out), mode="bilinear", align_corners=False, antialias=shrink)
        out[start : start + chunk] = x.round().clamp(0, 255).to(torch.uint8).numpy()
    return out

