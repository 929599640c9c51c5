"""Estimating the noise without the truth (labelnoise.noise_estimate, stage estimate_noise): each estimator recovers a
known corruption from ideal inputs, the rate follows from the matrix, and the stage on the tiny preset lands near the
realised rate and never reads a true train label."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli import app
from labelnoise.io import load_json
from labelnoise.noise import corrupt, load_noisy
from labelnoise.noise_estimate import (
    EstimateConfig,
    channel_misfit,
    confident_joint_transition,
    confusion_transition,
    estimator,
    glc_transition,
    noise_rate,
    paired_transition,
    prior_from_noisy,
)
from tests.helpers import new_store

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()


def test_the_confident_joint_recovers_pair_noise_from_confident_probabilities() -> None:
    rng = np.random.default_rng(0)
    true = rng.integers(0, 5, 6000)
    noisy = corrupt(true, kind="pair", rate=0.3, num_classes=5, rng=rng)
    probs = np.full((true.size, 5), 0.05)
    probs[np.arange(true.size), true] = 0.8  # an out-of-sample model that knows the true class
    t, prior = confident_joint_transition(noisy.labels, probs)
    expected = 0.7 * np.eye(5) + 0.3 * np.roll(np.eye(5), 1, axis=1)  # class c -> c + 1
    np.testing.assert_allclose(t, expected, atol=0.01)
    np.testing.assert_allclose(t.sum(axis=1), 1.0)
    assert noise_rate(t, prior) == pytest.approx(noisy.mask.mean(), abs=0.01)


def test_the_confusion_inversion_recovers_the_noise_that_a_confused_classifier_hides() -> None:
    # A classifier that confuses classes 0 and 1 (as Fashion-MNIST's shirts and T-shirts): 0.3 of its belief in
    # an image of class 0 or 1 goes to the other. GLC counts that confusion as noise; the inversion does not.
    rng = np.random.default_rng(0)
    k, n, m = 4, 40_000, 4_000
    true, trusted = rng.integers(0, k, n), rng.integers(0, k, m)
    noisy = corrupt(true, kind="symmetric", rate=0.4, num_classes=k, rng=rng)

    def probs(labels: np.ndarray) -> np.ndarray:  # (n, K) a fixed randomised classifier of the true class
        p = np.eye(k)[labels] * 0.9 + 0.1 / k
        pair = labels < 2
        p[pair] += 0.3 * (np.eye(k)[1 - labels[pair]] - np.eye(k)[labels[pair]])
        return p

    fold = np.arange(n) % 2  # two folds: the same classifier in both
    t, prior = confusion_transition(noisy.labels, probs(true), fold, np.stack([probs(trusted)] * 2), trusted, k)
    realised = noisy.mask.mean()
    truth = np.zeros((k, k))
    np.add.at(truth, (true, noisy.labels), 1)
    truth /= truth.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(t, truth, atol=0.03)
    np.testing.assert_allclose(t.sum(axis=1), 1.0)
    np.testing.assert_allclose(prior, np.bincount(true, minlength=k) / n, atol=0.02)
    assert noise_rate(t, prior) == pytest.approx(realised, abs=0.01)
    # GLC, given the noisy-label network's view of the same classifier (p(ỹ | x) = p(· | x) T), counts the confusion
    glc = glc_transition(probs(trusted) @ truth, trusted, k)
    assert noise_rate(glc, prior_from_noisy(np.bincount(noisy.labels, minlength=k) / n, glc)) > realised + 0.05


def test_the_misfit_check_passes_class_conditional_noise_and_fails_noise_that_follows_the_classifier() -> None:
    # Each image is hard or easy (40 %) and has a class it looks like; classifiers trained on the trusted subset
    # call a hard image that class 60 % of the time. Class-conditional noise ignores all that: the estimated channel
    # predicts the joint of their predictions and the given labels. Instance noise gives every hard image that
    # class (as noise.corrupt_instance does): a fooled estimate (5 %) no longer predicts the joint.
    rng = np.random.default_rng(0)
    k, n, m = 5, 30_000, 3_000

    def images(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # true class, hard, look-alike class
        y = rng.integers(0, k, size)
        return y, rng.random(size) < 0.4, (y + rng.integers(1, k, size)) % k

    def predict(y: np.ndarray, hard: np.ndarray, like: np.ndarray) -> np.ndarray:  # (size, K) one-hot
        other = (y + rng.integers(1, k, y.size)) % k
        pred = np.where(hard, np.where(rng.random(y.size) < 0.6, like, y),
                        np.where(rng.random(y.size) < 0.97, y, other))
        return np.eye(k)[pred]

    train, halves = images(n), [images(m // 2), images(m // 2)]
    held = [predict(*h) for h in halves]
    on_train = np.stack([predict(*train), predict(*train)])
    labels = [h[0] for h in halves]
    true, hard, like = train
    prior = np.bincount(true, minlength=k) / n
    sym = corrupt(true, kind="symmetric", rate=0.4, num_classes=k, rng=rng).labels
    channel = 0.6 * np.eye(k) + 0.4 * (1 - np.eye(k)) / (k - 1)
    fits = channel_misfit(sym, on_train, held, labels, channel, prior)
    instance = np.where(hard, like, true)
    fooled = 0.95 * np.eye(k) + 0.05 * (1 - np.eye(k)) / (k - 1)
    misfit = channel_misfit(instance, on_train, held, labels, fooled, prior)
    assert fits["gap"] < 2 * fits["se"] + 0.01 and 0.001 < fits["se"] < 0.02  # 1,500 trusted examples a network
    assert misfit["gap"] > 0.05 + 2 * misfit["se"]
    assert misfit["agreement_observed"] > misfit["agreement_predicted"]  # the labels follow the classifier


def test_paired_counts_recover_noise_that_follows_the_classifier_where_the_inversion_sees_too_little() -> None:
    """Instance-dependent noise (the annotators err on the images a network finds hard, as humans do): the
    confusion inversion, which assumes the network's errors and the noise independent given the class, sees too
    little of it; the given labels of the trusted examples, counted by true class, see all of it."""
    rng = np.random.default_rng(3)
    k, n, m = 4, 40_000, 4_000
    true, y_trusted = rng.integers(0, k, n), np.repeat(np.arange(k), m // k)

    def network_and_annotator(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        hard = rng.random(y.size) < 0.5  # half the images are hard: the network and the annotator err there
        guess = np.where(hard & (rng.random(y.size) < 0.6), (y + 1) % k, y)  # the hard images look like y + 1
        probs = np.full((y.size, k), 0.1 / (k - 1))
        probs[np.arange(y.size), guess] = 0.9
        given = np.where(hard & (rng.random(y.size) < 0.8), guess, y)  # the annotator errs as the network does
        return probs, given

    probs, noisy = network_and_annotator(true)
    trusted_probs, trusted_given = network_and_annotator(y_trusted)
    realised = (noisy != true).mean()
    t_conf, prior_conf = confusion_transition(noisy, probs, np.zeros(n, dtype=int), trusted_probs[None], y_trusted, k)
    t = paired_transition(trusted_given, y_trusted, k)
    prior = prior_from_noisy(np.bincount(noisy, minlength=k) / n, t)
    assert noise_rate(t, prior) == pytest.approx(realised, abs=0.02)
    assert noise_rate(t_conf, prior_conf) < realised - 0.1  # the inversion's blind spot, measured
    np.testing.assert_allclose(t.sum(axis=1), 1.0)
    assert paired_transition(np.array([1, 1]), np.array([0, 0]), 3)[2].tolist() == [0.0, 0.0, 1.0]  # no examples


def test_auto_takes_the_pairs_where_there_are_and_a_missing_input_is_one_line() -> None:
    cfg = EstimateConfig(folds=2, epochs=1, use="auto", trusted_folds=0, misfit_tolerance=0.05)
    assert estimator(cfg, has_trusted=True, has_paired=True) == "paired"
    assert estimator(cfg, has_trusted=True) == "confusion"
    assert estimator(cfg, has_trusted=False) == "confident_joint"
    for use, has, says in (("paired", dict(has_trusted=True), "needs the noisy labels of the trusted examples"),
                           ("confusion", dict(has_trusted=False), "needs a trusted clean subset")):
        with pytest.raises(ValueError, match=says) as caught:
            estimator(dataclasses.replace(cfg, use=use), **has)
        assert "\n" not in str(caught.value)


def test_rate_and_prior_from_a_matrix() -> None:
    t = np.array([[0.8, 0.2], [0.4, 0.6]])
    prior = np.array([0.25, 0.75])
    assert noise_rate(t, prior) == pytest.approx(0.25 * 0.2 + 0.75 * 0.4)
    np.testing.assert_allclose(prior_from_noisy(prior @ t, t), prior)  # π T = the noisy marginal, solved back
    assert glc_transition(np.array([[0.9, 0.1], [0.3, 0.7]]), np.array([0, 0]), 2)[1].tolist() == [0.0, 1.0]


def test_the_stage_estimates_near_the_realised_rate_without_the_truth(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", new_store(tmp_path))
    previous = torch.get_num_threads()
    try:
        assert runner.invoke(app, ["preset", "tiny", "--params", str(REPO / "params.yaml"),
                                   "--out", "params.yaml"]).exit_code == 0
        for stage in ("download", "inject-noise"):
            assert runner.invoke(app, [stage, "-S", "base.threads=1"]).exit_code == 0
        # the stage never sees a true train label: it would have to read them from prepared.npz, so hide them
        import stages.estimate_noise as stage

        real = stage.load_prepared

        def without_truth(path):  # the train labels replaced by garbage: the estimate must not change
            p = real(path)
            labels = p.labels.copy()
            labels[p.train_idx] = 0
            return type(p)(**{**p.__dict__, "labels": labels})

        monkeypatch.setattr(stage, "load_prepared", without_truth)
        result = runner.invoke(app, ["estimate-noise", "-S", "base.threads=1"])
        assert result.exit_code == 0, result.output
    finally:
        torch.set_num_threads(previous)
    report = load_json("reports/noise_estimate.json")
    realised = load_noisy("data/noisy.npz").mask.mean()
    assert report["use"] == "confusion" and set(report["estimates"]) == {"confusion", "glc", "confident_joint"}
    assert abs(report["rate"] - realised) < 0.1  # 40 % symmetric noise on digits, 15 epochs per fold
    t = np.asarray(report["transition"])
    np.testing.assert_allclose(t.sum(axis=1), 1.0)
    assert Path("reports/noise_estimate.png").read_bytes()[:4] == b"\x89PNG"
    fit = report["fit"]  # the misfit check (two trusted-only networks): symmetric noise is class-conditional
    assert fit["class_conditional"] is True and 0 <= fit["gap"] <= fit["tolerance"] + 2 * fit["se"]
