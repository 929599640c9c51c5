"""The pieces of MixMatch (Berthelot et al., NeurIPS 2019) as DivideMix uses them (Li, Socher and Hoi, ICLR 2020;
official code LiJunnan1992/DivideMix, ``Train_cifar.py``): sharpened guesses, one mixup of labelled and unlabelled
examples, the semi-supervised loss and the prior penalty. Every method that mixes or guesses labels takes them from
here (DivideMix, label correction's semi-supervised retraining, MentorMix's Beta draws).

All randomness comes from the caller's ``generator`` (seeded, checkpointed), so a resumed run mixes the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labelnoise.engine.augment import crop_flip


def beta_draw(alpha: float, n: int, *, generator: torch.Generator, device: torch.device | str = "cpu") -> Tensor:
    """(n,) float32 draws of Beta(α, α) from ``generator`` (torch.distributions.Beta takes no generator:
    Beta(α, α) = G1 / (G1 + G2) with G1, G2 ~ Gamma(α, 1)); both Gamma draws 0 (a tiny α) gives 1 (no mixing)."""
    g = torch._standard_gamma(torch.full((2, n), alpha, dtype=torch.float64, device=device), generator=generator)
    return (g[0] / (g[0] + g[1])).nan_to_num(nan=1.0).float()


def sharpen(p: Tensor, temperature: float) -> Tensor:
    """(B, K) distributions raised to 1/T and renormalised (T < 1 makes them more confident)."""
    p = p.float() ** (1.0 / temperature)
    return p / p.sum(dim=1, keepdim=True)


def mix(x: Tensor, targets: Tensor, *, alpha: float, generator: torch.Generator) -> tuple[Tensor, Tensor, float]:
    """MixMatch's mixup of a whole batch: one λ ~ Beta(α, α), λ = max(λ, 1 − λ) (the mix stays nearer its first
    example), partners a random permutation of the batch (labelled and unlabelled together).

    x: (B, C, H, W) images (any dtype), targets: (B, K) soft labels → (λ·x + (1 − λ)·x[perm] float32,
    λ·t + (1 − λ)·t[perm], λ)."""
    lam = float(beta_draw(alpha, 1, generator=generator)[0])
    lam = max(lam, 1.0 - lam)
    perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
    xf = x.float()
    mixed = lam * xf + (1.0 - lam) * xf[perm]
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        mixed = mixed.contiguous(memory_format=torch.channels_last)
    return mixed, lam * targets + (1.0 - lam) * targets[perm], lam


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """() mean over the batch of −Σ_k t_k log softmax(logits)_k (0 for an empty batch); label correction's L_c
    too."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    return -(F.log_softmax(logits.float(), dim=1) * targets.float()).sum(dim=1).mean()


def guess_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """() MixMatch's unsupervised loss: the mean squared difference of softmax(logits) and the guessed targets,
    over every entry (B × K) (0 for an empty batch)."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    return ((torch.softmax(logits.float(), dim=1) - targets) ** 2).mean()


def prior_penalty(logits: Tensor, prior: Tensor) -> Tensor:
    """() KL(prior ‖ mean prediction) = Σ_k π_k log(π_k / p̄_k): keeps the batch's mean prediction near the class
    prior ``prior`` (K,), so no class is guessed away (DivideMix's regulariser, uniform π)."""
    mean = torch.softmax(logits.float(), dim=1).mean(dim=0)
    return (prior * torch.log(prior / mean.clamp_min(1e-12))).sum()


def ramp(progress: float, *, start: float, length: float) -> float:
    """A linear ramp from 0 at ``start`` to 1 at ``start + length`` (epochs; ``length`` 0: a step at ``start``)."""
    if length <= 0:
        return float(progress >= start)
    return min(max((progress - start) / length, 0.0), 1.0)


def views(x: Tensor, idx: Tensor, like: Tensor, *, augment: str, padding: int,
          generator: torch.Generator) -> list[Tensor]:
    """The views of the batch at positions ``idx`` of the uint8 split ``x`` (N, C, H, W) (any device) that guesses
    average over, on ``like``'s device and in its memory format (the engine's batch): two crop + flip draws
    (``crop_flip``, the official two ``transform_train`` calls), or the images themselves once (``none``: two equal
    views would only repeat them)."""
    raw = x[idx.to(x.device)].to(like.device)  # (B, C, H, W) uint8 before any augmentation
    out = [raw] if augment == "none" else [crop_flip(raw, padding=padding, generator=generator) for _ in range(2)]
    if like.is_contiguous(memory_format=torch.channels_last) and not like.is_contiguous():
        out = [v.contiguous(memory_format=torch.channels_last) for v in out]
    return out


def mean_softmax(net: nn.Module, batches: list[Tensor]) -> tuple[Tensor, Tensor]:
    """The mean over ``batches`` (views of one batch) of softmax(net(view)) (B, K), and the first view's logits
    (B, K) float32; no gradient."""
    with torch.no_grad():
        logits = [net(x).float() for x in batches]
        return torch.stack([torch.softmax(lg, dim=1) for lg in logits]).mean(dim=0), logits[0]


def mixmatch_loss(net: nn.Module, batch_views: list[Tensor], labelled: Tensor, labelled_targets: Tensor,
                  guesses: Tensor, *, alpha: float, lambda_u: float, generator: torch.Generator) -> dict[str, Tensor]:
    """One MixMatch step of ``net`` (DivideMix's ``train``): every view of the labelled examples (mask ``labelled``
    (B,)) with their targets (L, K), then every view of the others with their guesses (U, K), mixed
    (:func:`mix`); the loss is soft cross-entropy on the labelled part + ``lambda_u`` · :func:`guess_loss` on the
    rest + :func:`prior_penalty` (uniform prior) on all. Returns {"loss", "lx", "lu", "penalty"} (the parts
    detached)."""
    inputs = torch.cat([v[labelled] for v in batch_views] + [v[~labelled] for v in batch_views])
    targets = torch.cat([labelled_targets] * len(batch_views) + [guesses] * len(batch_views))
    mixed, mixed_targets, _ = mix(inputs, targets, alpha=alpha, generator=generator)
    logits = net(mixed).float()
    n_x = int(labelled.sum()) * len(batch_views)
    lx = soft_cross_entropy(logits[:n_x], mixed_targets[:n_x])
    lu = guess_loss(logits[n_x:], mixed_targets[n_x:])
    k = logits.shape[1]
    penalty = prior_penalty(logits, torch.full((k,), 1.0 / k, device=logits.device))
    return {"loss": lx + lambda_u * lu + penalty, "lx": lx.detach(), "lu": lu.detach(), "penalty": penalty.detach()}
