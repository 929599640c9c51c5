"""MentorMix (method `mentormix`): partner sampling from softmax(v / T), the λ rule and convex mixed labels,
the mixed loss and the second reweighting against hand computations, seeding and exact resume, honesty (no
true train labels), the stages, and the official presets."""

from __future__ import annotations

import copy
import inspect
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labelnoise import engine
from labelnoise import mentornet as mn
from labelnoise.config import Config, from_dict, merge, read_yaml
from labelnoise.methods import get_method
from labelnoise.methods.mentormix import MentorMixTask, mentor_mix
from tests.helpers import SigintAt, live_sigint, split_student
from tests.test_spade import (
    ForbiddenMentor,
    StubMentor,
    assert_same_result,
    new_mentor,
    new_model,
    noisy_view,
    run_fit,
    save_settled_mentor,
    stage_workspace,
    view_fields_only,
)
from tests.test_spade import config as spade_config

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def config(student: dict | None = None, mentor: dict | None = None) -> Config:
    return spade_config({"method": "mentormix", "mixup_alpha": 2.0, "second_reweight": False, **(student or {})},
                        mentor)


def make_task(cfg: Config, mentor: nn.Module, *, total_steps: int = 100, seed: int = 0) -> MentorMixTask:
    return MentorMixTask(mentor, cfg=get_method("mentormix").settings(cfg.student), recipe=cfg.train,
                         mentor_cfg=cfg.mentor, total_steps=total_steps, steps_per_epoch=10,
                         device=torch.device("cpu"), seed=seed, num_classes=3)


def linear_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))


def batch(b: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 1, 8, 8) float images in [0, 1] (the linear model takes floats) and (B,) labels."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, 8, 8, generator=g), torch.randint(0, 3, (b,), generator=g)


def replay(task: MentorMixTask) -> torch.Generator:
    """A copy of the task's generator, to redraw what its next call will draw."""
    g = torch.Generator()
    g.set_state(task.generator.get_state())
    return g


# ----------------------------------------------------------------------------- sample + mixup
@pytest.mark.parametrize("temperature", [1.0, 0.25])
def test_partners_follow_softmax_of_v_over_temperature(temperature: float) -> None:
    v = torch.tensor([0.95, 0.8, 0.5, 0.3, 0.1, 0.02])  # (B,)
    x, y = torch.zeros(6, 1, 2, 2), torch.eye(3)[torch.tensor([0, 1, 2, 0, 1, 2])]
    g = torch.Generator().manual_seed(0)
    draws = 20_000  # batches
    counts = torch.zeros(6)
    for _ in range(draws):
        _, _, _, partner = mentor_mix(x, y, v, alpha=2.0, temperature=temperature, generator=g)
        counts += torch.bincount(partner, minlength=6)
    n = draws * 6
    expected = torch.exp(v / temperature) / torch.exp(v / temperature).sum()  # softmax(v / T), by hand
    sigma = torch.sqrt(n * expected * (1 - expected))
    assert ((counts - n * expected).abs() <= 5 * sigma).all(), (counts / n, expected)
    untempered = torch.softmax(v, 0)
    if temperature != 1.0:  # the test can tell T apart: softmax(v) is far outside the bound
        assert ((counts - n * untempered).abs() > 5 * sigma).any()


def test_mixed_labels_are_convex_with_the_lambda_rule() -> None:
    g = torch.Generator().manual_seed(1)
    b, k = 400, 5
    v = torch.rand(b, generator=g)
    v[:20] = 0.5  # the boundary keeps λ (v >= 0.5)
    y = F.one_hot(torch.randint(0, k, (b,), generator=g), k).float()
    x = torch.randint(0, 256, (b, 3, 4, 4), dtype=torch.uint8, generator=g)
    x_mix, y_mix, lam, partner = mentor_mix(x, y, v, alpha=2.0, temperature=1.0, generator=g)
    assert ((lam >= 0) & (lam <= 1)).all()
    assert (lam[v >= 0.5] >= 0.5).all() and (lam[v < 0.5] <= 0.5).all()
    torch.testing.assert_close(y_mix.sum(1), torch.ones(b))
    assert (y_mix >= 0).all()
    torch.testing.assert_close(y_mix, lam[:, None] * y + (1 - lam[:, None]) * y[partner])
    xf = x.float()
    torch.testing.assert_close(x_mix, lam.view(b, 1, 1, 1) * xf + (1 - lam.view(b, 1, 1, 1)) * xf[partner])
    # the larger share is Beta(α, α) folded onto [0.5, 1]: its mean matches numpy's Beta within 5 σ
    share = torch.where(v >= 0.5, lam, 1 - lam).double()
    ref = np.random.default_rng(0).beta(2.0, 2.0, 200_000)
    ref = np.maximum(ref, 1 - ref)
    assert abs(share.mean().item() - ref.mean()) <= 5 * ref.std() / math.sqrt(b)


def test_mixing_is_seeded() -> None:
    x, y, v = torch.rand(32, 1, 2, 2), torch.eye(2)[torch.arange(32) % 2], torch.rand(32)

    def draw(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        out = mentor_mix(x, y, v, alpha=8.0, temperature=1.0, generator=torch.Generator().manual_seed(seed))
        return out[2], out[3]

    (la, pa), (lb, pb), (lc, pc) = draw(0), draw(0), draw(1)
    assert torch.equal(la, lb) and torch.equal(pa, pb)
    assert not torch.equal(la, lc) and not torch.equal(pa, pc)


# ----------------------------------------------------------------------------- the loss
def first_weights(cfg: Config, mentor: StubMentor, model: nn.Module, x: torch.Tensor,
                  y: torch.Tensor) -> torch.Tensor:
    """v of the first weighting, by hand: l_pt from 0 after one update, v = σ(−scale · (l − l_pt))."""
    with torch.no_grad():
        loss = F.cross_entropy(model(x), y, reduction="none")
        l_pt = torch.quantile(loss, cfg.mentor.percentile) * (1 - cfg.mentor.ema_decay)
        return torch.sigmoid(-mentor.scale * (loss - l_pt))


def test_mixed_loss_equals_hand_computation() -> None:
    cfg = config({"burn_in": 0.0, "mixup_alpha": 2.0, "mix_temperature": 0.5})
    mentor, model = StubMentor(), linear_model()
    task = make_task(cfg, mentor, total_steps=40)
    x, y = batch()
    g = replay(task)
    out = task(model, x, y, step=13)

    v = first_weights(cfg, mentor, model, x, y)  # (B,)
    _, _, lam, partner = mentor_mix(x, F.one_hot(y, 3).float(), v, alpha=2.0, temperature=0.5, generator=g)
    lam_x = lam.view(-1, 1, 1, 1)
    x_mix = lam_x * x.float() + (1 - lam_x) * x.float()[partner]
    y_mix = lam[:, None] * F.one_hot(y, 3) + (1 - lam[:, None]) * F.one_hot(y[partner], 3)
    expected = -(y_mix * torch.log_softmax(model(x_mix), dim=1)).sum(1).mean()  # soft-label CE, mean over B
    torch.testing.assert_close(out["loss"], expected)
    torch.testing.assert_close(out["weight"], v.detach())
    assert mentor.calls[-1][2].equal(y) and len(mentor.calls) == 1  # one weighting, on the noisy labels

    out["loss"].backward()
    assert mentor.scale.grad is None  # v is a constant for the student
    manual = torch.autograd.grad(expected, model[1].weight)[0]
    torch.testing.assert_close(model[1].weight.grad, manual)


@pytest.mark.parametrize("norm", ["batch", "sum"])
def test_second_reweight_weights_the_mixed_losses_again(norm: str) -> None:
    x, y = batch(b=12)
    losses = {}
    for second in (False, True):
        cfg = config({"burn_in": 0.0, "second_reweight": second, "weight_norm": norm})
        mentor, model = StubMentor(), linear_model()
        task = make_task(cfg, mentor, total_steps=40)
        g = replay(task)
        out = task(model, x, y, step=20)
        v = first_weights(cfg, mentor, model, x, y)
        torch.testing.assert_close(out["weight"], v)  # the first weighting does not depend on the switch
        _, y_mix, lam, partner = mentor_mix(x, F.one_hot(y, 3).float(), v, alpha=2.0, temperature=1.0,
                                                     generator=g)
        x_mix = lam.view(-1, 1, 1, 1) * x.float() + (1 - lam.view(-1, 1, 1, 1)) * x.float()[partner]
        mixed = -(y_mix * torch.log_softmax(model(x_mix), dim=1)).sum(1)  # (B,)
        if not second:
            torch.testing.assert_close(out["loss"], mixed.mean())
            assert len(mentor.calls) == 1 and task.mix_percentile.value == 0.0
            assert "mix_weight" not in out and "l_pt_mix" not in task.summary()
        else:
            l_pt_mix = torch.quantile(mixed.detach(), cfg.mentor.percentile) * (1 - cfg.mentor.ema_decay)
            v2 = torch.sigmoid(-mentor.scale.detach() * (mixed.detach() - l_pt_mix))  # (B,)
            norm_by = v2.sum() if norm == "sum" else 12
            torch.testing.assert_close(out["loss"], (v2 * mixed).sum() / norm_by)
            torch.testing.assert_close(out["mix_weight"], v2)
            loss2, diff2, label2, _ = mentor.calls[1]
            torch.testing.assert_close(loss2, mixed.detach())
            assert torch.equal(label2, torch.where(lam >= 0.5, y, y[partner]))  # the dominant label
            assert task.summary()["l_pt_mix"] == pytest.approx(float(l_pt_mix))
        losses[second] = out["loss"].item()
    assert losses[True] != pytest.approx(losses[False], rel=1e-3)


def test_burn_in_mixes_without_the_mentor() -> None:
    cfg = config({"burn_in": 1.0, "burn_in_keep": 0.5, "second_reweight": True})
    task = make_task(cfg, ForbiddenMentor(), total_steps=10)
    out = task(linear_model(), *batch(b=64), step=0)
    assert set(out["weight"].unique().tolist()) == {0.0, 1.0}  # example dropout draws, as SPADE
    assert set(out["mix_weight"].unique().tolist()) <= {0.0, 1.0}
    assert "mentor_weight" not in out and math.isfinite(out["loss"].item())


def test_first_pass_does_not_touch_batch_norm_statistics() -> None:
    cfg = config({"burn_in": 0.0})
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3), nn.BatchNorm1d(3))
    before = copy.deepcopy(model)
    task = make_task(cfg, StubMentor())
    x, y = batch(b=16)
    g = replay(task)
    task(model, x, y, step=50)
    bn = model[2]
    assert int(bn.num_batches_tracked) == 1 and bn.track_running_stats  # only the mixed pass counted
    with torch.no_grad():
        v = first_weights(cfg, StubMentor(), before.train(), x, y)  # batch statistics, like the task's first pass
        x_mix, *_ = mentor_mix(x, F.one_hot(y, 3).float(), v, alpha=2.0, temperature=1.0, generator=g)
        features = model[1](x_mix.flatten(1))  # (B, 3) what the batch norm saw in the mixed pass
    torch.testing.assert_close(bn.running_mean, 0.1 * features.mean(0))  # momentum 0.1 from 0: one update


def test_task_state_round_trip_continues_identically() -> None:
    cfg = config({"burn_in": 0.3, "second_reweight": True})
    a = make_task(cfg, StubMentor(), total_steps=10)
    model_a, model_b = linear_model(), linear_model()
    for step in range(4):
        a(model_a, *batch(seed=step), step=step)
    b = make_task(cfg, StubMentor(), total_steps=10, seed=5)
    b.load_state_dict(a.state_dict())
    model_b.load_state_dict(model_a.state_dict())
    for step in (4, 5):  # one step in burn-in, one after
        oa, ob = a(model_a, *batch(seed=step), step=step), b(model_b, *batch(seed=step), step=step)
        assert torch.equal(oa["loss"], ob["loss"]) and torch.equal(oa["weight"], ob["weight"])
    assert a.mix_percentile.value == b.mix_percentile.value != 0


# ----------------------------------------------------------------------------- honesty
def test_mentormix_never_receives_true_train_labels() -> None:
    for fn in (MentorMixTask.__init__, MentorMixTask.__call__, mentor_mix):
        names = inspect.signature(fn).parameters
        assert not any("true" in name or name in ("labels", "y_true", "mask", "corrupted") for name in names)

    cfg = config({"epochs": 2, "burn_in": 0.25, "second_reweight": True})
    view, y_true, mask = noisy_view(rate=0.4)
    data = view_fields_only(view)  # only the TrainView fields: no true train labels anywhere
    position = {bytes(x.numpy().tobytes()): i for i, x in enumerate(view.x_train)}
    batches: list[torch.Tensor] = []

    class Recorder(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            if self.training and x.dtype == torch.uint8:  # the first pass sees the batch as it is
                batches.append(torch.tensor([position[bytes(xi.numpy().tobytes())] for xi in x]))
            return self.model(x)

    labels: list[torch.Tensor] = []

    class LabelSpy(mn.MentorNet):
        def forward(self, loss, loss_diff, label, progress):
            labels.append(label.clone())
            return super().forward(loss, loss_diff, label, progress)

    torch.manual_seed(0)
    mentor = LabelSpy(num_classes=3, label_dim=2, epoch_dim=5, hidden=20, epoch_embedding_trainable=False)
    run_fit(cfg, data, mentor, model=Recorder(new_model()))
    first, second = labels[0::2], labels[1::2]  # after burn-in: the batch's weighting, then the mixed one
    assert len(first) == len(second) >= 1
    for got, again, idx in zip(first, second, batches[-len(first):], strict=True):
        assert torch.equal(got, view.y_train[idx])  # the noisy labels of the batch
        assert set(again.tolist()) <= set(view.y_train[idx].tolist())
        flipped = mask[idx]
        assert flipped.any() and not torch.equal(got[flipped], y_true[idx][flipped])


# ----------------------------------------------------------------------------- training and resume
def test_mentormix_needs_a_mentor() -> None:
    with pytest.raises(ValueError, match="'mentormix' needs a mentor"):
        run_fit(config(), noisy_view()[0], mentor=None)


@pytest.mark.parametrize("key", ["mixup_alpha", "second_reweight"])
def test_an_unsettled_auto_never_reaches_the_task(key: str) -> None:
    with pytest.raises(ValueError, match=f"student.mentormix.{key}: auto is settled from the noise estimate"):
        cfg = config({key: "auto"})
        make_task(cfg, new_mentor(cfg))


@pytest.mark.parametrize("student, mentor", [
    ({"second_reweight": True, "augment": "crop_flip", "weight_norm": "batch"}, {"kind": "pd"}),
    ({"mentor_update": "every_k", "mentor_update_every": 1, "sample_weights": True}, {"kind": "dd"}),
])
def test_resume_after_crash_equals_uninterrupted(tmp_path, student, mentor) -> None:
    cfg = config({"epochs": 3, **student}, mentor)
    data, _, _ = noisy_view(rate=0.3)
    straight = run_fit(cfg, data, new_mentor(cfg))

    class Crash(Exception):
        pass

    def crash(row: dict) -> None:
        if row["epoch"] == 2:
            raise Crash

    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(Crash):
        run_fit(cfg, data, new_mentor(cfg), ckpt, on_epoch=crash)
    resumed = run_fit(cfg, data, new_mentor(cfg), ckpt, model=new_model(seed=9))
    assert resumed.resumed_epochs == 2
    assert_same_result(resumed, straight)


def test_ctrl_c_mid_epoch_resumes_exactly(tmp_path) -> None:
    cfg = config({"epochs": 2, "second_reweight": True})
    data, _, _ = noisy_view(rate=0.3)
    straight = run_fit(cfg, data, new_mentor(cfg), model=SigintAt(new_model(), at=-1))
    ckpt = tmp_path / "ckpt.pt"
    with live_sigint(), pytest.raises(engine.TrainingInterrupted):  # 2 forwards a step: the 17th is epoch 2, batch 3
        run_fit(cfg, data, new_mentor(cfg), ckpt, model=SigintAt(new_model(), at=17))
    assert torch.load(ckpt, weights_only=True)["partial"]["batch"] == 3
    resumed = run_fit(cfg, data, new_mentor(cfg), ckpt, model=SigintAt(new_model(seed=3), at=-1))
    assert resumed.resumed_epochs == pytest.approx(1.5)
    assert_same_result(resumed, straight)
    assert "l_pt_mix" in straight.history[-1]


# ----------------------------------------------------------------------------- stages
def test_train_student_and_evaluate_stages_with_mentormix(tmp_path, monkeypatch) -> None:
    import csv
    import json

    from mlflow.tracking import MlflowClient

    from stages import correct_labels, estimate_noise, evaluate, train_student
    from stages.common import PATHS

    view, y_true, mask = stage_workspace(tmp_path, monkeypatch)
    tiny = read_yaml(REPO / "presets" / "tiny.yaml")
    cfg = from_dict(merge(merge(read_yaml(REPO / "params.yaml"), tiny), split_student({
        "base": {"device": "cpu", "threads": 1, "experiment": "test-mix"},
        "mentor": {"kind": "pd"},
        "student": {"method": "mentormix", "epochs": 3, "batch_size": 16, "eval_batch_size": 10,
                    "precision": "fp32", "channels_last": "off", "second_reweight": True},
        "correction": {"epochs": 2, "begin": 1, "retrain_epochs": 1, "teacher": "student"}})))
    estimate_noise.run(cfg)  # the auto settings read the noise estimate
    with pytest.raises(FileNotFoundError, match="mentor"):
        train_student.run(cfg)  # mentormix needs the pretrain_mentor stage's output
    save_settled_mentor(PATHS.mentor_model, new_mentor(cfg), cfg)

    metrics = train_student.run(cfg)

    assert 0 <= metrics["final_mean_weight"] <= 1 and metrics["mentor_updates"] == 0
    weights = engine.load_weights(PATHS.student_weights)
    assert weights["method"] == "mentormix" and weights["weight"].shape == (3, 60)
    assert np.isfinite(weights["weight"]).all() and ((weights["weight"] >= 0) & (weights["weight"] <= 1)).all()
    with open(PATHS.curves, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[-4:] == ["mean_weight", "l_pt", "mentor_updates", "l_pt_mix"]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("test-mix")
    (child,) = client.search_runs([exp.experiment_id], filter_string="tags.`mlflow.runName` = 'train_student'")
    assert child.data.tags["method"] == "mentormix" and child.data.tags["mentor"] == "pd"

    correct_labels.run(cfg)
    logged = evaluate.run(cfg)
    report = json.loads(Path(PATHS.metrics).read_text())
    assert report["method"] == "mentormix" and report["detection_epoch"] == 3
    assert 0.0 <= report["detection_auroc"] <= 1.0 and logged["detection_auroc"] == report["detection_auroc"]
    from labelnoise import studies, tracking
    from labelnoise.config import flatten

    rows = studies.method_rows(tracking.matching_pipelines(  # the methods table: this run is MentorMix-PD's
        f"sqlite:///{tmp_path}/mlflow.db", "test-mix", studies.setting_params(flatten(cfg.to_dict()))))
    assert rows["MentorMix-PD"]["test_acc"] == pytest.approx(report["test_acc"])


# ----------------------------------------------------------------------------- presets
OFFICIAL_CIFAR10 = {20: (2.0, 0.8, False), 40: (8.0, 0.6, False), 60: (8.0, 0.6, True), 80: (4.0, 0.2, True)}


@pytest.mark.parametrize("rate", sorted(OFFICIAL_CIFAR10))
def test_mentormix_presets_load_validate_and_match_the_official_script(tmp_path, rate: int) -> None:
    from typer.testing import CliRunner

    from cli import app
    from labelnoise.config import load_config

    name = f"mentormix_cifar10_{rate}"
    out = tmp_path / "params.yaml"
    result = CliRunner().invoke(app, ["preset", name, "--params", str(REPO / "params.yaml"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    cfg = load_config(out)
    alpha, p, second = OFFICIAL_CIFAR10[rate]
    s, t, mix = cfg.student, cfg.train, get_method("mentormix").settings(cfg.student)
    assert (cfg.data.dataset, cfg.noise.rate, s.method, cfg.mentor.kind) == ("cifar10", rate / 100, "mentormix", "pd")
    assert (mix.mixup_alpha, cfg.mentor.percentile, mix.second_reweight) == (alpha, p, second)
    assert (t.batch_size, t.lr, t.momentum, t.lr_gamma, mix.burn_in, mix.burn_in_keep) == (128, 0.1, 0.9, 0.9, 0.09,
                                                                                           1.0)
    assert t.weight_decay == (0.0 if second else 0.0002) and mix.weight_norm == "batch"
    assert t.milestones == pytest.approx([30 * k / t.epochs for k in range(1, 18)])  # x0.9 every 30 epochs
