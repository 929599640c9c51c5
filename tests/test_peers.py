"""Today's peers: ELR (early-learning regularisation) and DivideMix, the MixMatch pieces they share, their `auto`
settings from the noise estimate, resume, and the stages with DivideMix's two networks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labelnoise import auto, engine
from labelnoise.config import from_dict, merge, read_yaml
from labelnoise.engine import mixmatch as mm
from labelnoise.methods import get_method
from labelnoise.methods.elr import ELRParams, ELRTask
from labelnoise.models import Ensemble, create_model, load_model
from tests.helpers import split_student
from tests.test_spade import REPO, assert_same_result, config, noisy_view, run_fit, stage_workspace

pytestmark = pytest.mark.usefixtures("one_thread")

DIVIDEMIX = {"warm_up": 2, "p_threshold": 0.5, "lambda_u": 25.0, "loss_history": 1, "confidence_penalty": False,
             "rampup_epochs": 1, "view_augment": "none"}


def pair(seed: int = 0, k: int = 3) -> Ensemble:
    torch.manual_seed(seed)
    return create_model("cnn", num_classes=k, in_channels=1, image_size=8, mean=[0.3], std=[0.3], members=2)


# ----------------------------------------------------------------------------- the MixMatch pieces
def test_sharpen_keeps_distributions_and_sharpens() -> None:
    p = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    s = mm.sharpen(p, 0.5)
    torch.testing.assert_close(s.sum(dim=1), torch.ones(2))
    torch.testing.assert_close(s[0], torch.tensor([25.0, 9.0, 4.0]) / 38.0)  # p^2 renormalised
    assert (s.max(dim=1).values > p.max(dim=1).values).all()


def test_mix_is_one_convex_combination_nearer_its_first_example_and_seeded() -> None:
    x = torch.arange(6 * 4, dtype=torch.uint8).view(6, 1, 2, 2)
    t = F.one_hot(torch.arange(6) % 3, 3).float()
    mixed, targets, lam = mm.mix(x, t, alpha=4.0, generator=torch.Generator().manual_seed(1))
    assert 0.5 <= lam <= 1.0 and mixed.dtype == torch.float32
    perm = torch.randperm(6, generator=_after_one_beta(1))
    torch.testing.assert_close(mixed, lam * x.float() + (1 - lam) * x.float()[perm])
    torch.testing.assert_close(targets, lam * t + (1 - lam) * t[perm])
    again = mm.mix(x, t, alpha=4.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again[0], mixed) and again[2] == lam


def _after_one_beta(seed: int) -> torch.Generator:
    g = torch.Generator().manual_seed(seed)
    mm.beta_draw(4.0, 1, generator=g)
    return g


def test_losses_penalty_and_ramp() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    t = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    expected = -(F.log_softmax(logits, 1) * t).sum(1).mean()
    torch.testing.assert_close(mm.soft_cross_entropy(logits, t), expected)
    torch.testing.assert_close(mm.guess_loss(logits, t), ((torch.softmax(logits, 1) - t) ** 2).mean())
    assert mm.soft_cross_entropy(logits[:0], t[:0]).item() == 0.0 and mm.guess_loss(logits[:0], t[:0]).item() == 0.0
    uniform = torch.full((3,), 1 / 3)
    assert mm.prior_penalty(torch.zeros(4, 3), uniform).abs().item() < 1e-6  # mean prediction = prior
    assert mm.prior_penalty(torch.tensor([[5.0, 0.0, 0.0]] * 4), uniform).item() > 0.5  # one class guessed
    assert [mm.ramp(e, start=2, length=4) for e in (1, 2, 4, 6, 9)] == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert [mm.ramp(e, start=2, length=0) for e in (1.9, 2)] == [0.0, 1.0]


# ----------------------------------------------------------------------------- ELR
def test_elr_loss_is_cross_entropy_plus_the_regulariser_on_a_moving_target() -> None:
    task = ELRTask(ELRParams(beta=0.7, lam=3.0), n=5, num_classes=3)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x, y, idx = torch.rand(2, 1, 2, 2), torch.tensor([0, 2]), torch.tensor([1, 3])
    for call in range(2):
        before = task.target[idx].clone()
        out = task(model, x, y, step=call, idx=idx)
        logits = model(x)
        p = torch.softmax(logits, 1).clamp(1e-4, 1 - 1e-4)
        t = 0.7 * before + 0.3 * p / p.sum(1, keepdim=True)
        expected = F.cross_entropy(logits, y) + 3.0 * torch.log(1 - (t * p).sum(1)).mean()
        torch.testing.assert_close(out["loss"], expected)
        torch.testing.assert_close(task.target[idx], t.detach())
        torch.testing.assert_close(out["weight"], t.detach()[[0, 1], [0, 2]])  # t of the given label
    assert task.target[[0, 2, 4]].abs().sum() == 0  # examples not in a batch keep t = 0


def test_elr_scores_the_wrong_labels_low() -> None:
    data, _, mask = noisy_view(n_train=300, rate=0.3)
    result = run_fit(config({"method": "elr", "epochs": 4, "beta": 0.7, "lam": 3.0}), data, None)
    score = result.weights["weight"][-1]
    assert score[mask.numpy()].mean() < score[~mask.numpy()].mean() - 0.2
    assert result.history[-1]["test_acc"] > 0.9


# ----------------------------------------------------------------------------- DivideMix
def test_dividemix_divides_the_wrong_labels_out_and_predicts_with_both_networks() -> None:
    data, _, mask = noisy_view(n_train=300, rate=0.3)
    result = run_fit(config({"method": "dividemix", "epochs": 5, **DIVIDEMIX}), data, None, model=pair())
    clean_prob = result.weights["weight"][-1]  # the mean clean probability of the two divisions
    assert clean_prob[mask.numpy()].mean() < 0.5 < clean_prob[~mask.numpy()].mean()
    warm, divided = result.history[1], result.history[-1]
    assert warm["labelled"] == 1.0 and warm["lambda_u"] == 0.0 and divided["lambda_u"] == 25.0
    assert 0.0 < divided["labelled"] < 1.0
    assert result.history[-1]["test_acc"] > 0.9
    x = data.x_test[:5]
    expected = torch.stack([m(x) for m in result.model.members]).mean(0)
    torch.testing.assert_close(result.model(x), expected)


def test_dividemix_keeps_the_trusted_examples_labelled() -> None:
    from labelnoise.views import with_trusted

    data, _, _ = noisy_view(n_train=120, n_clean=30, rate=0.4)
    view = with_trusted(data)
    cfg = config({"method": "dividemix", "epochs": 3, **DIVIDEMIX})
    ctx_task = get_method("dividemix").task(_context(cfg, view))
    result = engine.fit(pair(), view, ctx_task, recipe=cfg.train, seed=0, log=lambda line: None)
    assert result.history[-1]["lambda_u"] > 0
    assert (ctx_task.prob[:, view.n_noisy:] == 1).all() and (ctx_task.prob[:, :view.n_noisy] < 1).any()


def _context(cfg, data):
    from labelnoise.methods import MethodContext

    method = cfg.student.method
    return MethodContext(name=method, params=get_method(method).settings(cfg.student), recipe=cfg.train, data=data,
                         model=pair(), new_model=pair, seed=0, device=torch.device("cpu"), log=lambda line: None)


def test_dividemix_resumes_after_a_crash_to_the_same_result(tmp_path) -> None:
    cfg = config({"method": "dividemix", "epochs": 4, **DIVIDEMIX, "view_augment": "crop_flip",
                  "crop_padding": 1, "loss_history": 2})
    data, _, _ = noisy_view(rate=0.3)
    straight = run_fit(cfg, data, None, model=pair())

    class Crash(Exception):
        pass

    def crash(row: dict) -> None:
        if row["epoch"] == 3:  # after the first division
            raise Crash

    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(Crash):
        run_fit(cfg, data, None, ckpt, model=pair(), on_epoch=crash)
    resumed = run_fit(cfg, data, None, ckpt, model=pair(seed=5))
    assert resumed.resumed_epochs == 3
    assert_same_result(resumed, straight)


def test_dividemix_refuses_one_network_and_unsettled_auto() -> None:
    data, _, _ = noisy_view()
    cfg = config({"method": "dividemix", **DIVIDEMIX})
    ctx = _context(cfg, data)
    ctx.model = create_model("cnn", num_classes=3, in_channels=1, image_size=8)
    with pytest.raises(ValueError, match="Ensemble of two networks"):
        get_method("dividemix").task(ctx)
    with pytest.raises(ValueError, match="student.dividemix.lambda_u: auto is settled"):
        get_method("dividemix").task(_context(config({"method": "dividemix", **DIVIDEMIX, "lambda_u": "auto"}), data))
    with pytest.raises(ValueError, match="student.elr: auto is settled"):
        get_method("elr").task(_context(config({"method": "elr", "beta": "auto", "lam": 3.0}), data))


# ----------------------------------------------------------------------------- auto settings
def _estimate(rate: float, kind: str = "symmetric", k: int = 10) -> auto.NoiseEstimate:
    t = np.full((k, k), rate / (k - 1)) if kind == "symmetric" else np.zeros((k, k))
    if kind == "pair":
        t[np.arange(k), (np.arange(k) + 1) % k] = rate
    np.fill_diagonal(t, 1 - rate)
    return auto.NoiseEstimate(rate=rate, transition=t, use="test")


@pytest.mark.parametrize("rate, kind, k, expected", [
    (0.2, "symmetric", 10, (0.0, 0.5, 1, False, 0.7, 3.0)),
    (0.45, "symmetric", 10, (25.0, 0.5, 1, False, 0.7, 3.0)),
    (0.8, "symmetric", 10, (25.0, 0.5, 1, False, 0.7, 3.0)),
    (0.88, "symmetric", 10, (50.0, 0.6, 5, False, 0.7, 3.0)),
    (0.4, "pair", 10, (0.0, 0.5, 1, True, 0.9, 1.0)),
    (0.5, "symmetric", 100, (150.0, 0.5, 1, False, 0.9, 7.0)),
])
def test_auto_settings_are_the_official_ones_at_the_nearest_level(rate, kind, k, expected) -> None:
    estimate = _estimate(rate, kind, k)
    keys = ["student.dividemix.lambda_u", "student.dividemix.p_threshold", "student.dividemix.loss_history",
            "student.dividemix.confidence_penalty", "student.elr.beta", "student.elr.lam"]
    assert tuple(auto.RULES[key].value(estimate, None) for key in keys) == expected
    assert estimate.structured == (kind == "pair")


def test_a_clean_estimate_is_not_structured() -> None:
    assert not _estimate(0.01, "pair").structured and not _estimate(0.0).structured


# ----------------------------------------------------------------------------- the stages
@pytest.mark.parametrize("method", ["elr", "dividemix"])
def test_the_stages_run_each_peer_on_the_tiny_preset_with_auto_settings(method, tmp_path, monkeypatch) -> None:
    from stages import correct_labels, estimate_noise, evaluate, train_student
    from stages.common import PATHS

    stage_workspace(tmp_path, monkeypatch)
    cfg = from_dict(merge(merge(read_yaml(REPO / "params.yaml"), read_yaml(REPO / "presets" / "tiny.yaml")),
                          split_student({
                              "base": {"device": "cpu", "threads": 1, "experiment": "test-peers"},
                              "student": {"method": method, "epochs": 3, "batch_size": 16, "eval_batch_size": 10,
                                          "precision": "fp32", "channels_last": "off",
                                          **({"warm_up": 1, "view_augment": "none"} if method == "dividemix"
                                             else {})},
                              "correction": {"epochs": 0, "retrain_epochs": 1, "teacher": "student",
                                             "retrain_loss": "semi", "semi_view_augment": "none"}})))
    estimate_noise.run(cfg)  # the peers' auto settings and the semi-supervised threshold read the estimate
    metrics = train_student.run(cfg)
    assert 0 <= metrics["final_mean_weight"] <= 1
    student = load_model(PATHS.student_model)
    assert isinstance(student, Ensemble) == (method == "dividemix")
    record = torch.load(PATHS.student_model, weights_only=False)
    assert record["model_kwargs"].get("members", 1) == get_method(method).networks
    correct_labels.run(cfg)  # fine-tunes the student (two networks for DivideMix), semi-supervised
    evaluate.run(cfg)
    report = json.loads(Path(PATHS.metrics).read_text())
    assert report["method"] == method and 0.0 <= report["detection_auroc"] <= 1.0
