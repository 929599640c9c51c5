"""The label-issues table: one row per train example, the most suspicious label first. It is what a person works
through to fix the labels: the given label, the label the pipeline suggests instead and how sure it is, the
method's own score of the label (the mentor's weight v, cleanlab's label quality), and whether it is flagged.

Suspicion is 1 − q(given), where q is the example's label distribution after the pipeline (label correction's
soft labels, or the trained model's softmax): a label the corrected distribution gives little mass comes first.
An example is flagged when the suggested label differs from the given one. Arrays in, arrays out; no truth needed
(:func:`flag_quality` measures the flags against the corruption mask where one exists).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from labelnoise.io import atomic_path, read_csv_rows

COLUMNS = ("rank", "index", "dataset_index", "path", "given", "suggested", "p_given", "p_suggested", "score", "flagged",
           "suggested_by")


@dataclass(frozen=True)
class LabelIssues:
    """Rows in suspicion order; every array (n,)."""

    index: np.ndarray  # int64: position in the train split (the order of the given labels)
    given: np.ndarray  # int64: the given (noisy) label
    suggested: np.ndarray  # int64: argmax of q
    p_given: np.ndarray  # float: q(given)
    p_suggested: np.ndarray  # float: q(suggested)
    score: np.ndarray  # float: the method's per-example score, NaN where it gives none
    flagged: np.ndarray  # bool: suggested != given


def checked_labels(trusted: Any, n: int, k: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The labels a person checked, ``trusted`` = (indices, labels), as (indices (m,) int64 in [0, n), their true
    labels (m,) int64 in [0, k)), or None; anything else is one ValueError line."""
    if trusted is None:
        return None
    try:
        idx, true = (np.asarray(a) for a in trusted)
    except (TypeError, ValueError):
        raise ValueError("trusted: give (indices, labels), the positions of the trusted examples and their true "
                         "labels") from None
    if idx.ndim != 1 or true.shape != idx.shape or not (np.issubdtype(idx.dtype, np.integer)
                                                         and np.issubdtype(true.dtype, np.integer)):
        raise ValueError(f"trusted: indices and labels must be two integer arrays of one length, got shapes "
                         f"{idx.shape} and {true.shape}")
    if idx.size and (idx.min() < 0 or idx.max() >= n or len(np.unique(idx)) != idx.size):
        raise ValueError(f"trusted: indices must be distinct positions in [0, {n})")
    if true.size and (true.min() < 0 or true.max() >= k):
        raise ValueError(f"trusted: labels must lie in [0, {k})")
    return idx.astype(np.int64), true.astype(np.int64)


def rank_label_issues(given: np.ndarray, probs: np.ndarray, *, score: np.ndarray | None = None) -> LabelIssues:
    """The table for given labels (n,) int and label distributions ``probs`` (n, K) (rows sum to 1), most
    suspicious first: by q(given) ascending, then by ``score`` (n,) ascending (NaN last), then by index."""
    given = np.asarray(given, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    n = given.shape[0]
    if probs.ndim != 2 or probs.shape[0] != n:
        raise ValueError(f"label distributions of shape {probs.shape} for {n} given labels")
    if n and (given.min() < 0 or given.max() >= probs.shape[1]):
        raise ValueError(f"given labels must lie in [0, {probs.shape[1]})")
    score = np.full(n, np.nan) if score is None else np.asarray(score, dtype=np.float64)
    if score.shape != (n,):
        raise ValueError(f"scores of shape {score.shape} for {n} given labels")
    rows = np.arange(n)
    p_given = probs[rows, given]
    suggested = probs.argmax(axis=1)
    order = np.lexsort((rows, np.nan_to_num(score, nan=np.inf), p_given))  # last key first
    return LabelIssues(index=rows[order], given=given[order], suggested=suggested[order], p_given=p_given[order],
                       p_suggested=probs[rows, suggested][order], score=score[order],
                       flagged=(suggested != given)[order])


def flag_quality(issues: LabelIssues, mask: np.ndarray) -> dict[str, float]:
    """EVALUATION ONLY: the flagged rows against the corruption ``mask`` (n,) bool, indexed by train position →
    {"flagged" count, "precision" (flagged labels that are wrong), "recall" (wrong labels flagged)}; NaN where
    undefined."""
    wrong = np.asarray(mask, dtype=bool)[issues.index]
    flagged = issues.flagged
    hits = int((flagged & wrong).sum())
    return {"flagged": float(flagged.sum()),
            "precision": hits / flagged.sum() if flagged.any() else float("nan"),
            "recall": hits / wrong.sum() if wrong.any() else float("nan")}


def write_csv(path: str | Path, issues: LabelIssues, *, classes: list[str], suggested_by: str,
              dataset_index: np.ndarray | None = None, paths: np.ndarray | None = None) -> Path:
    """``COLUMNS`` as CSV, class names for labels, an empty cell for a missing score; written atomically.

    ``index`` is the example's position in the train split; ``dataset_index`` (n,) maps it to the image's index in
    the dataset's order (what ``noise.file`` and ``data.trusted_file`` count), ``paths`` (n,) to its file (a folder
    dataset; else the cell is empty)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        rows = table_rows(issues, classes=classes, suggested_by=suggested_by, dataset_index=dataset_index, paths=paths)
        for rank, i, d, path_, g, s, pg, ps, sc, fl, by in rows:
            writer.writerow([rank, i, d, path_, g, s, f"{pg:.4f}", f"{ps:.4f}", "" if np.isnan(sc) else f"{sc:.4f}",
                             "yes" if fl else "no", by])
    return Path(path)


def table_rows(issues: LabelIssues, *, classes: list[str], suggested_by: str, dataset_index: np.ndarray | None = None,
               paths: np.ndarray | None = None) -> Iterator[tuple[Any, ...]]:
    """The table's rows, one tuple of ``COLUMNS`` each, in suspicion order: ints, class names, floats (NaN: no
    score), a bool for ``flagged``, and ``path`` an empty string where there is no file (see :func:`write_csv`)."""
    where = np.asarray(issues.index) if dataset_index is None else np.asarray(dataset_index)[issues.index]
    for rank, (i, d, g, s, pg, ps, sc, fl) in enumerate(zip(
            issues.index, where, issues.given, issues.suggested, issues.p_given, issues.p_suggested, issues.score,
            issues.flagged, strict=True), start=1):
        yield (rank, int(i), int(d), "" if paths is None else str(paths[i]), classes[g], classes[s], float(pg),
               float(ps), float(sc), bool(fl), suggested_by)


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """The rows of :func:`write_csv`'s file, as dicts of strings, in its (suspicion) order. A file of another kind
    (other columns, not UTF-8 CSV text, a row of the wrong length) is one ValueError line naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run the evaluate stage (dvc repro evaluate)")
    again = "run the evaluate stage again (dvc repro evaluate)"
    try:
        header, rows = read_csv_rows(path)
    except ValueError as e:
        raise ValueError(f"{path} is not a label-issues table ({e}); {again}") from None
    if header[: len(COLUMNS)] != list(COLUMNS):
        raise ValueError(f"{path} is not a label-issues table (columns {', '.join(header)[:200] or 'none'}); {again}")
    for r, row in rows:
        if None in row or None in row.values():  # csv.DictReader: cells beyond the header / missing cells
            cells = len(row) - 1 + len(row[None]) if None in row else sum(v is not None for v in row.values())
            raise ValueError(f"{path}: row {r} has {cells} cells, not {len(header)}; {again}")
    return [row for _, row in rows]
