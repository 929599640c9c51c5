"""What every params section is built from: the error a bad value raises and the numeric-range field.

Each section's dataclass lives beside the code that reads it (the data section with the datasets, a method's
block with the method); :mod:`labelnoise.config` assembles and validates them. This module imports nothing of
the project, so any module may define a section.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any


class ConfigError(ValueError):
    """A parameter is unknown, missing, of the wrong type or out of range (message names the key)."""


def rng(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> Any:
    """Field with an allowed numeric range [lo, hi] (lo excluded when ``lo_open``)."""
    return field(metadata={"lo": lo, "hi": hi, "lo_open": lo_open})
