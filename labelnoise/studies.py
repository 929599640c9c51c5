"""Studies: a grid of param values queued as DVC experiments (one MLflow pipeline run per point, tagged
with the study name), and the report built from those runs in the MLflow store.

    grid  = parse_grid(["noise.rate=0.2,0.4", "student.batch_size=32,128"])   # {key: [values]}
    for overrides in grid_points(grid): ...                                   # cartesian product, in order
    text, figures = write_report(runs, study="s", out_dir=Path("reports"))    # reports/s.md, reports/s/*.png
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Metrics a report shows when the runs have them (the headline numbers of the evaluate stage).
REPORT_METRICS = ("test_acc", "test_acc_best_clean", "corrected_test_acc", "detection_auroc", "recovered_label_acc")


def parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    """``["a.b=1,2", "c.d=[1, 2],[3, 4]"]`` → ``{"a.b": ["1", "2"], "c.d": ["[1, 2]", "[3, 4]"]}``.

    Values are split at commas outside brackets and braces, so YAML lists and mappings stay whole.
    """
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or "." not in key or not values.strip():
            raise ValueError(f"sweep: {item!r} is not section.key=value1,value2,...")
        if key in grid:
            raise ValueError(f"sweep: {key} is given twice")
        parts, depth, current = [], 0, ""
        for ch in values:
            depth += ch in "[{"
            depth -= ch in "]}"
            if ch == "," and depth == 0:
                parts.append(current.strip())
                current = ""
            else:
                current += ch
        parts.append(current.strip())
        if any(not p for p in parts):
            raise ValueError(f"sweep: {key} has an empty value in {values!r}")
        grid[key] = parts
    if not grid:
        raise ValueError("sweep: give at least one section.key=value1,value2,...")
    return grid


def grid_points(grid: dict[str, list[str]]) -> list[list[str]]:
    """Every combination of the grid as a list of ``key=value`` overrides (the last key varies fastest)."""
    keys = list(grid)
    return [[f"{k}={v}" for k, v in zip(keys, values, strict=True)] for values in itertools.product(*grid.values())]


def _as_number(value: str) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _sort_key(value: str) -> tuple[int, float, str]:
    number = _as_number(value)
    return (0, number, "") if number is not None else (1, 0.0, value)


def latest_per_point(runs: list[dict[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """One run per distinct value of ``keys`` (the most recent; ``runs`` are newest first)."""
    seen: dict[tuple[str, ...], dict[str, Any]] = {}
    for run in runs:
        seen.setdefault(tuple(run["params"].get(k, "") for k in keys), run)
    return sorted(seen.values(), key=lambda r: [_sort_key(r["params"].get(k, "")) for k in keys])


def write_report(runs: list[dict[str, Any]], *, study: str, swept: Sequence[str], out_dir: Path) -> list[Path]:
    """``out_dir/STUDY.md`` (a table of every point and its metrics, the run count and wall time) and
    one PNG per swept param in ``out_dir/STUDY/`` (each metric against it, one line per combination of
    the other swept params). ``runs`` are the study's finished pipeline runs, newest first, as
    :func:`labelnoise.tracking.study_runs` returns them. Returns the files written."""
    from labelnoise.io import write_atomic
    from labelnoise.plots import plot_study

    points = latest_per_point(runs, swept)
    metrics = [m for m in REPORT_METRICS if any(m in r["metrics"] for r in points)]
    starts, ends = [r["start"] for r in runs], [r["end"] or r["start"] for r in runs]
    busy = sum((r["end"] or r["start"]) - r["start"] for r in runs) / 1000
    lines = [
        f"# Study `{study}`",
        "",
        f"{len(points)} points from {len(runs)} finished pipeline runs in the MLflow store (tag `study={study}`); "
        f"stage time {busy / 60:.1f} min in all, {(max(ends) - min(starts)) / 60000:.1f} min from the first start "
        "to the last end. Swept: " + ", ".join(f"`{k}`" for k in swept) + ".",
        "",
        "| " + " | ".join([*swept, *metrics, "run", "DVC experiment"]) + " |",
        "|" + "---|" * (len(swept) + len(metrics) + 2),
    ]
    for r in points:
        cells = [r["params"].get(k, "") for k in swept]
        cells += [f"{r['metrics'][m]:.4f}" if m in r["metrics"] else "—" for m in metrics]
        cells += [f"`{r['run_id'][:8]}`", r["tags"].get("dvc_exp_name", "—")]
        lines.append("| " + " | ".join(cells) + " |")
    figures = []
    for x in swept:
        others = [k for k in swept if k != x]
        series: dict[str, list[tuple[str, dict[str, float]]]] = {}
        for r in points:
            label = ", ".join(f"{k}={r['params'].get(k, '')}" for k in others) or study
            series.setdefault(label, []).append((r["params"].get(x, ""), r["metrics"]))
        numeric = all(_as_number(v) is not None for s in series.values() for v, _ in s)
        figures.append(plot_study(series, x=x, metrics=metrics, numeric=numeric,
                                  path=out_dir / study / f"{x.replace('.', '_')}.png",
                                  title=f"study {study}: metrics against {x}"))
    if figures:
        lines += ["", *[f"![{f.stem}]({study}/{f.name})" for f in figures]]
    report = write_atomic(out_dir / f"{study}.md", lambda p: p.write_text("\n".join(lines) + "\n"))
    return [report, *figures]
