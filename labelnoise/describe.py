"""What a run is, in words: the labels of its method and noise level, as MLflow's run names and the study tables
name them (``SPADE-DD · symmetric 40 % · fashion_mnist · cnn``). Read from a run's flat params; nothing here
changes what a stage computes."""

from __future__ import annotations

import math
from typing import Any

from labelnoise.methods import display_name
from labelnoise.noise import is_clean, level_name


def as_number(value: Any) -> float | None:
    """``value`` as a finite float, or None."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


ORACLE = "Oracle (CE, clean labels)"


def method_label(params: dict[str, Any]) -> str:
    """The run's method as tables name it (CE, SPADE-DD, ...), or the oracle (CE on clean labels)."""
    if is_clean(str(params.get("noise.kind", ""))):
        return ORACLE
    return display_name(str(params.get("student.method", "")), params.get("mentor.kind"))


def level_label(params: dict[str, Any]) -> str:
    """'symmetric 40 %', 'pair 45 %', ..., 'given worse' (a file of labels: its name, whose rate no param says)
    or 'clean' (no noise)."""
    kind = params.get("noise.kind", "")
    if is_clean(str(kind)):
        return "clean"
    if (named := level_name(params)) is not None:
        return named
    rate = as_number(params.get("noise.rate", ""))
    return f"{kind} {rate * 100:g} %" if rate is not None else str(kind)


def run_name(params: dict[str, Any]) -> str:
    """A pipeline execution's name: method · level · dataset · network."""
    return " · ".join([method_label(params), level_label(params), str(params.get("data.dataset", "")),
                       str(params.get("train.model", ""))])
