"""Checkpoint helpers: fingerprints of the data and of modules, config differences, RNG states, loading."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from labelnoise.io import read_torch
from labelnoise.views import TrainView, digest


def data_fingerprint(data: TrainView) -> dict[str, Any]:
    """Shapes and short hashes of what training reads, so a checkpoint from other data is refused."""
    out: dict[str, Any] = {"dataset": data.dataset, "classes": list(data.classes)}
    for name in ("x_train", "y_train", "x_clean", "y_clean", "x_test", "y_test"):
        t = getattr(data, name)
        out[name] = f"{tuple(t.shape)}:{digest(t)}"
    return out


def module_fingerprint(module: nn.Module) -> str:
    """Short hash of a module's state_dict (names, shapes, values): which mentor a run started from."""
    h = hashlib.blake2b(digest_size=8)
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def config_diff(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """Human-readable differences between two nested config dicts, e.g. ``student.lr: 0.1 → 0.05``."""
    if isinstance(saved, Mapping) and isinstance(current, Mapping):
        diffs = []
        for key in sorted(set(saved) | set(current), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in saved:
                diffs.append(f"{name}: not in checkpoint")
            elif key not in current:
                diffs.append(f"{name}: only in checkpoint")
            else:
                diffs += config_diff(saved[key], current[key], name)
        return diffs
    return [] if saved == current else [f"{prefix}: {saved!r} in checkpoint, {current!r} now"]


def rng_states(generator: torch.Generator) -> dict[str, Any]:
    name, key, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [name, key.tolist(), int(pos), int(has_gauss), float(cached)],  # plain types: weights_only load
        "python": random.getstate(),
        "batch": generator.get_state(),
    }


def set_rng_states(states: Mapping[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    name, key, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), pos, has_gauss, cached))
    python = states["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    generator.set_state(states["batch"])


def load_checkpoint(path: str | Path | None, expected_config: Mapping[str, Any], *,
                    log: Callable[[str], None]) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it can be resumed, else None with the reason logged.

    A finished run's is returned too: it is the result (the same config and data train to the same numbers), so
    a stage that failed after training (writing its outputs, logging) redoes only what failed. Not resumed (the
    reason logged, training starts fresh): a different config (each differing key is named). Refused with an error
    (``ValueError``), so nothing is overwritten: an unreadable (corrupt or foreign) file, which atomic writes never
    produce.
    """
    if path is None or not Path(path).is_file():
        return None
    ckpt = read_torch(path, remedy="it is a resume checkpoint: delete it to train from scratch")
    diffs = config_diff(ckpt.get("config"), dict(expected_config))
    if diffs:
        shown = "; ".join(diffs[:5]) + (f"; and {len(diffs) - 5} more" if len(diffs) > 5 else "")
        log(f"checkpoint {path} not resumed: config differs ({shown}); starting fresh")
        return None
    return ckpt
