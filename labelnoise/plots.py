"""PNG figures a person would rather look at than read. Headless (Agg) matplotlib, imported at the first figure
(a stage that draws none starts faster)."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from labelnoise.io import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@functools.cache
def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (set once)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _integer_ticks() -> Any:
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True, nbins=8)


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG atomically and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    return Path(path)


def plot_matrix(
    matrix: np.ndarray,
    path: str | Path,
    *,
    labels: Sequence[str],
    title: str,
    xlabel: str,
    ylabel: str,
    fmt: str = "{:.2f}",
) -> Path:
    """Heatmap of a K x K matrix (transition or confusion), each cell annotated."""
    return plot_matrices({title: matrix}, path, labels=labels, xlabel=xlabel, ylabel=ylabel, fmt=fmt)


def plot_matrices(
    panels: Mapping[str, np.ndarray],
    path: str | Path,
    *,
    labels: Sequence[str],
    xlabel: str,
    ylabel: str,
    title: str | None = None,
    fmt: str = "{:.2f}",
) -> Path:
    """K x K heatmaps side by side (panel title → matrix, e.g. a true and two estimated transition matrices), each
    cell annotated, one colour scale per panel; ``title`` above them all."""
    k = len(labels)
    size = max(4.0, 0.55 * k + 2.0)
    fig, axes = _pyplot().subplots(1, len(panels), figsize=(size * len(panels), size * 0.9), squeeze=False)
    for first, ax, (name, matrix) in zip([True] + [False] * (len(panels) - 1), axes[0], panels.items(), strict=True):
        m = np.asarray(matrix, dtype=float)
        im = ax.imshow(m, cmap="Blues", vmin=0.0, vmax=max(m.max(), 1e-12))
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ax.set_xticks(range(k), labels, rotation=45, ha="right")
        ax.set_yticks(range(k), labels if first else [])  # the rows are named once, left of the first panel
        ax.set_xlabel(xlabel)
        if first:
            ax.set_ylabel(ylabel)
        ax.set_title(name)
        if k <= 20:
            thresh = m.max() / 2.0
            for i in range(k):
                for j in range(k):
                    ax.text(j, i, fmt.format(m[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if m[i, j] > thresh else "black")
    if title is not None:
        fig.suptitle(title)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- evaluation figures
# Readable names and fixed colours for the curve columns the training stage writes; anything
# else is still drawn, under its column name.
_CURVE_LABELS = {
    "train_loss": "train (noisy labels)",
    "clean_loss": "clean subset",
    "val_loss": "validation",
    "test_loss": "test",
    "train_acc_noisy": "train (noisy labels)",
    "train_acc": "train (noisy labels)",
    "clean_acc": "clean subset",
    "val_acc": "validation",
    "test_acc": "test",
}
_CURVE_COLORS = {"train": "tab:orange", "clean": "tab:blue", "val": "tab:purple", "test": "tab:green"}


def _curve_style(column: str) -> dict[str, str]:
    label = _CURVE_LABELS.get(column, column)
    color = next((c for prefix, c in _CURVE_COLORS.items() if column.startswith(prefix)), None)
    return {"label": label, **({"color": color} if color else {})}


def plot_curves(
    curves: Mapping[str, np.ndarray],
    path: str | Path,
    *,
    title: str,
    x: str = "epoch",
    best_epoch: int | None = None,
) -> Path:
    """Training curves side by side: losses, accuracies, and the learning rate when present.

    ``curves`` maps column names to (E,) arrays (one value per epoch), e.g. the training stage's
    CSV: columns containing ``loss`` go to the loss panel, ``acc`` to the accuracy panel, ``lr``
    to its own panel. ``best_epoch`` marks the checkpoint chosen by clean-subset accuracy.
    """
    if x not in curves:
        raise ValueError(f"curves have no {x!r} column (columns: {', '.join(curves)})")
    xs = np.asarray(curves[x], dtype=float)
    groups = {
        "loss": [c for c in curves if c != x and "loss" in c],
        "accuracy": [c for c in curves if c != x and "acc" in c],
        "learning rate": [c for c in curves if c == "lr" or c.startswith("lr_")],
    }
    panels = [(name, cols) for name, cols in groups.items() if cols]
    if not panels:
        raise ValueError(f"curves have no loss, accuracy or lr column (columns: {', '.join(curves)})")
    widths = [1.0 if name != "learning rate" else 0.75 for name, _ in panels]
    fig, axes = _pyplot().subplots(1, len(panels), figsize=(4.6 * sum(widths) + 0.6, 3.9),
                             gridspec_kw={"width_ratios": widths}, squeeze=False)
    marker = "o" if xs.size <= 30 else None
    for ax, (name, cols) in zip(axes[0], panels, strict=True):
        for c in cols:
            ax.plot(xs, np.asarray(curves[c], dtype=float), marker=marker, markersize=3.5, linewidth=1.6,
                    **_curve_style(c))
        if best_epoch is not None and name != "learning rate":
            ax.axvline(best_epoch, color="0.4", linestyle="--", linewidth=1.0, label=f"best clean (epoch {best_epoch})")
        ax.set_xlabel(x)
        ax.set_ylabel(name)
        ax.set_title(name.capitalize() if name != "learning rate" else "Learning rate", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
        if name == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        else:
            ax.legend(fontsize=8, frameon=False)
        if xs.size and np.allclose(xs, np.round(xs)):
            ax.xaxis.set_major_locator(_integer_ticks())
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_per_class(
    values: Mapping[str, np.ndarray],
    path: str | Path,
    *,
    labels: Sequence[str],
    title: str,
    ylabel: str = "test accuracy",
) -> Path:
    """Grouped bar chart: one group per class, one bar per series (name → (K,) values in [0, 1])."""
    series = {name: np.asarray(v, dtype=float) for name, v in values.items()}
    k = len(labels)
    if any(v.shape != (k,) for v in series.values()):
        raise ValueError(f"every series must have shape ({k},), got {[v.shape for v in series.values()]}")
    n = len(series)
    width = 0.8 / max(n, 1)
    fig, ax = _pyplot().subplots(figsize=(max(5.0, k * (0.3 + 0.22 * n) + 1.5), 4.2))
    pos = np.arange(k)
    colors = _pyplot().get_cmap("tab10").colors
    for i, (name, v) in enumerate(series.items()):
        mean = np.nanmean(v) if np.isfinite(v).any() else np.nan
        ax.bar(pos + (i - (n - 1) / 2) * width, np.nan_to_num(v), width, color=colors[i % 10],
               label=f"{name} (class mean {mean:.3f})")
    long_names = max(map(len, labels), default=0) > 3  # rotate words, not digits
    ax.set_xticks(pos, labels, rotation=35 if long_names else 0, ha="right" if long_names else "center")
    ax.set_ylim(0.0, 1.17)  # head room for the legend above the bars
    ax.set_yticks(np.linspace(0.0, 1.0, 6))
    ax.set_ylabel(ylabel)
    ax.set_xlabel("class")
    ax.set_title(title, fontsize=11)
    ax.grid(True, axis="y", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=8, frameon=False, loc="upper center", ncol=max(n, 1))
    fig.tight_layout()
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- mentor figures
def plot_weight_maps(
    rows: Mapping[str, Sequence[np.ndarray]],
    path: str | Path,
    *,
    loss: np.ndarray,
    diff: np.ndarray,
    columns: Sequence[str],
    title: str,
    points: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray] | None] | None = None,
) -> Path:
    """MentorNet weights as heatmaps over (loss, loss difference): one row per series, one column per panel.

    ``rows`` maps a row name (e.g. "learned v", "target v*") to one (D, L) array per column, values in
    [0, 1], over ``diff`` (D,) x ``loss`` (L,) (uniform grids). ``points`` (optional, per column):
    (loss (n,), diff (n,), corrupted (n,) bool) observations drawn lightly on every panel of that column.
    """
    loss, diff = np.asarray(loss, dtype=float), np.asarray(diff, dtype=float)
    ncols, nrows = len(columns), len(rows)
    for name, maps in rows.items():
        if len(maps) != ncols or any(np.shape(m) != (diff.size, loss.size) for m in maps):
            raise ValueError(f"row {name!r}: need {ncols} maps of shape ({diff.size}, {loss.size})")
    if points is not None and len(points) != ncols:
        raise ValueError(f"points: need one entry per column ({ncols}), got {len(points)}")
    fig, axes = _pyplot().subplots(nrows, ncols, figsize=(3.6 * ncols + 1.2, 3.2 * nrows + 0.6), squeeze=False,
                             sharex=True, sharey=True, layout="constrained")
    extent = (loss[0], loss[-1], diff[0], diff[-1])
    image = None
    for r, (name, maps) in enumerate(rows.items()):
        for c, m in enumerate(maps):
            ax = axes[r, c]
            image = ax.imshow(np.asarray(m, dtype=float), origin="lower", extent=extent, aspect="auto",
                              cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
            if points is not None and points[c] is not None:
                pl, pd, bad = (np.asarray(a) for a in points[c])
                keep = (pl >= loss[0]) & (pl <= loss[-1]) & (pd >= diff[0]) & (pd <= diff[-1])
                for sel, colour, label in ((~bad & keep, "white", "clean label"), (bad & keep, "red", "corrupted")):
                    ax.scatter(pl[sel], pd[sel], s=3, c=colour, alpha=0.25, linewidths=0, label=label)
                if r == 0 and c == 0:
                    ax.legend(fontsize=7, loc="upper left", markerscale=3, framealpha=0.6)
            ax.axhline(0.0, color="0.85", linewidth=0.6, linestyle=":")
            if r == 0:
                ax.set_title(columns[c], fontsize=10)
            if c == 0:
                ax.set_ylabel(f"{name}\nloss − l_pt")
            if r == nrows - 1:
                ax.set_xlabel("loss")
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.9, label="weight v")
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- spade: weight against loss
def plot_weight_vs_loss(
    loss: np.ndarray,
    weight: np.ndarray,
    corrupted: np.ndarray,
    path: str | Path,
    *,
    epochs: Sequence[int],
    title: str,
    max_points: int = 4000,
    seed: int = 0,
    threshold: float | None = None,
    notes: Sequence[str] | None = None,
) -> Path:
    """One scatter panel per recorded epoch: each train example's weight v against its loss, corrupted
    labels in red, clean ones in blue (MentorNet paper's interpretability figure).

    loss, weight: (E, N) (NaN where an example was not seen that epoch); corrupted: (N,) bool
    (evaluation only: it colours the points); epochs: (E,) the panel titles. At most ``max_points``
    examples are drawn per panel, the same random subset in every panel (seeded) so panels compare;
    legends give the mean weight of each group over *all* examples. The loss axis is logarithmic
    (clean losses go to ~0), values below 1e-4 drawn at 1e-4. ``notes``: (E,) text added to the panel
    titles (e.g. "burn-in"); ``threshold`` draws the flagging line v = threshold.
    """
    from matplotlib.ticker import NullFormatter

    loss = np.atleast_2d(np.asarray(loss, dtype=float))
    weight = np.atleast_2d(np.asarray(weight, dtype=float))
    mask = np.asarray(corrupted, dtype=bool)
    if loss.shape != weight.shape or loss.shape[1] != mask.size or loss.shape[0] != len(epochs):
        raise ValueError(f"loss {loss.shape}, weight {weight.shape}, corrupted {mask.shape} and "
                         f"{len(epochs)} epochs do not match")
    rng = np.random.default_rng(seed)
    shown = np.sort(rng.permutation(mask.size)[:max_points])  # (M,) the same examples in every panel
    e = len(epochs)
    fig, axes = _pyplot().subplots(1, e, figsize=(4.2 * e + 0.4, 3.8), squeeze=False, sharey=True)
    floor = 1e-4
    notes = list(notes) if notes is not None else [""] * e
    for ax, epoch, note, lo, w in zip(axes[0], epochs, notes, loss, weight, strict=True):
        seen = np.isfinite(lo) & np.isfinite(w)
        for is_bad, color, name in ((False, "tab:blue", "clean"), (True, "tab:red", "corrupted")):
            group = seen & (mask == is_bad)
            pts = shown[group[shown]]
            mean = w[group].mean() if group.any() else np.nan
            ax.scatter(np.maximum(lo[pts], floor), w[pts], s=5, alpha=0.35, color=color, linewidths=0,
                       label=f"{name}: n={int(group.sum())}, mean v={mean:.2f}", rasterized=True)
        if threshold is not None:
            ax.axhline(threshold, color="0.4", linestyle="--", linewidth=0.9)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # a narrow log range would label minor ticks too
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("loss (cross-entropy on the noisy label)")
        ax.set_title(f"epoch {int(epoch)}" + (f" ({note})" if note else ""), fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
        leg = ax.legend(fontsize=7.5, frameon=False, loc="center left", markerscale=3)
        for handle in leg.legend_handles:
            handle.set_alpha(1.0)
    axes[0][0].set_ylabel("weight v")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- label correction
def plot_label_changes(
    epochs: np.ndarray,
    series: Mapping[str, np.ndarray],
    path: str | Path,
    *,
    title: str,
    begin: int | None = None,
) -> Path:
    """Fractions over the epochs of label correction (phase 1): one line per series (name → (E,) in [0, 1]),
    e.g. labels changed against the noisy labels and label accuracy against the true ones. ``begin`` marks
    the first epoch whose end updates the labels."""
    xs = np.asarray(epochs, dtype=float)
    fig, ax = _pyplot().subplots(figsize=(6.4, 4.0))
    marker = "o" if xs.size <= 30 else None
    for name, values in series.items():
        v = np.asarray(values, dtype=float)
        if v.shape != xs.shape:
            raise ValueError(f"series {name!r} has shape {v.shape}, epochs {xs.shape}")
        ax.plot(xs, v, marker=marker, markersize=3.5, linewidth=1.6, label=name)
    if begin is not None:
        ax.axvline(begin, color="0.4", linestyle="--", linewidth=1.0, label=f"first label update (epoch {begin})")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("epoch")
    ax.set_ylabel("fraction of train examples")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=8, frameon=False)
    if xs.size and np.allclose(xs, np.round(xs)):
        ax.xaxis.set_major_locator(_integer_ticks())
    fig.tight_layout()
    return save_figure(fig, path)


def plot_study(
    series: Mapping[str, Sequence[tuple[str, Mapping[str, float]]]],
    *,
    x: str,
    metrics: Sequence[str],
    numeric: bool,
    path: str | Path,
    title: str,
    bars: bool = False,
    log_x: bool = True,
) -> Path:
    """One panel per metric, the metric against the swept param ``x``, one line per series.

    ``series`` maps a label (the other swept params' values) to its points (x value as text, metrics).
    Numeric x values are placed on a number line (log scale when they span more than 50x and are
    positive, unless ``log_x`` is off); other values are categories in the order first seen. ``bars``:
    categories that are not steps of one scale (e.g. symmetric and pair noise) as groups of bars, one bar per
    series.
    """
    if not metrics:
        raise ValueError("plot_study: the runs have none of the metrics to plot")
    categories = list(dict.fromkeys(v for points in series.values() for v, _ in points))
    fig, axes = _pyplot().subplots(1, len(metrics), figsize=(4.4 * len(metrics) + (2.6 if bars else 0.8), 3.8),
                             squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for i, (label, points) in enumerate(series.items()):
            pts = [(v, m[metric]) for v, m in points if metric in m]
            if not pts:
                continue
            xs = [float(v) if numeric else categories.index(v) for v, _ in pts]
            if bars and not numeric:
                width = 0.8 / len(series)
                offset = (i - (len(series) - 1) / 2) * width
                ax.bar(np.asarray(xs) + offset, [y for _, y in pts], width=width, label=label)
                continue
            order = np.argsort(xs, kind="stable")
            ax.plot(np.asarray(xs)[order], np.asarray([y for _, y in pts])[order], marker="o", markersize=4,
                    linewidth=1.6, label=label)
        if numeric:
            values = [float(v) for v in categories]
            if log_x and min(values) > 0 and max(values) / min(values) > 50:
                ax.set_xscale("log")
        else:
            ax.set_xticks(range(len(categories)), categories, rotation=20)
        ax.set_xlabel(x)
        ax.set_ylabel(metric)
        ax.set_title(metric, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
        if len(series) > 1:
            outside = {"loc": "upper left", "bbox_to_anchor": (1.0, 1.0)} if bars else {}
            ax.legend(fontsize=7, frameon=False, **outside)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_image_grid(images: np.ndarray, captions: Sequence[str], path: str | Path, *, title: str,
                    columns: int = 8) -> Path:
    """uint8 images (M, C, H, W) (grey or RGB) in a grid, each with its caption (e.g. "given → suggested")."""
    m = len(images)
    rows = max(1, -(-m // columns))
    fig, axes = _pyplot().subplots(rows, columns, figsize=(1.7 * columns, 2.0 * rows + 0.6), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= m:
            continue
        img = np.asarray(images[i])
        if img.shape[0] == 1:
            ax.imshow(img[0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        else:
            ax.imshow(np.transpose(img[:3], (1, 2, 0)), interpolation="nearest")
        ax.set_title(captions[i], fontsize=7)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)
