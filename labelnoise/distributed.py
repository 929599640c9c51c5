"""Data-parallel training on PyTorch's own engine: ``torchrun --nproc_per_node N cli.py train-student``.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK (and the rendezvous address); :func:`init` then joins the
process group (gloo on CPU, NCCL on CUDA). Every rank holds the whole in-memory data and walks the same
seeded permutation; each global mini-batch of ``student.batch_size`` examples is split across the ranks
(rank r takes positions r, r + N, ...), the student is wrapped in DistributedDataParallel (gradients averaged
over ranks), the mentor sees the losses of the whole global batch (gathered, so the moving percentile, the
weights and the mentor refits are the same on every rank), per-example records are merged across ranks, and
only rank 0 writes outputs, checkpoints and MLflow runs. Without torchrun every function here is the
one-process identity.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Rank 0 (or no torchrun): the process that writes files and talks to MLflow."""
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


_DEVICE = torch.device("cpu")  # where collectives' own small tensors live (the rank's GPU under NCCL)


def init(device: str) -> None:
    """Join torchrun's process group once (no-op without torchrun or with one process). ``device``: the
    resolved device type; CUDA ranks use GPU LOCAL_RANK and NCCL, CPU ranks gloo."""
    global _DEVICE
    if dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    if device == "cuda":
        torch.cuda.set_device(local_rank())
        _DEVICE = torch.device("cuda", local_rank())
    dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())


def active() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` itself in one process; under torchrun the DistributedDataParallel around it (the ranks'
    gradients averaged; ``model`` keeps the weights, for state dicts and evaluation)."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def main_only(log: Callable[[str], None]) -> Callable[[str], None]:
    """``log`` on rank 0 (or without torchrun); a no-op on the other ranks."""
    return log if is_main() else (lambda line: None)


def shard(idx: Tensor) -> Tensor:
    """This rank's part of a global mini-batch of positions: every N-th, starting at the rank."""
    return idx[rank()::world_size()] if active() else idx


def gather(t: Tensor) -> tuple[Tensor, slice]:
    """(the global mini-batch's ``t``: every rank's shard (B_r, ...) put back in the batch's own order, this
    rank's positions in it). The inverse of :func:`shard`, so whatever is computed on the gathered batch (the
    moving percentile, the mentor's weights and their random draws) is what one process computes on the
    unsplit batch. One process: (t, everything)."""
    if not active():
        return t, slice(None)
    world = dist.get_world_size()
    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    lengths = [int(s) for s in sizes]
    padded = torch.zeros((max(lengths), *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    parts = [torch.zeros_like(padded) for _ in lengths]
    dist.all_gather(parts, padded)
    out = torch.empty((sum(lengths), *t.shape[1:]), dtype=t.dtype, device=t.device)
    for r, (part, k) in enumerate(zip(parts, lengths, strict=True)):
        out[r::world] = part[:k]
    return out, slice(rank(), None, world)


def all_sum(t: Tensor) -> Tensor:
    """Sum over ranks (a new tensor; ``t`` itself one-process)."""
    if not active():
        return t
    out = t.clone()
    dist.all_reduce(out)
    return out


def merge_seen(values: Tensor) -> Tensor:
    """Per-example records (NaN where this rank did not see the example) merged across ranks."""
    if not active():
        return values
    seen = ~torch.isnan(values)
    total, count = all_sum(torch.where(seen, values, 0.0)), all_sum(seen.float())
    return torch.where(count > 0, total / count.clamp_min(1.0), torch.nan)


def same_generator(generator: torch.Generator) -> None:
    """Give every rank rank 0's state of a CPU ``generator`` (its draws per epoch, e.g. the batch order, must
    agree; a rank's share of the augmentation draws may differ in length and so shift its state)."""
    if not active():
        return
    state = generator.get_state().to(_DEVICE)
    dist.broadcast(state, 0)
    generator.set_state(state.cpu())


def any_rank(flag: bool) -> bool:
    """True when ``flag`` is true on some rank (all ranks stop at the same step)."""
    if not active():
        return flag
    return bool(all_sum(torch.tensor([float(flag)], device=_DEVICE))[0] > 0)
