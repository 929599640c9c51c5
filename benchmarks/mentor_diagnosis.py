"""What a mentor-weighted student (SPADE, MentorMix) did, read from a finished run's files: per recorded epoch
(``student.weights_at``) the mean weight on clean and on corrupted train labels, how well the weight separates them
(AUROC), each group's mean loss and the rank correlation of weight and loss (negative: the mentor prefers low
losses); then the mentor's weight over a grid of losses around two values of l_pt, which shows what it does with
losses it never saw while it was learnt. Reads the corruption mask: an evaluation, for runs with true labels.

    python benchmarks/mentor_diagnosis.py [RUN_FOLDER]     # a project folder after `dvc repro` (default: here)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labelnoise.engine import load_weights  # noqa: E402
from labelnoise.mentornet import read_mentor  # noqa: E402
from labelnoise.noise import load_noisy  # noqa: E402

GRID = (0.5, 1.0, 1.5, 2.0, 2.2, 2.4, 2.6, 2.8, 3.0, 3.5, 4.0)  # losses at which the mentor is probed


def epochs_table(folder: Path) -> list[dict[str, float]]:
    """One row per recorded epoch (see the module's docstring)."""
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    weights = load_weights(folder / "models" / "student_weights.npz")
    mask = load_noisy(folder / "data" / "noisy.npz").mask
    rows = []
    for epoch, loss, v in zip(weights["epochs"], weights["loss"], weights["weight"], strict=True):
        seen = np.isfinite(v) & np.isfinite(loss)
        wrong, v, loss = mask[: len(seen)][seen], v[seen], loss[seen]
        rows.append({"epoch": int(epoch), "v_clean": float(v[~wrong].mean()), "v_wrong": float(v[wrong].mean()),
                     "auroc": float(roc_auc_score(~wrong, v)), "loss_clean": float(loss[~wrong].mean()),
                     "loss_wrong": float(loss[wrong].mean()), "rho": float(spearmanr(v, loss).correlation)})
    return rows


def weight_over_loss(folder: Path, *, l_pt: float, progress: int) -> list[float]:
    """The mentor's v at the losses of ``GRID`` (label 0) with the moving percentile at ``l_pt``."""
    mentor, _, _ = read_mentor(folder / "models" / "mentor.pt")
    loss = torch.tensor(GRID)
    with torch.no_grad():
        v = mentor(loss, loss - l_pt, torch.zeros(len(GRID), dtype=torch.long), torch.full((len(GRID),), progress))
    return [float(x) for x in v]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", type=Path, default=Path("."))
    folder = parser.parse_args(argv).folder
    print(f"{'epoch':>5} {'v_clean':>8} {'v_wrong':>8} {'AUROC':>6} {'l_clean':>8} {'l_wrong':>8} {'rho':>6}")
    for r in epochs_table(folder):
        print(f"{r['epoch']:5d} {r['v_clean']:8.3f} {r['v_wrong']:8.3f} {r['auroc']:6.3f} {r['loss_clean']:8.3f} "
              f"{r['loss_wrong']:8.3f} {r['rho']:6.3f}")
    print("the mentor's v over the loss (label 0, progress 50):")
    print("  loss    " + " ".join(f"{x:5.1f}" for x in GRID))
    for l_pt in (2.3, 2.8):
        print(f"  l_pt {l_pt} " + " ".join(f"{x:5.2f}" for x in weight_over_loss(folder, l_pt=l_pt, progress=50)))


if __name__ == "__main__":
    main()
