"""PNG figures a person would rather look at than read. Headless (Agg) matplotlib."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from labelnoise.io import atomic_path  # noqa: E402


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG atomically and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
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
    m = np.asarray(matrix, dtype=float)
    k = m.shape[0]
    size = max(4.0, 0.55 * k + 2.0)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    im = ax.imshow(m, cmap="Blues", vmin=0.0, vmax=max(m.max(), 1e-12))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(k), labels, rotation=45, ha="right")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if k <= 20:
        thresh = m.max() / 2.0
        for i in range(k):
            for j in range(k):
                ax.text(j, i, fmt.format(m[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if m[i, j] > thresh else "black")
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
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * sum(widths) + 0.6, 3.9),
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
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=8))
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
    fig, ax = plt.subplots(figsize=(max(5.0, k * (0.3 + 0.22 * n) + 1.5), 4.2))
    pos = np.arange(k)
    colors = plt.get_cmap("tab10").colors
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
