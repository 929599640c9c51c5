"""Evaluation metrics on arrays (cleanlab style): labels and predictions in, numbers out.

Conventions: ``labels`` are true class indices, shape (N,), ints in [0, K). ``preds`` are either
predicted class indices (N,) or per-class scores (N, K) (logits or probabilities; argmax taken).
Rows of a confusion matrix are true classes, columns predicted classes.
"""

from __future__ import annotations

import math

import numpy as np


def _as_pred(preds: np.ndarray) -> np.ndarray:
    """(N,) class indices from (N,) indices or (N, K) scores."""
    p = np.asarray(preds)
    if p.ndim == 2:
        return p.argmax(axis=1)
    if p.ndim != 1:
        raise ValueError(f"preds must have shape (N,) or (N, K), got {p.shape}")
    return p.astype(np.int64, copy=False)


def _check_pair(labels: np.ndarray, preds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must have shape (N,), got {y.shape}")
    p = _as_pred(preds)
    if p.shape[0] != y.shape[0]:
        raise ValueError(f"labels and preds differ in length: {y.shape[0]} vs {p.shape[0]}")
    return y.astype(np.int64, copy=False), p


def accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    """Fraction of ``preds`` equal to ``labels``. labels (N,); preds (N,) or (N, K). NaN when N = 0."""
    y, p = _check_pair(labels, preds)
    return float((y == p).mean()) if y.size else math.nan


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, *, num_classes: int) -> np.ndarray:
    """Counts (K, K) int64: entry [i, j] = number of samples of true class i predicted as j.

    Rows sum to the class sizes of ``labels``; the total is N.
    """
    y, p = _check_pair(labels, preds)
    for name, a in (("labels", y), ("preds", p)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes}), got range [{a.min()}, {a.max()}]")
    # bincount over the flattened (i, j) index: one pass, no Python loop over samples.
    flat = np.bincount(y * num_classes + p, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def row_normalize(counts: np.ndarray) -> np.ndarray:
    """(K, K) counts → (K, K) rows summing to 1 (row i: P(pred = j | true = i)); all-zero rows stay 0."""
    m = np.asarray(counts, dtype=np.float64)
    totals = m.sum(axis=1, keepdims=True)
    return np.divide(m, totals, out=np.zeros_like(m), where=totals > 0)


def normalized_confusion_matrix(labels: np.ndarray, preds: np.ndarray, *, num_classes: int) -> np.ndarray:
    """Row-normalised confusion matrix (K, K) float64; its diagonal is ``per_class_accuracy``."""
    return row_normalize(confusion_matrix(labels, preds, num_classes=num_classes))


def per_class_accuracy(labels: np.ndarray, preds: np.ndarray, *, num_classes: int) -> np.ndarray:
    """(K,) float64: accuracy on the samples of each true class (recall per class); NaN for an absent class."""
    cm = confusion_matrix(labels, preds, num_classes=num_classes)
    totals = cm.sum(axis=1)
    out = np.full(num_classes, np.nan)
    np.divide(np.diag(cm), totals, out=out, where=totals > 0)
    return out


def label_accuracy(labels: np.ndarray, true: np.ndarray) -> float:
    """Fraction of a label vector (noisy or corrected, (N,)) that equals the true labels (N,).

    For injected noise this is 1 − realised noise rate; for corrected labels it measures recovery.
    """
    a, t = np.asarray(labels), np.asarray(true)
    if a.shape != t.shape or a.ndim != 1:
        raise ValueError(f"labels and true must both have shape (N,), got {a.shape} and {t.shape}")
    return float((a == t).mean()) if a.size else math.nan


def roc_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` (N,) as a detector of ``positive`` (N,) bool (both classes present):
    the probability that a random positive scores above a random negative, ties counting half (the Mann-Whitney
    U statistic from average ranks; the same value as scikit-learn's roc_auc_score)."""
    _, inverse, counts = np.unique(np.asarray(scores, dtype=np.float64), return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # (N,) 1-based ranks, ties averaged
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def detection_quality(scores: np.ndarray, mask: np.ndarray, *, threshold: float) -> dict[str, float]:
    """How well per-sample ``scores`` single out corrupted labels.

    Orientation: a corrupted sample (``mask`` True) is the *positive* class, and a *low* score
    (e.g. a MentorNet weight, or the model's probability of the given label) means "likely
    corrupted". So AUROC = P(score of a random corrupted sample < score of a random clean one),
    ties counting half: 1.0 is perfect separation, 0.5 chance, 0.0 perfectly inverted.

    Args:
        scores: (N,) float, higher = more trustworthy.
        mask: (N,) bool, True where the label was corrupted (evaluation only).
        threshold: samples with ``score < threshold`` are flagged as corrupted.

    Returns:
        {"auroc", "precision", "recall", "flagged_rate"}: precision/recall of the flagged set
        against ``mask``; ``flagged_rate`` the fraction flagged. AUROC is NaN when ``mask`` holds a
        single class, precision NaN when nothing is flagged, recall NaN when nothing is corrupted.
    """
    s = np.asarray(scores, dtype=np.float64)
    m = np.asarray(mask, dtype=bool)
    if s.ndim != 1 or s.shape != m.shape:
        raise ValueError(f"scores and mask must both have shape (N,), got {s.shape} and {m.shape}")
    n_pos = int(m.sum())
    auroc = 1.0 - roc_auc(m, s) if 0 < n_pos < m.size else math.nan  # a low score should mean corrupted
    flagged = s < threshold
    n_flagged = int(flagged.sum())
    hits = int((flagged & m).sum())
    return {
        "auroc": auroc,
        "precision": hits / n_flagged if n_flagged else math.nan,
        "recall": hits / n_pos if n_pos else math.nan,
        "flagged_rate": n_flagged / m.size if m.size else math.nan,
    }
