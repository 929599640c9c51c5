"""Shared fixtures: the repository root and configs built from params.yaml (plus an overlay or a preset)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from labelnoise.config import Config, from_dict, merge, read_yaml

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo() -> Path:
    """The repository root (where params.yaml, dvc.yaml and presets/ live)."""
    return REPO


@pytest.fixture
def make_config(repo: Path) -> Callable[..., Config]:
    """``make_config({"data": {"clean_size": 10}})`` → params.yaml with the overlay merged on, validated."""
    base = read_yaml(repo / "params.yaml")

    def _make(overlay: dict[str, Any] | None = None) -> Config:
        return from_dict(merge(base, overlay or {}))

    return _make


@pytest.fixture
def tiny_config(make_config: Callable[..., Config], repo: Path) -> Config:
    """params.yaml merged with presets/tiny.yaml (digits, a few epochs)."""
    return make_config(read_yaml(repo / "presets" / "tiny.yaml"))
