"""Noise models: exact per-class rates, the shape of each model, determinism, files, the stage."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from labelnoise import noise, reference
from labelnoise.noise.instance import corrupt_instance, instance_scores
from labelnoise.noise.massive import corrupt_massive
from labelnoise.noise.open_set import corrupt_open_set
from labelnoise.noise.structured import structured_transition
from tests.helpers import new_store

K = 10
# Uneven class sizes, so rounding differs from class to class; class 6 has a single example.
COUNTS = [40, 33, 7, 50, 11, 25, 1, 64, 18, 29]
RATES = [0.0, 0.1, 0.2, 0.45, 0.5, 0.8, 1.0]
CIFAR10_MAP = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}  # a class map as the caller passes it (noise knows no dataset)


def make_labels(counts: list[int], seed: int = 0) -> np.ndarray:
    """(sum(counts),) int64 labels with counts[c] examples of class c, in shuffled order."""
    y = np.repeat(np.arange(len(counts)), counts).astype(np.int64)
    return np.random.default_rng(seed).permutation(y)


def expected_changes(rate: float, n: int) -> int:
    """round(rate * n), halves up (ties judged at 9 decimals): the contract, written independently."""
    return math.floor(round(rate * n, 9) + 0.5)


def run(y: np.ndarray, kind: str, rate: float, *, seed: int = 1, **kw) -> noise.NoisyLabels:
    return noise.corrupt(y, kind=kind, rate=rate, num_classes=K, rng=np.random.default_rng(seed), **kw)


def check_result(y: np.ndarray, nl: noise.NoisyLabels) -> None:
    assert nl.labels.dtype == np.int64 and nl.mask.dtype == np.bool_
    assert nl.labels.shape == y.shape == nl.mask.shape
    np.testing.assert_array_equal(nl.mask, nl.labels != y)
    assert nl.labels.min() >= 0 and nl.labels.max() < K


# ----------------------------------------------------------------------------- exact rates
@pytest.mark.parametrize("kind", ["symmetric", "pair"])
@pytest.mark.parametrize("rate", RATES)
def test_every_class_changes_exactly_round_rate_n(kind: str, rate: float) -> None:
    y = make_labels(COUNTS)
    nl = run(y, kind, rate)
    check_result(y, nl)
    for c, n_c in enumerate(COUNTS):
        assert nl.mask[y == c].sum() == expected_changes(rate, n_c), f"class {c}"
    assert nl.n_changed == sum(expected_changes(rate, n) for n in COUNTS)


def test_rate_with_a_half_rounds_up() -> None:
    y = make_labels([3, 5, 2, 4, 6, 1, 7, 9, 8, 10])
    nl = run(y, "pair", 0.5)
    assert [int(nl.mask[y == c].sum()) for c in range(K)] == [2, 3, 1, 2, 3, 1, 4, 5, 4, 5]


def test_none_changes_nothing() -> None:
    y = make_labels(COUNTS)
    for rate in (0.0, 0.4, 1.0):
        nl = run(y, "none", rate)
        check_result(y, nl)
        np.testing.assert_array_equal(nl.labels, y)
        assert not nl.mask.any()


def test_input_is_not_modified() -> None:
    y = make_labels(COUNTS)
    before = y.copy()
    run(y, "symmetric", 0.8)
    np.testing.assert_array_equal(y, before)


# ----------------------------------------------------------------------------- symmetric
def test_symmetric_never_keeps_the_class_and_targets_are_uniform() -> None:
    n_c = 1800
    y = make_labels([n_c] * K, seed=3)
    nl = run(y, "symmetric", 0.9, seed=7)
    m = expected_changes(0.9, n_c)
    p = 1.0 / (K - 1)
    # Binomial bound per cell: 5 standard deviations (a false alarm has probability < 1e-5 per cell).
    bound = 5.0 * math.sqrt(m * p * (1 - p))
    for c in range(K):
        sel = (y == c) & nl.mask
        assert sel.sum() == m
        counts = np.bincount(nl.labels[sel], minlength=K)
        assert counts[c] == 0  # never the same class
        others = np.delete(counts, c)
        assert np.all(np.abs(others - m * p) <= bound), others
        # Pearson chi-square with K-2 = 8 degrees of freedom; 31.8 is its 0.9999 quantile.
        chi2 = float(((others - m * p) ** 2 / (m * p)).sum())
        assert chi2 < 31.8, chi2


# ----------------------------------------------------------------------------- pair
@pytest.mark.parametrize("rate", [0.2, 0.45, 1.0])
def test_pair_maps_k_to_k_plus_one(rate: float) -> None:
    y = make_labels(COUNTS)
    nl = run(y, "pair", rate)
    np.testing.assert_array_equal(nl.labels[nl.mask], (y[nl.mask] + 1) % K)


# ----------------------------------------------------------------------------- asymmetric
@pytest.mark.parametrize("rate", RATES)
def test_asymmetric_follows_the_map_and_leaves_other_classes_alone(rate: float) -> None:
    y = make_labels(COUNTS)
    cmap = CIFAR10_MAP
    nl = run(y, "asymmetric", rate, class_map=cmap)
    check_result(y, nl)
    for c, n_c in enumerate(COUNTS):
        changed = nl.mask[y == c]
        if c in cmap:
            assert changed.sum() == expected_changes(rate, n_c), f"class {c}"
            assert np.all(nl.labels[(y == c) & nl.mask] == cmap[c])
        else:
            assert not changed.any(), f"unmapped class {c} changed"


def test_asymmetric_swap_at_rate_one_exchanges_the_two_classes() -> None:
    y = make_labels(COUNTS)
    nl = run(y, "asymmetric", 1.0, class_map={3: 5, 5: 3})
    np.testing.assert_array_equal(nl.labels[y == 3], 5)
    np.testing.assert_array_equal(nl.labels[y == 5], 3)


def test_asymmetric_unreachable_rate_names_the_class_map() -> None:
    y = make_labels([10, 10, 0, 0, 0, 0, 0, 0, 0, 0])  # only classes 0 and 1 present
    with pytest.raises(ValueError, match="noise.asymmetric.class_map"):
        run(y, "asymmetric", 0.4, class_map={9: 1, 2: 0})
    # rate 0 asks for nothing, which is reachable
    assert not run(y, "asymmetric", 0.0, class_map={9: 1}).mask.any()


@pytest.mark.parametrize("bad", [{}, {3: 3}, {10: 1}, {1: -1}])
def test_asymmetric_rejects_bad_maps(bad: dict[int, int]) -> None:
    with pytest.raises(ValueError, match="noise.asymmetric.class_map"):
        run(make_labels(COUNTS), "asymmetric", 0.4, class_map=bad)


# ----------------------------------------------------------------------------- transition
def random_transition(seed: int) -> np.ndarray:
    """A (K, K) row-stochastic matrix with a heavy diagonal, a zero row (identity) and exact zeros."""
    rng = np.random.default_rng(seed)
    t = rng.dirichlet(np.ones(K) * 0.7, size=K)
    t[np.arange(K), np.arange(K)] += rng.uniform(0.0, 3.0, size=K)
    t[0, 5:] = 0.0  # zeros off the diagonal must receive nothing
    t = t / t.sum(axis=1, keepdims=True)
    t[4] = np.eye(K)[4]  # class 4 never changes
    return t


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_transition_counts_are_exact_and_realised_matrix_approximates_t(seed: int) -> None:
    counts = [200, 150, 97, 300, 55, 120, 80, 64, 250, 31]
    y = make_labels(counts, seed=seed)
    t = random_transition(seed)
    nl = run(y, "transition", 0.0, seed=seed, transition=t.tolist())
    check_result(y, nl)
    for c, n_c in enumerate(counts):
        m = expected_changes(1.0 - t[c, c], n_c)
        assert nl.mask[y == c].sum() == m, f"class {c}"
        got = np.bincount(nl.labels[y == c], minlength=K)
        off = np.where(np.arange(K) == c, 0.0, t[c])
        np.testing.assert_array_equal(np.delete(got, c), np.delete(noise.largest_remainder(off, m), c))
    r = noise.realised_transition(y, nl.labels, K)
    np.testing.assert_allclose(r.sum(axis=1), 1.0)
    n = np.asarray(counts, dtype=float)[:, None]
    # Rounding the number changed (<= 1/2) and the allotment (< 1) moves each cell by < 1.5 / n_c.
    assert np.all(np.abs(r - t) <= 1.5 / n + 1e-12)
    assert np.all(r[t == 0] == 0)
    assert not nl.mask[y == 4].any()


def test_transition_ignores_rate_and_checks_the_matrix() -> None:
    y = make_labels(COUNTS)
    t = random_transition(5).tolist()
    a = run(y, "transition", 0.0, transition=t)
    b = run(y, "transition", 0.9, transition=t)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not run(y, "transition", 0.5, transition=np.eye(K)).mask.any()
    with pytest.raises(ValueError, match="noise.transition.matrix"):
        run(y, "transition", 0.0, transition=np.eye(K - 1))
    with pytest.raises(ValueError, match="noise.transition.matrix"):
        run(y, "transition", 0.0, transition=np.full((K, K), 0.2))


def test_symmetric_as_a_transition_matrix_has_the_same_per_class_counts() -> None:
    y = make_labels(COUNTS)
    rate = 0.45
    t = np.full((K, K), rate / (K - 1))
    np.fill_diagonal(t, 1.0 - rate)
    a = run(y, "transition", 0.0, transition=t)
    b = run(y, "symmetric", rate)
    for c in range(K):
        assert a.mask[y == c].sum() == b.mask[y == c].sum()


@pytest.mark.parametrize("total", [0, 1, 7, 100])
def test_largest_remainder_sums_and_stays_within_one_of_the_quota(total: int) -> None:
    w = np.array([0.0, 0.1, 0.25, 0.05, 0.6])
    got = noise.largest_remainder(w, total)
    assert got.sum() == total and got[0] == 0
    assert np.all(np.abs(got - w / w.sum() * total) < 1.0)


# ----------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("kind", ["symmetric", "pair", "asymmetric", "transition"])
def test_same_seed_same_labels_other_seed_different(kind: str) -> None:
    y = make_labels(COUNTS)
    kw = {"class_map": CIFAR10_MAP} if kind == "asymmetric" else {}
    if kind == "transition":
        kw = {"transition": random_transition(0)}
    a, b, c = run(y, kind, 0.4, seed=11, **kw), run(y, kind, 0.4, seed=11, **kw), run(y, kind, 0.4, seed=12, **kw)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert not np.array_equal(a.labels, c.labels)


def test_higher_rate_changes_a_superset_and_models_share_the_changed_set() -> None:
    y = make_labels(COUNTS)
    low, high = run(y, "symmetric", 0.2), run(y, "symmetric", 0.6)
    assert np.all(high.mask[low.mask])
    np.testing.assert_array_equal(high.labels[low.mask], low.labels[low.mask])  # same targets too
    np.testing.assert_array_equal(run(y, "pair", 0.6).mask, high.mask)


# ----------------------------------------------------------------------------- errors, diagnostics
def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="labels"):
        run(np.array([0, 1, K]), "symmetric", 0.4)
    with pytest.raises(ValueError, match="labels"):
        run(np.array([0.0, 1.0]), "symmetric", 0.4)
    with pytest.raises(ValueError, match="noise.kind"):
        run(make_labels(COUNTS), "flip", 0.4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="noise.rate"):
        run(make_labels(COUNTS), "pair", 1.5)
    with pytest.raises(ValueError, match="2 classes"):
        noise.corrupt(np.zeros(5, dtype=np.int64), kind="symmetric", rate=0.5, num_classes=1,
                      rng=np.random.default_rng(0))


def test_empty_labels() -> None:
    nl = run(np.zeros(0, dtype=np.int64), "symmetric", 0.4)
    assert nl.labels.shape == (0,) and nl.n_changed == 0


def test_realised_transition_rows_sum_to_one() -> None:
    true = np.array([0, 0, 0, 0, 1, 1])
    noisy = np.array([0, 1, 1, 2, 1, 0])
    r = noise.realised_transition(true, noisy, 3)
    np.testing.assert_allclose(r, [[0.25, 0.5, 0.25], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])  # class 2 absent
    np.testing.assert_allclose(noise.per_class_rate(true, noisy, 3), [0.75, 0.5, 0.0])


def test_save_and_load_round_trip(tmp_path) -> None:
    y = make_labels(COUNTS)
    nl = run(y, "symmetric", 0.4)
    path = noise.save_noisy(tmp_path / "sub" / "noisy.npz", nl)
    back = noise.load_noisy(path)
    np.testing.assert_array_equal(back.labels, nl.labels)
    np.testing.assert_array_equal(back.mask, nl.mask)
    assert back.labels.dtype == np.int64 and back.mask.dtype == np.bool_
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="corrupt or unreadable .*no labels, mask.*inject_noise"):
        noise.load_noisy(tmp_path / "other.npz")
    with pytest.raises(ValueError):
        noise.NoisyLabels(np.zeros(3, dtype=np.int64), np.zeros(2, dtype=bool))


# ----------------------------------------------------------------------------- the stage
REPO = Path(__file__).resolve().parent.parent


def tiny_prepared(n_per_class: int = 12, k: int = 4):
    """A Prepared with `k` classes: 60% train, then clean, val and test splits, 1x4x4 images."""
    from labelnoise.datasets import Prepared

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(k), n_per_class).astype(np.int64)
    order = rng.permutation(labels.size)
    cut = np.cumsum([int(0.6 * labels.size), int(0.15 * labels.size), int(0.1 * labels.size)])
    train, clean, val, test = (a.astype(np.int64) for a in np.split(order, cut))
    images = rng.integers(0, 256, size=(labels.size, 1, 4, 4), dtype=np.uint8)
    return Prepared(images=images, labels=labels, train_idx=train, clean_idx=clean, val_idx=val, test_idx=test,
                    classes=[f"c{i}" for i in range(k)], dataset="digits")


@pytest.mark.parametrize("overlay", [
    {"kind": "symmetric", "rate": 0.45},
    {"kind": "asymmetric", "rate": 0.5, "asymmetric": {"class_map": {0: 1, 2: 3}}},
    {"kind": "transition",
     "transition": {"matrix": [[0.7, 0.3, 0, 0], [0, 1, 0, 0], [0.1, 0.1, 0.8, 0], [0, 0, 0.5, 0.5]]}},
])
def test_stage_corrupts_train_only_and_writes_outputs(tmp_path, monkeypatch, overlay) -> None:
    from labelnoise import io
    from labelnoise.config import from_dict, merge, read_yaml
    from labelnoise.datasets import load_prepared, save_prepared
    from stages import inject_noise
    from stages.common import PATHS

    monkeypatch.setenv("MLFLOW_TRACKING_URI", new_store(tmp_path))
    monkeypatch.chdir(tmp_path)
    cfg = from_dict(merge(read_yaml(REPO / "params.yaml"), {"base": {"threads": 1}, "noise": overlay}))
    with pytest.raises(FileNotFoundError, match=str(PATHS.prepared)):
        inject_noise.run(cfg)

    prepared = tiny_prepared()
    save_prepared(PATHS.prepared, prepared)
    metrics = inject_noise.run(cfg)

    after = load_prepared(PATHS.prepared)  # the input is untouched: clean, val and test keep true labels
    np.testing.assert_array_equal(after.labels, prepared.labels)
    nl = noise.load_noisy(PATHS.noisy)
    true = prepared.labels[prepared.train_idx]
    assert nl.labels.shape == true.shape
    np.testing.assert_array_equal(nl.mask, nl.labels != true)
    assert nl.mask.any()

    report = io.load_json(PATHS.noise_report)
    assert report["kind"] == cfg.noise.kind and report["seed"] == cfg.noise.seed
    assert report["n_changed"] == metrics["n_changed"] == nl.n_changed
    assert report["realised_rate"] == pytest.approx(metrics["realised_rate"]) == pytest.approx(nl.mask.mean())
    np.testing.assert_allclose(np.sum(report["transition"], axis=1), 1.0)
    assert set(report["per_class_rate"]) == set(prepared.classes)
    assert PATHS.noise_plot.stat().st_size > 0

    # same params, same noisy labels (the noise seed alone decides)
    inject_noise.run(cfg)
    np.testing.assert_array_equal(noise.load_noisy(PATHS.noisy).labels, nl.labels)


def test_stage_bad_class_map_fails_before_writing(tmp_path, monkeypatch) -> None:
    from labelnoise.config import from_dict, merge, read_yaml
    from labelnoise.datasets import save_prepared
    from stages import inject_noise
    from stages.common import PATHS

    monkeypatch.setenv("MLFLOW_TRACKING_URI", new_store(tmp_path))
    monkeypatch.chdir(tmp_path)
    # digits' shipped (MNIST) map names classes up to 8, but this dataset has 4 classes
    cfg = from_dict(merge(read_yaml(REPO / "params.yaml"), {"base": {"threads": 1},
                                                            "noise": {"kind": "asymmetric",
                                                                      "asymmetric": {"class_map": "auto"}}}))
    save_prepared(PATHS.prepared, tiny_prepared())
    with pytest.raises(ValueError, match="noise.asymmetric.class_map"):
        inject_noise.run(cfg)
    assert not PATHS.noisy.exists() and not PATHS.noise_report.exists() and not PATHS.noise_plot.exists()


# ----------------------------------------------------------------------------- instance-dependent noise
def random_probs(n: int, seed: int = 0) -> np.ndarray:
    """(n, K) rows of a peaked Dirichlet: distinct values, so the hardest examples are unambiguous."""
    return np.random.default_rng(seed).dirichlet(np.full(K, 0.3), size=n)


def independent_instance(y: np.ndarray, probs: np.ndarray, rate: float) -> np.ndarray:
    """The instance rule written out example by example (an independent reference implementation)."""
    noisy = y.copy()
    for c in range(K):
        members = [i for i in range(y.size) if y[i] == c]
        members.sort(key=lambda i: (probs[i, c], i))  # hardest first: lowest probability of the true class
        for i in members[: expected_changes(rate, len(members))]:
            others = [(probs[i, j], -j) for j in range(K) if j != c]
            noisy[i] = -max(others)[1]  # the most probable other class (lowest index on ties)
    return noisy


@pytest.mark.parametrize("rate", RATES)
def test_instance_rate_exact_per_class_and_flips_follow_the_rule(rate: float) -> None:
    y = make_labels(COUNTS)
    probs = random_probs(y.size)
    nl = corrupt_instance(y, probs, rate=rate)
    check_result(y, nl)
    for c, n_c in enumerate(COUNTS):
        assert nl.mask[y == c].sum() == expected_changes(rate, n_c), f"class {c}"
    np.testing.assert_array_equal(nl.labels, independent_instance(y, probs, rate))


def test_instance_flips_go_to_the_confusable_class_and_are_the_hardest() -> None:
    y = make_labels(COUNTS)
    probs = random_probs(y.size, seed=3)
    nl = corrupt_instance(y, probs, rate=0.45)
    score, confusable = instance_scores(y, probs)
    np.testing.assert_array_equal(score, probs[np.arange(y.size), y])
    np.testing.assert_array_equal(nl.labels[nl.mask], confusable[nl.mask])
    masked = probs.copy()
    masked[np.arange(y.size), y] = -1.0
    np.testing.assert_array_equal(confusable, masked.argmax(axis=1))
    assert np.all(confusable != y)
    for c in range(K):
        flipped, kept = score[(y == c) & nl.mask], score[(y == c) & ~nl.mask]
        if flipped.size and kept.size:
            assert flipped.max() < kept.min(), f"class {c}: a kept example is harder than a flipped one"


def test_instance_ties_break_by_index_and_higher_rate_is_a_superset() -> None:
    y = np.zeros(6, dtype=np.int64)
    probs = np.tile([0.5, 0.3, 0.2], (6, 1))  # all equally hard; confusable class 1
    nl = corrupt_instance(y, probs, rate=0.5)
    np.testing.assert_array_equal(nl.mask, [True, True, True, False, False, False])
    np.testing.assert_array_equal(nl.labels, [1, 1, 1, 0, 0, 0])
    y = make_labels(COUNTS)
    probs = random_probs(y.size, seed=5)
    low, high = corrupt_instance(y, probs, rate=0.2), corrupt_instance(y, probs, rate=0.6)
    assert np.all(high.mask[low.mask])
    np.testing.assert_array_equal(high.labels[low.mask], low.labels[low.mask])


def test_instance_bad_inputs() -> None:
    y = make_labels(COUNTS)
    with pytest.raises(ValueError, match="needs noise.instance.model, .* use labelnoise.noise.inject"):
        run(y, "instance", 0.4)  # it trains a reference classifier on the dataset: corrupt has labels alone
    with pytest.raises(ValueError, match="pred_probs"):
        corrupt_instance(y, random_probs(y.size - 1), rate=0.4)
    with pytest.raises(ValueError, match="pred_probs"):
        corrupt_instance(y, np.full((y.size, K), np.nan), rate=0.4)
    with pytest.raises(ValueError, match="noise.rate"):
        corrupt_instance(y, random_probs(y.size), rate=1.2)
    with pytest.raises(ValueError, match="open_set"):
        run(y, "open_set", 0.4)  # replaces images: a different function


# ----------------------------------------------------------------------------- open-set noise
@pytest.mark.parametrize("rate", [0.0, 0.2, 0.45, 1.0])
def test_open_set_keeps_labels_and_replaces_exactly_round_rate_n(rate: float) -> None:
    y = make_labels(COUNTS)
    nl = corrupt_open_set(y, rate=rate, num_classes=K, rng=np.random.default_rng(1), image_shape=(1, 6, 5))
    np.testing.assert_array_equal(nl.labels, y)
    assert nl.labels.dtype == np.int64
    for c, n_c in enumerate(COUNTS):
        assert nl.mask[y == c].sum() == expected_changes(rate, n_c), f"class {c}"
    assert nl.images.shape == (nl.n_changed, 1, 6, 5) and nl.images.dtype == np.uint8
    # the same examples as the label models of this seed and rate
    np.testing.assert_array_equal(nl.mask, run(y, "symmetric", rate).mask)


def test_open_set_white_noise_is_seeded_and_uniform() -> None:
    y = make_labels([400] * K)
    kw = dict(rate=0.5, num_classes=K, image_shape=(3, 8, 8))
    a = corrupt_open_set(y, rng=np.random.default_rng(7), **kw)
    b = corrupt_open_set(y, rng=np.random.default_rng(7), **kw)
    c = corrupt_open_set(y, rng=np.random.default_rng(8), **kw)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert not np.array_equal(a.images, c.images)
    counts = np.bincount(a.images.ravel(), minlength=256)  # 2000 * 192 pixels, expected 1500 per value
    assert counts.min() > 1500 - 5 * math.sqrt(1500) and counts.max() < 1500 + 5 * math.sqrt(1500)


def test_open_set_draws_from_the_source_with_replacement_only_when_short() -> None:
    y = make_labels(COUNTS)
    pool = np.zeros((300, 1, 2, 2), dtype=np.uint8)  # 300 distinct source images
    pool[:, 0, 0, 0], pool[:, 0, 0, 1] = np.arange(300) % 256, np.arange(300) // 256
    keys = {img.tobytes(): i for i, img in enumerate(pool)}
    assert len(keys) == 300
    nl = corrupt_open_set(y, rate=0.5, num_classes=K, rng=np.random.default_rng(2), image_shape=(1, 2, 2),
                          source_images=pool)
    picked = [keys[img.tobytes()] for img in nl.images]  # every replacement is a source image
    assert len(set(picked)) == len(picked) == nl.n_changed  # 139 < 300: no repeats
    small = pool[:20]
    nl = corrupt_open_set(y, rate=0.5, num_classes=K, rng=np.random.default_rng(2), image_shape=(1, 2, 2),
                          source_images=small)
    assert all(img.tobytes() in keys and keys[img.tobytes()] < 20 for img in nl.images)
    with pytest.raises(ValueError, match="noise.open_set.source"):
        corrupt_open_set(y, rate=0.5, num_classes=K, rng=np.random.default_rng(2), image_shape=(1, 3, 3),
                         source_images=pool)


def test_save_and_load_round_trip_with_images(tmp_path) -> None:
    y = make_labels(COUNTS)
    nl = corrupt_open_set(y, rate=0.3, num_classes=K, rng=np.random.default_rng(0), image_shape=(1, 4, 4))
    back = noise.load_noisy(noise.save_noisy(tmp_path / "noisy.npz", nl))
    np.testing.assert_array_equal(back.images, nl.images)
    np.testing.assert_array_equal(back.mask, nl.mask)
    assert noise.load_noisy(noise.save_noisy(tmp_path / "plain.npz", run(y, "pair", 0.3))).images is None
    with pytest.raises(ValueError, match="images"):
        noise.NoisyLabels(y, nl.mask, nl.images[:-1])


def test_train_view_uses_the_open_set_images_and_nothing_else_changes() -> None:
    from labelnoise.views import make_train_view

    p = tiny_prepared(n_per_class=20)
    true = p.labels[p.train_idx]
    nl = corrupt_open_set(true, rate=0.5, num_classes=4, rng=np.random.default_rng(3), image_shape=(1, 4, 4))
    view = make_train_view(p, nl)
    x = view.x_train.numpy()
    np.testing.assert_array_equal(x[nl.mask], nl.images)
    np.testing.assert_array_equal(x[~nl.mask], p.images[p.train_idx][~nl.mask])
    assert not np.array_equal(x, p.images[p.train_idx])
    np.testing.assert_array_equal(view.y_train.numpy(), true)  # labels kept
    np.testing.assert_array_equal(view.x_clean.numpy(), p.images[p.clean_idx])  # clean and test untouched
    np.testing.assert_array_equal(view.x_test.numpy(), p.images[p.test_idx])
    wrong = noise.NoisyLabels(nl.labels, nl.mask, np.zeros((nl.n_changed, 1, 5, 5), dtype=np.uint8))
    with pytest.raises(ValueError, match="re-run inject_noise"):
        make_train_view(p, wrong)


def test_fit_images_shapes_channels_and_values() -> None:
    from labelnoise.datasets import _load_digits, fit_images

    digits = _load_digits()[0]  # (1797, 1, 8, 8)
    up = fit_images(digits[:50], (1, 28, 28))
    assert up.shape == (50, 1, 28, 28) and up.dtype == np.uint8
    assert abs(float(up.mean()) - float(digits[:50].mean())) < 3.0  # resampling keeps the brightness
    flat = np.full((2, 3, 32, 32), 77, dtype=np.uint8)
    np.testing.assert_array_equal(fit_images(flat, (1, 28, 28)), 77)  # luma of grey is grey
    rgb = fit_images(digits[:3], (3, 32, 32))
    assert rgb.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(rgb[:, 0], rgb[:, 2])


def test_open_set_pool_digits_and_missing_cifar100(tmp_path) -> None:
    from labelnoise.config import DataConfig
    from labelnoise.datasets import DataUnavailable, open_set_pool

    data = DataConfig(dataset="fashion_mnist", root=str(tmp_path / "raw"), mirrors={}, download=False, trusted_size=0,
                      val_size=0, test_size=0, train_limit=0, split_seed=0, truth=True, trusted_file="", path="",
                      classes=[], image_size=32, channels=3, skip_bad_images=False)
    pool = open_set_pool("digits", data, (1, 28, 28))
    assert pool.shape == (1797, 1, 28, 28) and pool.dtype == np.uint8
    with pytest.raises(DataUnavailable, match=r"^noise.open_set.source: cifar100 images are not available") as e:
        open_set_pool("cifar100", data, (3, 32, 32))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(("override", "message"), [
    ("noise.instance.epochs=0", "noise.instance.epochs: must be >= 1"),
    ("noise.instance.lr=0", "noise.instance.lr: must be > 0.0"),
    ("noise.instance.batch_size=1.5", "noise.instance.batch_size: must be an integer"),
    ("noise.instance.seed=-1", "noise.instance.seed: must be >= 0"),
    ("noise.open_set.source=svhn", "noise.open_set.source: must be one of"),
    ("noise.massive.source=other", "noise.massive.source: must be one of 'train', 'auto', 'white_noise'"),
    ("noise.kind=label_flip", "noise.kind: must be one of"),
])
def test_bad_noise_params_one_clear_line(override: str, message: str) -> None:
    from labelnoise.config import ConfigError, load_config

    with pytest.raises(ConfigError) as e:
        load_config(REPO / "params.yaml", [override])
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_open_set_source_of_the_same_classes_is_a_config_error() -> None:
    from labelnoise.config import ConfigError, load_config

    base = ["noise.kind=open_set", "data.dataset=mnist"]
    with pytest.raises(ConfigError, match="noise.open_set.source: digits images show classes of the dataset mnist"):
        load_config(REPO / "params.yaml", [*base, "noise.open_set.source=digits"])
    assert load_config(REPO / "params.yaml", [*base, "noise.open_set.source=auto"]).noise.open_set.source == "auto"
    # only checked for open_set: the source is unused otherwise
    load_config(REPO / "params.yaml", ["data.dataset=mnist", "noise.open_set.source=digits"])
    # massive's source likewise, for massive
    with pytest.raises(ConfigError, match="noise.massive.source: digits images show classes of the dataset mnist"):
        load_config(REPO / "params.yaml", ["noise.kind=massive", "data.dataset=mnist", "noise.massive.source=digits"])


# ----------------------------------------------------------------------------- the stage: instance, open_set
def stage_config(tmp_path, monkeypatch, noise_overlay: dict, **sections):
    from labelnoise.config import from_dict, merge, read_yaml

    monkeypatch.setenv("MLFLOW_TRACKING_URI", new_store(tmp_path))
    monkeypatch.chdir(tmp_path)
    return from_dict(merge(read_yaml(REPO / "params.yaml"),
                           {"base": {"threads": 1}, "noise": noise_overlay, **sections}))


def test_stage_instance_trains_the_reference_on_the_clean_subset_only(tmp_path, monkeypatch) -> None:
    from labelnoise import io
    from labelnoise.datasets import save_prepared
    from stages import inject_noise
    from stages.common import PATHS

    cfg = stage_config(tmp_path, monkeypatch, {"kind": "instance", "rate": 0.4})
    prepared = tiny_prepared(n_per_class=20)
    save_prepared(PATHS.prepared, prepared)
    true = prepared.labels[prepared.train_idx]
    probs = np.random.default_rng(9).dirichlet(np.ones(4), size=true.size)
    seen = {}

    def fake_reference(x_fit, y_fit, x_score, **kw):  # the stage's only way to the reference classifier
        seen.update(x_fit=x_fit, y_fit=y_fit, x_score=x_score, **kw)
        return probs

    monkeypatch.setattr(reference, "reference_probabilities", fake_reference)
    metrics = inject_noise.run(cfg)
    np.testing.assert_array_equal(seen["x_fit"], prepared.images[prepared.clean_idx])
    np.testing.assert_array_equal(seen["y_fit"], prepared.labels[prepared.clean_idx])  # clean labels, nothing else
    np.testing.assert_array_equal(seen["x_score"], prepared.images[prepared.train_idx])
    assert all(not (isinstance(v, np.ndarray) and v.shape == true.shape) for v in seen.values())  # no train labels
    assert (seen["recipe"].epochs, seen["recipe"].lr, seen["recipe"].precision, seen["seed"]) == (
        cfg.noise.instance.epochs, cfg.noise.instance.lr, cfg.noise.instance.precision, cfg.noise.instance.seed)
    assert seen["recipe"].momentum == cfg.train.momentum  # the rest is the shared training recipe

    nl = noise.load_noisy(PATHS.noisy)
    np.testing.assert_array_equal(nl.labels, corrupt_instance(true, probs, rate=0.4).labels)
    report = io.load_json(PATHS.noise_report)
    assert report["kind"] == "instance" and report["confusable_fraction"] == 1.0
    assert report["realised_rate"] == pytest.approx(metrics["realised_rate"]) == pytest.approx(nl.mask.mean())
    assert report["per_class_rate"] == {f"c{c}": expected_changes(0.4, int((true == c).sum())) / (true == c).sum()
                                        for c in range(4)}
    assert report["reference"]["trained_on"] == "clean subset" and 0.0 <= report["top_target_fraction"] <= 1.0


def test_stage_instance_real_reference_is_deterministic(tmp_path, monkeypatch) -> None:
    from labelnoise import io
    from labelnoise.datasets import save_prepared
    from stages import inject_noise
    from stages.common import PATHS

    cfg = stage_config(tmp_path, monkeypatch, {"kind": "instance", "rate": 0.3,
                                               "instance": {"epochs": 2, "batch_size": 16}})
    prepared = tiny_prepared(n_per_class=20)
    save_prepared(PATHS.prepared, prepared)
    inject_noise.run(cfg)
    first = noise.load_noisy(PATHS.noisy)
    true = prepared.labels[prepared.train_idx]
    for c in range(4):
        assert first.mask[true == c].sum() == expected_changes(0.3, int((true == c).sum()))
    inject_noise.run(cfg)
    np.testing.assert_array_equal(noise.load_noisy(PATHS.noisy).labels, first.labels)  # bit-identical
    assert io.load_json(PATHS.noise_report)["reference"]["epochs"] == 2


def test_stage_open_set_writes_images_the_train_view_uses(tmp_path, monkeypatch) -> None:
    from labelnoise import io
    from labelnoise.datasets import load_prepared, save_prepared
    from labelnoise.views import make_train_view
    from stages import inject_noise
    from stages.common import PATHS

    cfg = stage_config(tmp_path, monkeypatch, {"kind": "open_set", "rate": 0.5, "open_set": {"source": "auto"}})
    prepared = tiny_prepared(n_per_class=20)  # dataset "digits": auto is white noise
    save_prepared(PATHS.prepared, prepared)
    metrics = inject_noise.run(cfg)
    nl = noise.load_noisy(PATHS.noisy)
    true = prepared.labels[prepared.train_idx]
    np.testing.assert_array_equal(nl.labels, true)
    assert nl.images.shape == (nl.n_changed, 1, 4, 4) and nl.images.dtype == np.uint8
    report = io.load_json(PATHS.noise_report)
    assert report["open_set_source"] == "white_noise" and report["open_set_source_param"] == "auto"
    assert report["realised_rate"] == pytest.approx(metrics["realised_rate"]) == pytest.approx(nl.mask.mean())
    assert report["realised_rate"] > 0.4 and set(report["per_class_rate"].values()) == {0.5}
    np.testing.assert_allclose(report["transition"], np.eye(4))  # labels kept
    view = make_train_view(load_prepared(PATHS.prepared), nl)
    np.testing.assert_array_equal(view.x_train.numpy()[nl.mask], nl.images)
    np.testing.assert_array_equal(load_prepared(PATHS.prepared).images, prepared.images)  # the input untouched


def test_stage_open_set_digits_source_resized(tmp_path, monkeypatch) -> None:
    from labelnoise.datasets import Prepared, _load_digits, fit_images, save_prepared
    from stages import inject_noise
    from stages.common import PATHS

    cfg = stage_config(tmp_path, monkeypatch, {"kind": "open_set", "rate": 0.25, "open_set": {"source": "auto"}})
    p = tiny_prepared(n_per_class=20)
    images = np.random.default_rng(1).integers(0, 256, size=(len(p.labels), 1, 28, 28), dtype=np.uint8)
    p = Prepared(**{**vars(p), "images": images, "dataset": "fashion_mnist"})  # MNIST-shaped
    save_prepared(PATHS.prepared, p)
    inject_noise.run(cfg)
    nl = noise.load_noisy(PATHS.noisy)
    assert nl.images.shape == (nl.n_changed, 1, 28, 28) and nl.images.dtype == np.uint8
    pool = {img.tobytes() for img in fit_images(_load_digits()[0], (1, 28, 28))}
    assert all(img.tobytes() in pool for img in nl.images)  # each replacement is an upsampled digit


def test_stage_open_set_missing_cifar100_fails_in_one_line_before_writing(tmp_path, monkeypatch) -> None:
    from labelnoise.datasets import DataUnavailable, Prepared, save_prepared
    from stages import inject_noise
    from stages.common import PATHS

    cfg = stage_config(tmp_path, monkeypatch, {"kind": "open_set", "open_set": {"source": "auto"}},
                       data={"dataset": "cifar10", "root": str(tmp_path / "raw"), "download": False,
                             "mirrors": {"fashion_mnist": [], "mnist": [], "cifar10": [], "cifar100": []}})
    p = tiny_prepared()
    images = np.zeros((len(p.labels), 3, 32, 32), dtype=np.uint8)
    save_prepared(PATHS.prepared, Prepared(**{**vars(p), "images": images, "dataset": "cifar10"}))
    with pytest.raises(DataUnavailable, match="noise.open_set.source: cifar100 images are not available") as e:
        inject_noise.run(cfg)
    assert "\n" not in str(e.value)
    assert not PATHS.noisy.exists() and not PATHS.noise_report.exists() and not PATHS.noise_plot.exists()


# ----------------------------------------------------------------------------- structured (Rolnick et al.)
def test_structured_interpolates_symmetric_and_pair_with_exact_counts() -> None:
    y = make_labels([300] * 10)
    k = 10
    pair = run(y, "pair", 0.4)
    one = run(y, "structured", 0.4, delta=1.0)
    np.testing.assert_array_equal(one.labels, pair.labels)  # delta = 1 is pair noise, same changed set
    for delta in (0.0, 0.5):
        nl = run(y, "structured", 0.4, delta=delta)
        check_result(y, nl)
        np.testing.assert_array_equal(nl.mask, pair.mask)  # which examples change does not depend on delta
        q = structured_transition(k, rate=0.4, delta=delta)
        for c in range(k):
            m = expected_changes(0.4, 300)
            targets = np.bincount(nl.labels[(y == c) & nl.mask], minlength=k)
            np.testing.assert_array_equal(targets, noise.largest_remainder(q[c] * (1 - np.eye(k)[c]), m))
            assert targets[c] == 0
            if delta == 0.0:
                assert targets.max() - targets[targets > 0].min() <= 1  # uniform over the other classes
            else:
                assert targets[(c + 1) % k] == round(m * (0.5 + 0.5 / 9))  # 60 + 7 of 120
    np.testing.assert_array_equal(run(y, "structured", 0.4, delta=0.5).labels,
                                  run(y, "structured", 0.4, delta=0.5).labels)  # seeded: bit-identical


def test_structured_transition_is_row_stochastic_and_checks_delta() -> None:
    t = structured_transition(4, rate=0.3, delta=0.25)
    np.testing.assert_allclose(t.sum(axis=1), 1.0)
    assert t[0, 0] == pytest.approx(0.7) and t[0, 1] == pytest.approx(0.3 * (0.75 / 3 + 0.25))
    assert t[0, 2] == pytest.approx(0.3 * 0.25) and t[3, 0] == t[0, 1]
    with pytest.raises(ValueError, match="noise.structured.delta"):
        structured_transition(4, rate=0.3, delta=1.5)


# ----------------------------------------------------------------------------- massive (Rolnick et al.)
def test_massive_keeps_n_clean_stratified_and_adds_alpha_random_labels() -> None:
    y = make_labels(COUNTS)  # 278 examples
    nl = corrupt_massive(y, alpha=2.5, n_clean=40, num_classes=K, rng=np.random.default_rng(3))
    assert nl.labels.shape == nl.index.shape == (40 + 100,)
    assert (np.diff(nl.index) > 0).all() and nl.index.max() < y.size
    np.testing.assert_array_equal(nl.mask, nl.labels != y[nl.index])
    kept_true = nl.labels == y[nl.index]
    # the clean part: exactly the stratified counts of each class keep their label
    clean_counts = noise.largest_remainder(np.array(COUNTS, dtype=float), 40)
    assert kept_true.sum() >= 40 and kept_true.sum() < 40 + 100  # random labels are right ~1 time in 10
    assert nl.mask.sum() > 100 * 0.75
    again = corrupt_massive(y, alpha=2.5, n_clean=40, num_classes=K, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(again.labels, nl.labels)  # seeded: bit-identical
    np.testing.assert_array_equal(again.index, nl.index)
    per_class_kept = np.bincount(y[nl.index][kept_true], minlength=K)
    assert (per_class_kept >= clean_counts).all()
    auto = corrupt_massive(y, alpha=1.0, n_clean=0, num_classes=K, rng=np.random.default_rng(3))
    assert auto.labels.size == 2 * (y.size // 2)  # n_clean = floor(n / (1 + alpha))
    with pytest.raises(ValueError, match="lower noise.massive.alpha or noise.massive.n_clean"):
        corrupt_massive(y, alpha=10.0, n_clean=40, num_classes=K, rng=np.random.default_rng(3))
    big = corrupt_massive(make_labels([2000] * 10), alpha=4.0, n_clean=1000, num_classes=K,
                          rng=np.random.default_rng(0))
    added_labels = np.bincount(big.labels[~(big.labels == make_labels([2000] * 10)[big.index])], minlength=K)
    assert added_labels.min() > 0.8 * added_labels.mean()  # uniform over the classes


def test_massive_from_another_source_replaces_the_added_images_only() -> None:
    y = make_labels(COUNTS)
    same = corrupt_massive(y, alpha=2.0, n_clean=40, num_classes=K, rng=np.random.default_rng(5))
    other = corrupt_massive(y, alpha=2.0, n_clean=40, num_classes=K, rng=np.random.default_rng(5), other_source=True,
                            image_shape=(1, 4, 4), source_images=None)  # white noise
    np.testing.assert_array_equal(other.index, same.index)  # same examples and labels, other images
    np.testing.assert_array_equal(other.labels, same.labels)
    assert other.mask.sum() == 80 and other.images.shape == (80, 1, 4, 4) and other.images.dtype == np.uint8
    pool = np.full((3, 1, 4, 4), 7, dtype=np.uint8)
    drawn = corrupt_massive(y, alpha=2.0, n_clean=40, num_classes=K, rng=np.random.default_rng(5), other_source=True,
                            image_shape=(1, 4, 4), source_images=pool)
    assert (drawn.images == 7).all()  # a pool smaller than needed is drawn with replacement
