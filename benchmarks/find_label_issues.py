"""How well ``labelnoise.find_label_issues`` flags wrong labels from a user's own predicted probabilities, beside
cleanlab's ``find_label_issues`` on the same probabilities: scikit-learn's digits (1,797 images, 10 classes) with
the project's symmetric or pair noise (exactly that share of each class), out-of-sample probabilities of a
logistic regression (5-fold cross-validation) trained on the noisy labels, and 100 labels checked by a person
(drawn at random). Precision (flagged labels that are wrong) and recall (wrong labels flagged) count the unchecked
examples only. Arithmetic on small arrays: a few seconds.

    python benchmarks/find_label_issues.py                     # pair 30 %, symmetric 40 %, pair 45 %, symmetric 20 %
    python benchmarks/find_label_issues.py pair:0.3 --seed 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import labelnoise  # noqa: E402
from labelnoise import noise  # noqa: E402

LEVELS = ("pair:0.3", "symmetric:0.4", "pair:0.45", "symmetric:0.2")


def _flags(table: object, n: int) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[table.loc[table.flagged, "index"].to_numpy()] = True  # type: ignore[attr-defined]
    return mask


def run(level: str, *, seed: int, n_trusted: int) -> list[dict[str, float | str]]:
    """One noise level's rows: each flagger's count, precision and recall, and its noise estimate."""
    from cleanlab.filter import find_label_issues as cleanlab_flags
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    model, rate = level.split(":")
    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    n = len(y)
    noisy = noise.corrupt(y, kind=model, rate=float(rate), num_classes=10, rng=rng).labels  # the project's models
    probs = cross_val_predict(LogisticRegression(max_iter=2000, C=0.1), x / 16.0, noisy, cv=5,
                              method="predict_proba")
    idx = rng.choice(n, n_trusted, replace=False)
    unchecked = np.ones(n, dtype=bool)
    unchecked[idx] = False
    wrong = (noisy != y) & unchecked
    flaggers = {
        "cleanlab": (cleanlab_flags(noisy, probs, n_jobs=1), float("nan")),  # no fork of this process
        **{f"labelnoise ({estimate})": (_flags(t, n), t.attrs["noise_estimate"]["rate"])
           for estimate in ("confident_joint", "paired")
           for t in [labelnoise.find_label_issues(noisy, probs, trusted=(idx, y[idx]), estimate=estimate)]},
    }
    rows = []
    for name, (flagged, estimated) in flaggers.items():
        flagged = flagged & unchecked
        hits = int((flagged & wrong).sum())
        rows.append({"level": level, "realised": float((noisy != y).mean()), "flagger": name,
                     "flagged": int(flagged.sum()), "precision": hits / max(int(flagged.sum()), 1),
                     "recall": hits / max(int(wrong.sum()), 1), "estimated_rate": estimated})
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, float | str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("levels", nargs="*", default=list(LEVELS), help="MODEL:RATE, a noise model (pair, symmetric)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trusted", type=int, default=100, help="labels checked by a person")
    args = parser.parse_args(argv)
    rows = [row for level in args.levels for row in run(level, seed=args.seed, n_trusted=args.trusted)]
    print(f"{'level':15s} {'realised':>8s} {'flagger':30s} {'flagged':>7s} {'precision':>9s} {'recall':>6s} "
          f"{'estimate':>8s}")
    for r in rows:
        print(f"{r['level']:15s} {r['realised']:8.3f} {r['flagger']:30s} {r['flagged']:7d} {r['precision']:9.3f} "
              f"{r['recall']:6.3f} {r['estimated_rate']:8.3f}")
    return rows


if __name__ == "__main__":
    main()
