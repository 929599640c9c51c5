"""Studies: a grid of param values queued as DVC experiments (one MLflow pipeline run per point, tagged
with the study name), and the report built from those runs in the MLflow store.

    grid  = parse_grid(["noise.rate=0.2,0.4", "train.batch_size=32,128"])   # {key: [values]}
    for overrides in grid_points(grid): ...                                   # cartesian product, in order
    text, figures = write_report(runs, study="s", out_dir=Path("reports"))    # reports/s.md, reports/s/*.png
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from labelnoise.config import load_yaml
from labelnoise.describe import ORACLE, as_number, level_label, method_label
from labelnoise.methods import display_name, get_method, method_names, registered, table_names

# Metrics a report shows when the runs have them (the headline numbers of the evaluate stage).
REPORT_METRICS = ("test_acc", "train_steps", "test_acc_best_clean", "corrected_test_acc", "detection_auroc",
                  "recovered_label_acc", "estimated_rate", "estimated_rate_error")


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
        if depth:
            raise ValueError(f"sweep: {key} has unbalanced brackets in {values!r}")
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


def _sort_key(value: str) -> tuple[int, float, str]:
    number = as_number(value)
    return (0, number, "") if number is not None else (1, 0.0, value)


def latest_per_point(runs: list[dict[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """One run per distinct value of ``keys`` (the most recent; ``runs`` are newest first)."""
    seen: dict[tuple[str, ...], dict[str, Any]] = {}
    for run in runs:
        seen.setdefault(tuple(run["params"].get(k, "") for k in keys), run)
    return sorted(seen.values(), key=lambda r: [_sort_key(r["params"].get(k, "")) for k in keys])


def _table(points: list[dict[str, Any]], columns: Sequence[str], metrics: Sequence[str]) -> list[str]:
    lines = ["| " + " | ".join([*columns, *metrics, "run", "DVC experiment"]) + " |",
             "|" + "---|" * (len(columns) + len(metrics) + 2)]
    for r in points:
        cells = [str(r["params"].get(k, "")) for k in columns]
        cells += [("—" if m not in r["metrics"] else f"{r['metrics'][m]:.0f}" if float(r["metrics"][m]).is_integer()
                   and abs(r["metrics"][m]) >= 2 else f"{r['metrics'][m]:.4f}") for m in metrics]  # counts as such
        cells += [f"`{r['run_id'][:8]}`", r["tags"].get("dvc_exp_name", "—")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _series(points: list[dict[str, Any]], x: str, keys: Sequence[str],
            fallback: str) -> dict[str, list[tuple[str, dict[str, float]]]]:
    """The points as plot lines: the metrics against ``x``, one line per combination of ``keys``."""
    series: dict[str, list[tuple[str, dict[str, float]]]] = {}
    for r in points:
        label = ", ".join(f"{k}={r['params'].get(k, '')}" for k in keys) or fallback
        series.setdefault(label, []).append((str(r["params"].get(x, "")), r["metrics"]))
    return series


def _numeric(series: dict[str, list[tuple[str, dict[str, float]]]]) -> bool:
    return all(as_number(v) is not None for s in series.values() for v, _ in s)


def write_report(runs: list[dict[str, Any]], *, study: str, swept: Sequence[str], out_dir: Path,
                 spec: dict[str, Any] | None = None, variant: str = "small",
                 defaults: dict[str, Any] | None = None) -> list[Path]:
    """``out_dir/STUDY.md`` (a table of every point and its metrics, the run count and wall time) and PNGs in
    ``out_dir/STUDY/``. ``runs`` are the study's finished pipeline runs, newest first, as
    :func:`labelnoise.tracking.study_runs` returns them. Without a study file (``spec``): one PNG per swept
    param (each metric against it, one line per combination of the other swept params). With one: a section
    per sweep (its points, the metrics against its ``x``, one line per value of its ``lines``), then the
    view's own tables and findings (``comparison``, ``massive``); ``defaults``: the flattened params the
    study was queued from. Returns the files written."""
    from labelnoise.io import write_atomic
    from labelnoise.plots import plot_study

    runs = [{**r, "params": {**r["params"], "method": method_label(r["params"]),  # derived labels to plot by
                             "level": level_label(r["params"])}} for r in runs]
    points = latest_per_point(runs, swept)
    metrics = [m for m in REPORT_METRICS if any(m in r["metrics"] for r in points)]
    starts, ends = [r["start"] for r in runs], [r["end"] or r["start"] for r in runs]
    busy = sum((r["end"] or r["start"]) - r["start"] for r in runs) / 1000
    lines = [
        f"# Study `{study}`",
        "",
        *([spec["description"].strip(), ""] if spec and spec.get("description") else []),
        f"{len(points)} points from {len(runs)} finished pipeline runs in the MLflow store (tag `study={study}`); "
        f"stage time {busy / 60:.1f} min in all, {(max(ends) - min(starts)) / 60000:.1f} min from the first start "
        "to the last end" + (f" (variant `{variant}`: " + (" ".join(f"`{o}`" for o in _items(spec["variants"][variant]))
                                                         or "the params as they are") + ")" if spec else "")
        + ". Swept: " + ", ".join(f"`{k}`" for k in swept) + ".",
    ]
    figures = []

    def figure(series: dict[str, Any], x: str, name: str, title: str, shown: Sequence[str] = metrics,
               bars: bool = False, log_x: bool = True) -> None:
        figures.append(plot_study(series, x=x, metrics=shown, numeric=_numeric(series),
                                  path=out_dir / study / f"{name}.png", title=title, bars=bars, log_x=log_x))
        lines.extend(["", f"![{name}]({study}/{name}.png)"])

    if spec is None:
        lines += ["", *_table(points, swept, metrics)]
        for x in swept:
            others = [k for k in swept if k != x]
            figure(_series(points, x, others, study), x, x.replace(".", "_"), f"study {study}: metrics against {x}")
    else:
        by_sweep = {s["name"]: latest_per_point(sweep_runs(points, spec, variant, s, defaults or {}), swept)
                    for s in spec["sweeps"]}
        for sweep in spec["sweeps"]:
            if "x" not in sweep:  # queued for the view only
                continue
            mine = by_sweep[sweep["name"]]
            x, by = sweep["x"], sweep.get("lines")
            lines += ["", f"## {sweep.get('title', sweep['name'])}", ""]
            lines += [sweep["about"].strip(), ""] if sweep.get("about") else []
            if not mine:
                lines.append("No finished run of this sweep yet.")
                continue
            shown = [m for m in sweep.get("metrics", ["test_acc"]) if any(m in r["metrics"] for r in mine)]
            lines += _table(mine, [x, *([by] if by else [])], shown)
            title = sweep.get("title", sweep["name"])
            figure(_series(mine, x, [by] if by else [], sweep["name"]), x, sweep["name"], f"{study}: {title}", shown)
        if spec.get("view") == "comparison":
            comparison_section(points, lines, figure, corrected=spec.get("corrected"),
                               peers=spec.get("peers", ["Cleanlab"]))
        elif spec.get("view") == "massive":
            massive_section(by_sweep, spec, lines, figure)
        elif spec.get("view") == "memorisation":
            memorisation_section(points, lines, figure)
        lines += ["", "## Every point", "", *_table(points, swept, metrics)]
    report = write_atomic(out_dir / f"{study}.md", lambda p: p.write_text("\n".join(lines) + "\n"))
    return [report, *figures]


# ---------------------------------------------------------------------------------------------------------------
# Study files: studies/NAME.yaml names the sweeps of one study, its variants and how its report reads them.

VIEWS = ("comparison", "massive", "memorisation")


def _norm(value: Any) -> Any:
    """A param value as YAML reads it ('0.50' == '0.5' == 0.5, 'True' == 'true'), to compare logged params."""
    import yaml

    try:
        return yaml.safe_load(str(value))
    except yaml.YAMLError:
        return str(value)


def _key(value: Any) -> Any:
    """A hashable form of a param value for matching: numbers as floats (0 == 0.0), the rest as YAML reads it."""
    v = _norm(value)
    return v if isinstance(v, bool) else float(v) if isinstance(v, int | float) else repr(v)


def load_study(path: Path) -> dict[str, Any]:
    """Read and check a study file: {'description', 'view', 'variants': {name: [k=v, ...]}, 'sweeps': [{'name',
    'grid': [k=v1,v2, ...] or 'grids': [[...], ...], and for a report section 'x', 'lines', 'title', 'about',
    'metrics'}], 'corrected': the table name whose label correction a comparison report shows, ...}. Raises
    ValueError naming the first problem."""
    import yaml

    try:
        spec = load_yaml(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"study file {path}: {str(e).splitlines()[0]}") from e
    if not isinstance(spec, dict) or not isinstance(spec.get("sweeps"), list) or not spec["sweeps"]:
        raise ValueError(f"study file {path}: needs a non-empty list `sweeps`")
    if spec.get("view") not in (None, *VIEWS):
        raise ValueError(f"study file {path}: view {spec['view']!r} is not one of {', '.join(VIEWS)}")
    variants = spec.setdefault("variants", {"small": []})
    if not isinstance(variants, dict) or "small" not in variants:
        raise ValueError(f"study file {path}: `variants` needs a `small` entry (section.key=value ...)")
    names = set()
    try:
        for overrides in variants.values():
            if _items(overrides):
                parse_grid(_items(overrides))
        if spec.get("common"):
            parse_grid(_items(spec["common"]))
        for sweep in spec["sweeps"]:
            if not isinstance(sweep, dict) or "name" not in sweep or ("grid" in sweep) == ("grids" in sweep):
                raise ValueError("every sweep needs a `name` and a `grid` or a list of `grids`")
            if sweep["name"] in names:
                raise ValueError(f"sweep name {sweep['name']!r} is given twice")
            names.add(sweep["name"])
            for grid in sweep.get("grids", [sweep.get("grid")]):
                parse_grid(_items(grid))
    except ValueError as e:
        raise ValueError(f"study file {path}: {e}") from None
    return spec


def _items(grid: Any) -> list[str]:
    """A grid as written in a study file: 'k=v1,v2 k2=v' (split like a shell line) or a list of such items."""
    import shlex

    return shlex.split(grid) if isinstance(grid, str) else [str(g) for g in grid] if isinstance(grid, list) else []


def study_tag(stem: str, variant: str) -> str:
    """The study tag of a variant's runs: the file's name for `small` (the variant run here), NAME-VARIANT else."""
    return stem if variant == "small" else f"{stem}-{variant}"


def find_study(study: str, folder: Path) -> tuple[Path, str] | None:
    """The study file and variant that ``study`` (a tag) was queued from, if one of ``folder`` matches."""
    for path in sorted(folder.glob("*.yaml")):
        for variant in load_study(path)["variants"]:
            if study_tag(path.stem, variant) == study:
                return path, variant
    return None


def sweep_grids(spec: dict[str, Any], variant: str, sweep: dict[str, Any]) -> list[dict[str, list[str]]]:
    """The grids a sweep of the study runs in ``variant``: the variant's values, the study's ``common`` ones,
    then the sweep's own (a later value of a key replaces an earlier one)."""
    base = {}
    for part in (spec["variants"][variant], spec.get("common")):
        base.update(parse_grid(_items(part)) if _items(part) else {})
    return [{**base, **parse_grid(_items(grid))} for grid in sweep.get("grids", [sweep.get("grid")])]


def study_points(spec: dict[str, Any], variant: str,
                 canonical: Callable[[list[str]], Any] | None = None) -> list[list[str]]:
    """Every point of every sweep, in order, each once: sweeps may share points, and ``canonical`` (overrides →
    a hashable form of the params they give) also finds points that differ only in a default written out."""
    points, seen = [], set()
    for sweep in spec["sweeps"]:
        for point in (p for grid in sweep_grids(spec, variant, sweep) for p in grid_points(grid)):
            key = canonical(point) if canonical else frozenset(
                (o.split("=", 1)[0], _key(o.split("=", 1)[1])) for o in point)
            if key not in seen:
                seen.add(key)
                points.append(point)
    return points


def sweep_runs(runs: list[dict[str, Any]], spec: dict[str, Any], variant: str, sweep: dict[str, Any],
               defaults: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs this sweep queued: every param any sweep of the study sets has this sweep's value (its grid's,
    else the variant's, else ``defaults``, the flattened params the study was queued from)."""
    keys = {k for s in spec["sweeps"] for grid in sweep_grids(spec, variant, s) for k in grid}
    found = []
    for grid in sweep_grids(spec, variant, sweep):
        expected = {k: {_key(v) for v in grid[k]} if k in grid else {_key(defaults.get(k))} for k in keys}
        found += [r for r in runs if r not in found
                  and all(_key(r["params"].get(k)) in ok for k, ok in expected.items())]
    return found


def method_order(corrected: str | None) -> tuple[list[str], list[str]]:
    """(every table name in table order, with "<corrected> + correction" after ``corrected``; ours: those of the
    methods that use the MentorNet, and the corrected one)."""
    order, ours = [], []
    for m in registered():
        for name in ([m.display_name("pd"), m.display_name("dd")] if m.uses_mentor else [m.display_name()]):
            order.append(name)
            ours += [name] if m.uses_mentor else []
            if name == corrected:
                order.append(f"{name} + correction")
                ours.append(f"{name} + correction")
    return order, ours


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f} %"


def _levels(found: Collection[str]) -> list[str]:
    """Noise levels in table order: symmetric ones first, then by kind and rate, then by name ('clean' left out)."""
    return sorted((lv for lv in found if lv != "clean"),
                  key=lambda lv: (not lv.startswith("symmetric"), lv.split(" ")[0], as_number(lv.split()[1]) or 0, lv))


def comparison_section(points: list[dict[str, Any]], lines: list[str], figure: Any, *,
                       corrected: str | None = None, peers: Sequence[str] = ("Cleanlab",)) -> None:
    """Methods × noise levels: test accuracy (the method ``corrected`` names also after label correction; the
    oracle, CE on clean labels, in every column), noise-detection AUROC (the scores of every method that scores
    labels), the noise estimate's error per level (where the runs have one), the plot of accuracy against noise per
    method, and our best method against each of ``peers`` (table names) at each level."""
    acc: dict[str, dict[str, float]] = {}
    auroc: dict[str, dict[str, float]] = {}
    estimate: dict[str, list[tuple[float, float]]] = {}
    for r in points:
        method, level, m = r["params"]["method"], r["params"]["level"], r["metrics"]
        if "estimated_rate" in m and "estimated_rate_error" in m:
            estimate.setdefault(level, []).append((m["estimated_rate"], m["estimated_rate_error"]))
        if "test_acc" in m:
            acc.setdefault(method, {})[level] = m["test_acc"]
        if method == corrected and "corrected_test_acc" in m:
            acc.setdefault(f"{corrected} + correction", {})[level] = m["corrected_test_acc"]
        if "detection_auroc" in m and method != ORACLE:
            auroc.setdefault(method, {})[level] = m["detection_auroc"]
    levels = _levels({lv for row in acc.values() for lv in row})
    oracle = acc.pop(ORACLE, {}).get("clean")
    order, ours_names = method_order(corrected)
    methods = sorted(acc, key=lambda k: (order.index(k) if k in order else len(order), k))
    lines += ["", "## Methods against noise", "",
              "Test accuracy of the final model (no model selection on test data)."
              + (" The oracle is CE trained on the true labels (no noise), the same in every column." if oracle
                 else ""), "", "| method | " + " | ".join(levels) + " |", "|---|" + "---|" * len(levels)]
    for method in methods:
        lines.append(f"| {method} | " + " | ".join(_pct(acc[method].get(lv)) for lv in levels) + " |")
    if oracle is not None:
        lines.append(f"| {ORACLE} | " + " | ".join(_pct(oracle) for _ in levels) + " |")
    if auroc:
        lines += ["", "Noise-detection AUROC on the train set: each method's final per-example scores (the "
                  "mentor's weights, cleanlab's label-quality scores), against the corruption mask (read only for "
                  "this measure).", "",
                  "| method | " + " | ".join(levels) + " |", "|---|" + "---|" * len(levels)]
        for method in sorted(auroc, key=lambda k: (order.index(k) if k in order else len(order), k)):
            lines.append(f"| {method} | " + " | ".join(
                f"{auroc[method][lv]:.3f}" if lv in auroc[method] else "—" for lv in levels) + " |")
    if estimate:
        lines += ["", "The noise estimate (stage estimate_noise, without the truth) at each level: the estimated rate "
                  "and its error against the realised one, as the median over the level's runs.", "",
                  "| level | estimated rate | error |", "|---|---|---|"]
        for lv in levels:
            if lv in estimate:
                rate, error = (float(sorted(v)[len(v) // 2]) for v in zip(*estimate[lv], strict=True))
                lines.append(f"| {lv} | {rate:.3f} | {error:+.3f} |")
    for peer in peers:
        verdicts = []
        for lv in levels:
            ours = {k: acc[k][lv] for k in ours_names if lv in acc.get(k, {})}
            theirs = acc.get(peer, {}).get(lv)
            if ours and theirs is not None:
                best = max(ours, key=ours.__getitem__)
                gap = 100 * (ours[best] - theirs)
                verdicts.append(f"- {lv}: our best, {best}, {_pct(ours[best])} against {peer} {_pct(theirs)}: "
                                + (f"ahead by {gap:.2f} points." if gap > 0 else f"behind by {-gap:.2f} points."))
        if verdicts:
            lines += ["", f"Our best method against the baseline {peer}:", "", *verdicts]
    series = {m: [(lv, {"test_acc": acc[m][lv]}) for lv in levels if lv in acc[m]] for m in methods}
    if oracle is not None:
        series[ORACLE] = [(lv, {"test_acc": oracle}) for lv in levels]
    if any(series.values()):
        figure(series, "noise", "methods", "test accuracy at each noise level, per method", ["test_acc"], bars=True)


def _acc(runs: list[dict[str, Any]], **where: Any) -> float | None:
    """test_acc of the one run whose params equal ``where`` (keys with '__' for '.')."""
    for r in runs:
        if all(_key(r["params"].get(k.replace("__", "."))) == _key(v) for k, v in where.items()):
            return r["metrics"].get("test_acc")
    return None


def _values(runs: list[dict[str, Any]], key: str) -> list[Any]:
    return sorted({_norm(r["params"].get(key)) for r in runs}, key=lambda v: _sort_key(str(v)))


# The params the massive view reads of its runs (the blocks of noise models massive and structured)
ALPHA, N_CLEAN, SOURCE = "noise.massive.alpha", "noise.massive.n_clean", "noise.massive.source"
DELTA = "noise.structured.delta"


def clean_needed(runs: list[dict[str, Any]], target: float) -> dict[float, float | None]:
    """α → the smallest ``noise.massive.n_clean`` reaching ``target`` test accuracy, interpolated on log n_clean between
    the two sizes around it (None: not reached at the largest size)."""
    needed: dict[float, float | None] = {}
    for alpha in _values(runs, ALPHA):
        curve = [(n, a) for n in _values(runs, N_CLEAN)
                 if (a := _acc(runs, **{ALPHA: alpha, N_CLEAN: n})) is not None]
        needed[alpha] = None
        for (n0, a0), (n1, a1) in zip([(None, None), *curve], curve, strict=False):
            if a1 >= target:
                if n0 is None or a0 is None:
                    needed[alpha] = float(n1)
                else:
                    t = (target - a0) / (a1 - a0)
                    needed[alpha] = float(math.exp(math.log(n0) + t * (math.log(n1) - math.log(n0))))
                break
    return needed


def massive_section(sweeps: dict[str, list[dict[str, Any]]], spec: dict[str, Any], lines: list[str],
                    figure: Any) -> None:
    """Rolnick et al.'s four findings, each checked on the runs of its sweep (``alpha``: α × source,
    ``clean``: n_clean × α, ``delta``: structured δ, ``batch_lr``: batch size × learning rate), with the
    numbers; plus the clean-set size needed for ``spec['target_acc']`` against α."""
    found = []
    clean = sweeps.get("clean", [])
    if clean:
        sizes, alphas = _values(clean, N_CLEAN), _values(clean, ALPHA)
        drop = {n: (_acc(clean, **{N_CLEAN: n, ALPHA: alphas[0]}) or 0)
                - (_acc(clean, **{N_CLEAN: n, ALPHA: alphas[-1]}) or 0) for n in sizes}
        top = {n: _acc(clean, **{N_CLEAN: n, ALPHA: alphas[-1]}) for n in sizes}
        holds = drop[sizes[-1]] < drop[sizes[0]] and (top[sizes[-1]] or 0) > (top[sizes[0]] or 0)
        found.append(
            f"- **Accuracy stays high as α grows, given enough clean examples** — "
            f"{'holds' if holds else 'does not hold'}: from α = {alphas[0]:g} to α = {alphas[-1]:g} test accuracy "
            + "; ".join(f"with {n} clean examples {_pct(_acc(clean, **{N_CLEAN: n, ALPHA: alphas[0]}))} → "
                        f"{_pct(top[n])} ({-100 * drop[n]:+.2f} points)" for n in sizes) + ".")
        target = float(spec.get("target_acc", 0.75))
        needed = clean_needed(clean, target)
        lines += ["", f"## Clean examples needed for {_pct(target)} test accuracy", "",
                  "Interpolated on log n_clean between the two measured sizes around the target (— : not reached "
                  "at the largest size).", "", "| α | n_clean needed |", "|---|---|"]
        lines += [f"| {a:g} | {'—' if n is None else f'{n:.0f}'} |" for a, n in needed.items()]
        reached = [(str(a), {"n_clean_needed": n}) for a, n in needed.items() if n is not None]
        if reached:
            figure({f"target {_pct(target)}": reached}, ALPHA, "clean_needed",
                   f"clean examples needed for {_pct(target)} test accuracy", ["n_clean_needed"])
    alpha = sweeps.get("alpha", [])
    if alpha:
        other = next((s for s in _values(alpha, SOURCE) if s != "train"), None)  # the other source (digits, ...)
        pairs = [(a, _acc(alpha, **{ALPHA: a, SOURCE: "train"}), _acc(alpha, **{ALPHA: a, SOURCE: other}))
                 for a in _values(alpha, ALPHA) if a]
        pairs = [(a, t, o) for a, t, o in pairs if t is not None and o is not None]
        wins = sum(o > t for _, t, o in pairs)
        found.append(f"- **Noise from another source hurts less than same-dataset noise** — "
                     f"{'holds' if pairs and wins == len(pairs) else 'does not hold' if not wins else 'partly holds'}"
                     f" ({wins} of {len(pairs)} α values): " + "; ".join(
                         f"α = {a:g}: same dataset {_pct(t)}, other source {_pct(o)}" for a, t, o in pairs) + ".")
    delta = sweeps.get("delta", [])
    if delta:
        curve = [(d, _acc(delta, **{DELTA: d})) for d in _values(delta, DELTA)]
        curve = [(d, a) for d, a in curve if a is not None]
        falls = sum(a1 < a0 for (_, a0), (_, a1) in zip(curve, curve[1:], strict=False))
        holds = len(curve) > 1 and curve[-1][1] < curve[0][1]
        verdict = "holds" if holds and falls == len(curve) - 1 else "holds overall" if holds else "does not hold"
        found.append(f"- **Structured noise hurts more as δ grows** — {verdict}"
                     f" (accuracy falls at {falls} of {len(curve) - 1} steps): "
                     + "; ".join(f"δ = {d:g}: {_pct(a)}" for d, a in curve) + ".")
    blr = sweeps.get("batch_lr", [])
    if blr:
        batches, lrs = _values(blr, "train.batch_size"), _values(blr, "train.lr")
        big = [(lr, _acc(blr, train__batch_size=batches[0], train__lr=lr),
                _acc(blr, train__batch_size=batches[-1], train__lr=lr)) for lr in lrs]
        small = [(b, _acc(blr, train__batch_size=b, train__lr=lrs[-1]),
                  _acc(blr, train__batch_size=b, train__lr=lrs[0])) for b in batches]
        for claim, rows, name, first, last in (
                ("Larger batches help under noise", big, "lr", f"batch {batches[0]}", f"batch {batches[-1]}"),
                ("Smaller learning rates help under noise", small, "batch", f"lr {lrs[-1]:g}", f"lr {lrs[0]:g}")):
            rows = [(k, a, b) for k, a, b in rows if a is not None and b is not None]
            wins = sum(b > a for _, a, b in rows)
            verdict = "holds" if rows and wins == len(rows) else "does not hold" if not wins else "partly holds"
            found.append(f"- **{claim}** — {verdict} ({wins} of {len(rows)}): " + "; ".join(
                f"{name} {k:g}: {first} {_pct(a)}, {last} {_pct(b)}" for k, a, b in rows) + ".")
    if found:
        lines += ["", "## Rolnick et al.'s findings on this data", "", *found]


# ---------------------------------------------------------------------------------------------------------------
# The memorisation view: per-epoch curves of the student (issue 21), read from its train_student stage.

CURVES = ("test_acc", "train_acc_noisy")  # the per-epoch metrics `cli.py report` fetches for this view


def memorisation_label(params: dict[str, Any]) -> str:
    """The method's table name, '+ joint optimization' where label correction ran its phase 1 (correction.epochs)."""
    label = method_label(params)
    return f"{label} + joint optimization" if (as_number(params.get("correction.epochs", "0")) or 0) > 0 else label


def _verdict(wins: int, of: int) -> str:
    return "holds" if of and wins == of else "does not hold" if not wins else "partly holds"


def memorisation_section(points: list[dict[str, Any]], lines: list[str], figure: Any) -> None:
    """Per noise level: each method's test-accuracy peak over the epochs and its final value, its final accuracy
    on the noisy train labels (memorisation), the curves; then the MentorNet / MentorMix / label-correction
    claims, each with a measured verdict. The peak is a reading of the test curve, never a model the pipeline
    picks: every method's number is its final epoch's."""
    by_level: dict[str, dict[str, dict[str, Any]]] = {}
    for r in points:
        by_level.setdefault(r["params"]["level"], {})[memorisation_label(r["params"])] = r
    levels = _levels(by_level)
    order, _ = method_order(None)
    found = []
    for level in levels:
        rows = by_level[level]
        names = sorted(rows, key=lambda k: (order.index(k.split(" + ")[0]) if k.split(" + ")[0] in order
                                            else len(order), k))
        lines += ["", f"## {level}", "",
                  "| method | peak test accuracy (epoch) | final test accuracy | final − peak | final train accuracy "
                  "on the noisy labels | labels right after correction |", "|---|---|---|---|---|---|"]
        series = {}
        for name in names:
            m, curves = rows[name]["metrics"], rows[name].get("curves", {})
            test = curves.get("test_acc", [])
            if name.endswith("joint optimization"):  # the label-corrected model; its labels against the noisy ones
                lines.append(f"| {name} | — | {_pct(m.get('corrected_test_acc'))} | — | — | "
                             f"{_pct(m.get('recovered_label_acc'))} (given: {_pct(m.get('noisy_label_acc'))}) |")
                continue
            peak = max(test, key=lambda p: p[1]) if test else None
            final = m.get("test_acc")
            drop = f"{100 * (final - peak[1]):+.2f}" if peak and final is not None else "—"
            method = rows[name]["params"].get("student.method", "")  # its steps: the trusted set's for a method on it
            trusted = method in method_names() and not get_method(method).uses_noisy_labels
            lines.append(f"| {name} | {_pct(peak[1]) + f' ({peak[0]})' if peak else '—'} | {_pct(final)} | {drop} | "
                         f"{'— (trusted labels)' if trusted else _pct(m.get('final_train_acc_noisy'))} | — |")
            if trusted:
                continue
            noisy = dict(curves.get("train_acc_noisy", []))
            series[name] = [(str(e), {"test_acc": v, **({"train_acc_noisy": noisy[e]} if e in noisy else {})})
                            for e, v in test]
        if any(series.values()):
            figure(series, "epoch", "curves_" + level.replace(" ", "").replace("%", ""),
                   f"{level}: test accuracy and accuracy on the noisy train labels per epoch",
                   ["test_acc", "train_acc_noisy"], log_x=False)
    final = {lv: {k: r["metrics"].get("corrected_test_acc" if k.endswith("joint optimization") else "test_acc")
                  for k, r in by_level[lv].items()} for lv in levels}
    ce = [(lv, by_level[lv]["CE"]) for lv in levels if "CE" in by_level[lv] and by_level[lv]["CE"].get("curves")]
    drops = [(lv, max(v for _, v in r["curves"]["test_acc"]), r["metrics"].get("test_acc")) for lv, r in ce
             if r["curves"].get("test_acc") and r["metrics"].get("test_acc") is not None]
    if drops:
        memorised = sum(peak - last >= 0.05 for _, peak, last in drops)
        found.append(f"- **CE memorises the noisy labels** (final test accuracy ≥ 5 points below its own peak) — "
                     f"{_verdict(memorised, len(drops))} ({memorised} of {len(drops)} levels): " + "; ".join(
                         f"{lv}: peak {_pct(p)}, final {_pct(f)}" for lv, p, f in drops) + ".")
    claims = (("MentorNet DD ≥ MentorNet PD ≥ CE", ("SPADE-DD", "SPADE-PD", "CE"), "chain"),
              ("MentorMix ≥ MentorNet (the better of PD and DD)", ("MentorMix-DD", "MentorMix-PD"), "mix"),
              ("Label correction (joint optimization) beats CE", ("CE + joint optimization", "CE"), "chain"),
              ("ELR beats CE by at least 3 points", ("ELR", "CE"), "margin"),
              ("DivideMix beats CE by at least 3 points", ("DivideMix", "CE"), "margin"))
    for claim, names, kind in claims:
        checked = []
        for lv in levels:
            acc = final[lv]
            if kind == "mix":
                mix = next((acc[n] for n in names if acc.get(n) is not None), None)
                nets = [acc[n] for n in ("SPADE-DD", "SPADE-PD") if acc.get(n) is not None]
                if mix is not None and nets:
                    checked.append((lv, mix >= max(nets), f"MentorMix {_pct(mix)}, best MentorNet {_pct(max(nets))}"))
            elif all(acc.get(n) is not None for n in names):
                values = [acc[n] for n in names]
                margin = 0.03 if kind == "margin" else 0.0  # the peers' papers: a clear gain at high noise
                checked.append((lv, all(a >= b + margin for a, b in zip(values, values[1:], strict=False)),
                                ", ".join(f"{n} {_pct(v)}" for n, v in zip(names, values, strict=True))))
        if checked:
            wins = sum(ok for _, ok, _ in checked)
            found.append(f"- **{claim}** — {_verdict(wins, len(checked))} ({wins} of {len(checked)} levels): "
                         + "; ".join(f"{lv}: {text}" for lv, _, text in checked) + ".")
    recovered = [(lv, r["metrics"]) for lv in levels for k, r in by_level[lv].items()
                 if k.endswith("joint optimization") and "recovered_label_acc" in r["metrics"]
                 and "noisy_label_acc" in r["metrics"]]
    if recovered:
        wins = sum(m["recovered_label_acc"] > m["noisy_label_acc"] for _, m in recovered)
        found.append(f"- **Label correction recovers labels** (more train labels right after it than before) — "
                     f"{_verdict(wins, len(recovered))} ({wins} of {len(recovered)} levels): " + "; ".join(
                         f"{lv}: {_pct(m['noisy_label_acc'])} → {_pct(m['recovered_label_acc'])}"
                         for lv, m in recovered) + ".")
    if found:
        lines += ["", "## The papers' claims in this regime", "", *found]


# ----------------------------------------------------------------------------- the methods on one setting
# Params that define a setting: runs of different methods are comparable only when all of these agree.
SETTING_SECTIONS = ("data", "noise")
SETTING_KEYS = ("train.model", "train.epochs")


def setting_params(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The params (flat, as on a pipeline's parent run) that define its setting."""
    return {k: v for k, v in flat.items() if k.split(".")[0] in SETTING_SECTIONS or k in SETTING_KEYS}


def setting_line(flat: Mapping[str, Any], experiment: str) -> str:
    """The setting of a methods table in words, and how its rows were chosen."""
    return (f"Setting: {flat.get('data.dataset')} · {level_label(dict(flat))} · {flat.get('train.model')}, "
            f"{flat.get('train.epochs')} epochs. Test accuracy of the final-epoch model. Rows: per method, the "
            f"latest finished pipeline run in the MLflow store (experiment `{experiment}`) with the same `data.*`, "
            "`noise.*`, `train.model` and `train.epochs` params.")


def method_rows(runs: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """For every registered method variant, the first of ``runs`` (newest first: pipeline runs of one setting, as
    :func:`labelnoise.tracking.matching_pipelines` yields them) that ran it and has a test accuracy (a standalone
    stage's parent run has none): variant → {the headline metrics, "run_id", "date"}."""
    import datetime as dt

    rows: dict[str, dict[str, Any]] = {}
    variants = table_names()
    for r in runs:
        name = display_name(r["params"].get("student.method", "?"), r["params"].get("mentor.kind"))
        if name in rows or name not in variants or "test_acc" not in r["metrics"]:
            continue
        rows[name] = {**{k: r["metrics"].get(k, math.nan)
                         for k in ("test_acc", "detection_auroc", "corrected_test_acc", "recovered_label_acc")},
                      "run_id": r["run_id"],
                      "date": dt.datetime.fromtimestamp((r["end"] or r["start"]) / 1000).strftime("%Y-%m-%d %H:%M")}
        if len(rows) == len(variants):
            break
    return rows


def _fmt(x: Any, spec: str) -> str:
    return format(x, spec) if isinstance(x, int | float) and math.isfinite(x) else "—"


def methods_table(rows: Mapping[str, Mapping[str, Any]], *, setting: str) -> str:
    """Markdown: one row per registered method variant (methods.table_names()) and one for it + correction.

    ``rows``: variant → {"test_acc", "detection_auroc", "corrected_test_acc", "recovered_label_acc" (floats,
    NaN or missing = not available), "run_id", "date"} (:func:`method_rows`); a variant absent from ``rows`` has
    no run yet (dashes).
    """
    lines = [
        f"{setting}",
        "",
        "| method | test accuracy | noise-detection AUROC | recovered-label accuracy | run | date |",
        "|---|---:|---:|---:|---|---|",
    ]
    for variant in table_names():
        r = rows.get(variant)
        if r is None:
            lines += [f"| {name} | — | — | — | no finished run | — |" for name in (variant, f"{variant} + correction")]
            continue
        run = f"`{r['run_id'][:8]}`"
        auroc = _fmt(r.get("detection_auroc", math.nan), ".3f") if variant != "CE" else "—"
        lines.append(f"| {variant} | {_fmt(r.get('test_acc', math.nan), '.2%')} | {auroc} | — | {run} | {r['date']} |")
        lines.append(
            f"| {variant} + correction | {_fmt(r.get('corrected_test_acc', math.nan), '.2%')} | — | "
            f"{_fmt(r.get('recovered_label_acc', math.nan), '.2%')} | {run} | {r['date']} |"
        )
    return "\n".join(lines) + "\n"
