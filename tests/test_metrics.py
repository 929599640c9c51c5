"""Metrics against hand computations and their invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest

from labelnoise import metrics

# Toy case, K = 3. True / predicted:
#   class 0: 0→0, 0→0, 0→1          (2 of 3 right)
#   class 1: 1→1, 1→2               (1 of 2 right)
#   class 2: 2→2, 2→2, 2→2, 2→0     (3 of 4 right)
LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
PREDS = np.array([0, 0, 1, 1, 2, 2, 2, 2, 0])


def test_accuracy_by_hand() -> None:
    assert metrics.accuracy(LABELS, PREDS) == pytest.approx(6 / 9)


def test_accuracy_takes_scores() -> None:
    scores = np.eye(3)[PREDS] * 5.0 - 1.0  # (N, K) logits whose argmax is PREDS
    assert metrics.accuracy(LABELS, scores) == pytest.approx(6 / 9)


def test_confusion_matrix_by_hand() -> None:
    cm = metrics.confusion_matrix(LABELS, PREDS, num_classes=3)
    expected = np.array([[2, 1, 0],
                         [0, 1, 1],
                         [1, 0, 3]])
    np.testing.assert_array_equal(cm, expected)
    assert cm.dtype == np.int64
    # Rows: class sizes of the true labels; columns: how often each class was predicted.
    np.testing.assert_array_equal(cm.sum(axis=1), np.bincount(LABELS, minlength=3))
    np.testing.assert_array_equal(cm.sum(axis=0), np.bincount(PREDS, minlength=3))


def test_normalized_confusion_rows_and_diagonal() -> None:
    m = metrics.normalized_confusion_matrix(LABELS, PREDS, num_classes=3)
    np.testing.assert_allclose(m[0], [2 / 3, 1 / 3, 0.0])
    np.testing.assert_allclose(m[1], [0.0, 0.5, 0.5])
    np.testing.assert_allclose(m[2], [0.25, 0.0, 0.75])
    np.testing.assert_allclose(m.sum(axis=1), 1.0)
    np.testing.assert_allclose(np.diag(m), metrics.per_class_accuracy(LABELS, PREDS, num_classes=3))


def test_row_normalize_keeps_empty_rows_zero() -> None:
    m = metrics.row_normalize(np.array([[0, 0], [1, 3]]))
    np.testing.assert_allclose(m, [[0.0, 0.0], [0.25, 0.75]])


def test_per_class_accuracy_by_hand() -> None:
    acc = metrics.per_class_accuracy(LABELS, PREDS, num_classes=3)
    np.testing.assert_allclose(acc, [2 / 3, 1 / 2, 3 / 4])


def test_per_class_accuracy_absent_class_is_nan() -> None:
    acc = metrics.per_class_accuracy(np.array([0, 0, 1]), np.array([0, 1, 1]), num_classes=3)
    np.testing.assert_allclose(acc[:2], [0.5, 1.0])
    assert math.isnan(acc[2])


def test_class_weighted_per_class_accuracy_is_accuracy() -> None:
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 5, 500), rng.integers(0, 5, 500)
    acc = metrics.per_class_accuracy(y, p, num_classes=5)
    assert np.dot(acc, np.bincount(y, minlength=5)) / y.size == pytest.approx(metrics.accuracy(y, p))


def test_confusion_matrix_rejects_out_of_range() -> None:
    with pytest.raises(ValueError, match="preds"):
        metrics.confusion_matrix(np.array([0, 1]), np.array([0, 3]), num_classes=3)
    with pytest.raises(ValueError, match="length"):
        metrics.accuracy(np.array([0, 1]), np.array([0]))


def test_label_accuracy_is_one_minus_flip_rate() -> None:
    true = np.arange(10) % 3
    noisy = true.copy()
    noisy[[1, 4, 7]] = (noisy[[1, 4, 7]] + 1) % 3
    assert metrics.label_accuracy(noisy, true) == pytest.approx(0.7)
    assert metrics.label_accuracy(true, true) == 1.0


def test_detection_perfect_separation_is_auroc_one() -> None:
    # Corrupted samples get low scores (low MentorNet weight): perfect detection.
    mask = np.array([True, True, False, False, False])
    scores = np.array([0.1, 0.2, 0.8, 0.9, 0.7])
    q = metrics.detection_quality(scores, mask, threshold=0.5)
    assert q["auroc"] == 1.0
    assert q["precision"] == 1.0 and q["recall"] == 1.0
    assert q["flagged_rate"] == pytest.approx(0.4)


def test_detection_orientation_inverted_and_ties() -> None:
    mask = np.array([True, True, False, False])
    # High scores on corrupted samples: the wrong way round.
    assert metrics.detection_quality(np.array([0.9, 0.8, 0.1, 0.2]), mask, threshold=0.5)["auroc"] == 0.0
    # Constant scores carry no information: ties count half.
    assert metrics.detection_quality(np.full(4, 0.5), mask, threshold=0.5)["auroc"] == 0.5


def test_detection_precision_recall_by_hand() -> None:
    mask = np.array([True, True, True, False, False, False])
    scores = np.array([0.1, 0.6, 0.2, 0.3, 0.9, 0.8])
    q = metrics.detection_quality(scores, mask, threshold=0.5)
    # Flagged: indices 0, 2, 3 → 2 of them corrupted; 2 of the 3 corrupted flagged.
    assert q["precision"] == pytest.approx(2 / 3)
    assert q["recall"] == pytest.approx(2 / 3)
    assert q["flagged_rate"] == pytest.approx(0.5)
    # AUROC by pair counting: P(corrupted score < clean score) over 3 x 3 pairs.
    pairs = [(c < n) + 0.5 * (c == n) for c in scores[mask] for n in scores[~mask]]
    assert q["auroc"] == pytest.approx(np.mean(pairs))


def test_detection_undefined_cases_are_nan() -> None:
    q = metrics.detection_quality(np.array([0.9, 0.8]), np.array([False, False]), threshold=0.5)
    assert math.isnan(q["auroc"]) and math.isnan(q["precision"]) and math.isnan(q["recall"])
    assert q["flagged_rate"] == 0.0


def test_roc_auc_is_scikit_learns_with_ties() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(2, 200))
        positive = rng.random(n) < rng.random()
        if positive.all() or not positive.any():
            continue
        scores = np.round(rng.normal(size=n), int(rng.integers(0, 3)))  # rounding makes ties
        assert metrics.roc_auc(positive, scores) == pytest.approx(roc_auc_score(positive, scores), abs=1e-12)
    assert metrics.roc_auc(np.array([True, False]), np.array([1.0, 1.0])) == 0.5
