"""SPADE (method `spade`): burn-in dropout, the weighted loss, l_pt, mentor updates, down-weighting of
corrupted labels, honesty (no true train labels), exact resume, and the per-example weight log."""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labelnoise import engine
from labelnoise import mentornet as mn
from labelnoise.config import Config, from_dict, merge, read_yaml
from labelnoise.methods import MethodContext, get_method
from labelnoise.methods.spade import SpadeTask
from labelnoise.models import create_model
from labelnoise.views import TrainView
from tests.helpers import SigintAt, live_sigint, new_store, split_student

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def config(student: dict[str, Any] | None = None, mentor: dict[str, Any] | None = None) -> Config:
    base = {"method": "spade", "epochs": 3, "batch_size": 16, "eval_batch_size": 64, "lr": 0.05, "schedule": "cosine",
            "precision": "fp32", "channels_last": "off", "burn_in": 0.2, "burn_in_keep": 0.5,
            "mentor_update_steps": 10, "mentor_update_batches": 4}
    fixed = {"percentile": 0.6, "dd_noise_kind": "symmetric"}  # the auto ones need stage estimate_noise
    raw = merge(read_yaml(REPO / "params.yaml"),
                split_student({"student": {**base, **(student or {})}, "mentor": {**fixed, **(mentor or {})}}))
    return from_dict(raw)


def view_fields_only(view: TrainView) -> Any:
    """An object with exactly the TrainView fields (no room for true train labels or the mask)."""
    fields = set(TrainView.__dataclass_fields__)

    class Exactly:
        __slots__ = tuple(fields)

    data = Exactly()
    for name in fields:
        setattr(data, name, getattr(view, name))
    return data


def noisy_view(n_train: int = 96, n_clean: int = 30, n_test: int = 30, k: int = 3, rate: float = 0.0,
               seed: int = 0) -> tuple[TrainView, torch.Tensor, torch.Tensor]:
    """8x8 grey images, class c lights up row block c (linearly separable); a ``rate`` fraction of the
    train labels is moved to another class. Returns (view with noisy train labels, true train labels, mask)."""
    g = torch.Generator().manual_seed(seed)

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % k
        x = torch.randint(0, 60, (n, 1, 8, 8), generator=g)
        for c in range(k):
            x[y == c, :, 2 * c : 2 * c + 2, :] += 180
        return x.clamp(0, 255).to(torch.uint8), y.to(torch.int64)

    x_train, y_true = make(n_train)
    mask = torch.zeros(n_train, dtype=torch.bool)
    mask[torch.randperm(n_train, generator=g)[: round(rate * n_train)]] = True
    shift = torch.randint(1, k, (n_train,), generator=g)
    y_noisy = torch.where(mask, (y_true + shift) % k, y_true)
    x_clean, y_clean = make(n_clean)
    x_test, y_test = make(n_test)
    empty_x, empty_y = torch.empty(0, 1, 8, 8, dtype=torch.uint8), torch.empty(0, dtype=torch.int64)
    view = TrainView(x_train=x_train, y_train=y_noisy, x_clean=x_clean, y_clean=y_clean, x_val=empty_x,
                     y_val=empty_y, x_test=x_test, y_test=y_test, classes=["a", "b", "c"][:k], dataset="digits")
    return view, y_true, mask


def new_model(seed: int = 0, k: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("cnn", num_classes=k, in_channels=1, image_size=8, mean=[0.3], std=[0.3])


def new_mentor(cfg: Config, seed: int = 0, k: int = 3) -> mn.MentorNet:
    torch.manual_seed(seed)
    return mn.MentorNet.from_config(cfg.mentor, num_classes=k)


def save_settled_mentor(path: str, mentor: mn.MentorNet, cfg: Config) -> None:
    """Save ``mentor`` as stage pretrain_mentor does: its auto params settled from the noise estimate, and the channel
    its DD copy is corrupted with."""
    from labelnoise import auto
    from stages import get_stage
    from stages.common import PATHS

    settled, _, estimate = auto.settle_stage(cfg, get_stage("pretrain_mentor").params, PATHS.noise_estimate)
    channel = estimate.transition if estimate is not None and settled.mentor.dd_noise_kind == "auto" else None
    mn.save_mentor(path, mentor, cfg=settled.mentor, num_classes=3, info={}, dd_transition=channel)


class StubMentor(nn.Module):
    """MentorNet-shaped stand-in: v = σ(−scale · loss_diff); remembers its inputs."""

    def __init__(self, scale: float = 4.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale))
        self.calls: list[tuple[torch.Tensor, ...]] = []

    def forward(self, loss, loss_diff, label, progress):  # each (B,)
        self.calls.append((loss.clone(), loss_diff.clone(), label.clone(), progress.clone()))
        return torch.sigmoid(-self.scale * loss_diff)


class ForbiddenMentor(nn.Module):
    def forward(self, *args):
        raise AssertionError("the mentor was called during burn-in")


def make_spade(cfg: Config, mentor: nn.Module, *, total_steps: int = 100, steps_per_epoch: int = 10,
               data: TrainView | None = None, seed: int = 0) -> SpadeTask:
    return SpadeTask(mentor, cfg=cfg.student.spade, recipe=cfg.train, mentor_cfg=cfg.mentor, total_steps=total_steps,
                              steps_per_epoch=steps_per_epoch, device=torch.device("cpu"), seed=seed, num_classes=3,
                              clean=(data.x_clean, data.y_clean) if data is not None else None, dataset="digits")


def run_fit(cfg: Config, data, mentor: nn.Module | None, path=None, model=None, **kw) -> engine.FitResult:
    """The student trained as stage train_student trains it: the method's registry entry in the engine."""
    s = cfg.student
    ctx = MethodContext(name=s.method, params=get_method(s.method).settings(s), recipe=cfg.train, data=data,
                        model=model or new_model(), new_model=new_model, seed=0, device=torch.device("cpu"),
                        weights_at=s.weights_at, mentor=mentor, mentor_cfg=cfg.mentor, checkpoint_path=path,
                        **{"log": lambda line: None, **kw})
    return get_method(cfg.student.method).run(ctx).fit


# ----------------------------------------------------------------------------- one mini-batch
def test_burn_in_keeps_about_p_of_each_batch() -> None:
    p, b, batches = 0.3, 200, 40
    cfg = config({"burn_in": 1.0, "burn_in_keep": p})
    task = make_spade(cfg, ForbiddenMentor(), total_steps=batches)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    g = torch.Generator().manual_seed(0)
    kept, sigma = [], math.sqrt(b * p * (1 - p))
    for step in range(batches):
        x = torch.rand(b, 1, 8, 8, generator=g)
        y = torch.randint(0, 3, (b,), generator=g)
        out = task(model, x, y, step=step)
        v = out["weight"]
        assert set(v.unique().tolist()) <= {0.0, 1.0}
        assert "mentor_weight" not in out
        kept.append(int(v.sum()))
        assert abs(kept[-1] - p * b) <= 5 * sigma  # per batch: binomial(B, p)
    total_sigma = math.sqrt(batches * b * p * (1 - p))
    assert abs(sum(kept) - p * b * batches) <= 4 * total_sigma
    assert len(set(kept)) > 1  # drawn per example, not a fixed pattern
    assert task.percentile.value > 0  # l_pt keeps moving during burn-in


def test_burn_in_is_seeded() -> None:
    cfg = config({"burn_in": 1.0, "burn_in_keep": 0.5})
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 3, (64,))
    a = make_spade(cfg, ForbiddenMentor())(model, x, y, step=0)["weight"]
    b = make_spade(cfg, ForbiddenMentor())(model, x, y, step=0)["weight"]
    c = make_spade(cfg, ForbiddenMentor(), seed=1)(model, x, y, step=0)["weight"]
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("norm", ["batch", "sum"])
def test_weighted_loss_normalisation_and_mentor_gets_no_gradient(norm: str) -> None:
    cfg = config({"burn_in": 0.0, "weight_norm": norm})
    mentor = StubMentor()
    task = make_spade(cfg, mentor, total_steps=40)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    x, y = torch.rand(10, 1, 8, 8), torch.randint(0, 3, (10,))
    out = task(model, x, y, step=13)

    per_example = F.cross_entropy(model(x), y, reduction="none")  # (B,)
    l_pt = torch.quantile(per_example.detach(), cfg.mentor.percentile) * (1 - cfg.mentor.ema_decay)  # from 0
    v = torch.sigmoid(-mentor.scale.detach() * (per_example.detach() - l_pt))
    over_b, over_v = (v * per_example).sum() / 10, (v * per_example).sum() / v.sum()  # Σ v·l / B, Σ v·l / Σ v
    expected, other = (over_b, over_v) if norm == "batch" else (over_v, over_b)
    torch.testing.assert_close(out["loss"], expected)
    torch.testing.assert_close(out["weight"], v)
    torch.testing.assert_close(out["loss_diff"], per_example.detach() - l_pt)
    assert not torch.isclose(out["loss"], other)

    loss, diff, label, progress = mentor.calls[-1]
    assert torch.equal(label, y)  # the noisy label of the batch
    assert torch.equal(progress, torch.full((10,), mn.progress_percent(13, 40)))  # percent of training: 32
    out["loss"].backward()
    assert mentor.scale.grad is None  # v is a constant for the student
    manual = torch.autograd.grad(expected, model[1].weight)[0]
    torch.testing.assert_close(model[1].weight.grad, manual)


def test_sampling_layer_draws_bernoulli_of_v() -> None:
    cfg = config({"burn_in": 0.0, "sample_weights": True})
    task = make_spade(cfg, StubMentor(scale=0.0))  # v = 0.5 for everyone
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    out = task(model, torch.rand(400, 1, 8, 8), torch.randint(0, 3, (400,)), step=50)
    assert set(out["weight"].unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(out["mentor_weight"], torch.full((400,), 0.5))
    assert abs(out["weight"].sum().item() - 200) <= 4 * math.sqrt(400 * 0.25)


def test_percentile_inside_training_matches_moving_percentile() -> None:
    cfg = config({"epochs": 2, "burn_in": 0.25})
    data, _, _ = noisy_view(rate=0.3)
    task = make_spade(cfg, StubMentor(), total_steps=12, steps_per_epoch=6)
    seen: list[dict[str, torch.Tensor]] = []

    class Spy:
        method = "spade"

        def __call__(self, *args, **kw):
            out = task(*args, **kw)
            seen.append({k: v.detach().clone() for k, v in out.items()})
            return out

        def __getattr__(self, name):
            return getattr(task, name)

    model = new_model()
    opt = engine.make_optimizer(model, cfg.train)
    sched = engine.make_scheduler(opt, cfg.train, steps_per_epoch=6)
    g = torch.Generator().manual_seed(0)
    for epoch in range(2):
        engine.train_one_epoch(model, data.x_train, data.y_train, optimizer=opt, scheduler=sched, batch_size=16,
                                 device=torch.device("cpu"), generator=g, epoch=epoch + 1, step=6 * epoch, task=Spy())
    reference = mn.MovingPercentile(cfg.mentor.percentile, cfg.mentor.ema_decay)
    assert len(seen) == 12
    for out in seen:
        l_pt = reference.update(out["per_example"])
        torch.testing.assert_close(out["per_example"] - out["loss_diff"], l_pt.expand(out["loss_diff"].shape))
    assert task.percentile.value == pytest.approx(reference.value, abs=0)


# ----------------------------------------------------------------------------- mentor updates
def refit_steps(cfg: Config, *, total: int = 100, per_epoch: int = 10) -> list[int]:
    task = make_spade(cfg, StubMentor(), total_steps=total, steps_per_epoch=per_epoch, data=noisy_view()[0])
    done: list[int] = []
    task.refit = lambda model, *, step, lr: done.append(step) or task.refits.append({"step": step})
    model = nn.Linear(2, 2)
    opt = engine.make_optimizer(model, cfg.train)
    sched = engine.make_scheduler(opt, cfg.train, steps_per_epoch=per_epoch)
    for step in range(total):
        lr = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        task.after_step(model, step=step, lr=lr, next_lr=opt.param_groups[0]["lr"])
    return done


def test_refit_cadence() -> None:
    every = config({"epochs": 10, "mentor_update": "every_k", "mentor_update_every": 3, "burn_in": 0.2})
    assert refit_steps(every) == [30, 60, 90]  # end of epochs 3, 6, 9 (never after the last step)
    multistep = config({"epochs": 10, "mentor_update": "lr_change", "schedule": "multistep",
                        "milestones": [0.1, 0.5, 0.75], "burn_in": 0.2})
    assert refit_steps(multistep) == [50, 75]  # the milestone at 0.1 falls in burn-in
    cosine = config({"epochs": 10, "mentor_update": "lr_change", "schedule": "cosine", "burn_in": 0.0})
    expected, ref = [], 1.0
    factors = [engine.lr_factor(s, schedule="cosine", total_steps=100, warmup_steps=0, milestones=[], gamma=0.1,
                                  pct_start=0.25) for s in range(100)]
    for s in range(1, 100):
        if factors[s] < 0.5 * ref and (not expected or s - expected[-1] >= 10):  # halved, and an epoch apart
            expected.append(s)
            ref = factors[s]
    assert refit_steps(cosine) == expected and len(expected) >= 3
    assert expected[:2] == [51, 68] and all(b - a >= 10 for a, b in zip(expected, expected[1:], strict=False))
    assert refit_steps(config({"epochs": 10, "mentor_update": "none"})) == []


@pytest.mark.parametrize("kind", ["pd", "dd"])
def test_refit_moves_the_mentor_deterministically(kind: str) -> None:
    cfg = config({"epochs": 2, "mentor_update": "every_k", "mentor_update_every": 1, "burn_in": 0.0},
                 {"kind": kind, "curriculum": "self_paced"})
    data, _, _ = noisy_view(rate=0.3)
    states = []
    for _ in range(2):
        mentor = new_mentor(cfg)
        before = {k: v.clone() for k, v in mentor.state_dict().items()}
        result = run_fit(cfg, data, mentor)
        assert [r["step"] for r in result.extra["mentor_updates"]] == [6.0]  # end of epoch 1 of 2
        assert any(not torch.equal(before[k], v) for k, v in mentor.state_dict().items())
        states.append(mentor.state_dict())
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key])


# ----------------------------------------------------------------------------- learning
def test_pd_mentor_down_weights_corrupted_labels() -> None:
    cfg = config({"epochs": 6, "batch_size": 32, "lr": 0.05, "schedule": "onecycle", "burn_in": 0.2},
                 {"kind": "pd", "curriculum": "self_paced", "percentile": 0.6, "ema_decay": 0.5, "grid_size": 20000,
                  "fit_steps": 600, "fit_lr": 0.02})
    data, _, mask = noisy_view(n_train=300, rate=0.4)
    mentor = new_mentor(cfg)
    grid = mn.pd_grid(cfg.mentor, num_classes=3, generator=torch.Generator().manual_seed(0))
    mn.fit_mentor(mentor, grid, cfg=cfg.mentor, generator=torch.Generator().manual_seed(1), loss="mse")
    assert mn.mean_abs_error(mentor, grid) < 0.15  # it learned the self-paced threshold

    result = run_fit(cfg, data, mentor)
    w = result.weights
    assert list(w["epochs"]) == engine.weight_epochs(cfg.student.weights_at, 6) == [1, 3, 6]
    last = w["weight"][-1]  # (N,) the mentor's v in the last epoch
    assert np.isfinite(last).all()
    corrupted, clean = last[mask.numpy()].mean(), last[~mask.numpy()].mean()
    assert corrupted < clean - 0.3, (corrupted, clean)
    assert result.history[-1]["clean_acc"] >= 0.9  # and the student still learns the true classes


# ----------------------------------------------------------------------------- honesty
def test_spade_never_receives_true_train_labels() -> None:
    for fn in (engine.fit, SpadeTask.__init__, SpadeTask.__call__):
        names = inspect.signature(fn).parameters
        assert not any("true" in name or name in ("labels", "y_true", "mask", "corrupted") for name in names)

    cfg = config({"epochs": 2, "burn_in": 0.25, "mentor_update": "every_k", "mentor_update_every": 1},
                 {"kind": "dd"})
    view, y_true, mask = noisy_view(rate=0.4)
    assert (view.y_train != y_true).sum() == mask.sum() > 0
    data = view_fields_only(view)  # only the TrainView fields: no true train labels anywhere

    position = {bytes(x.numpy().tobytes()): i for i, x in enumerate(view.x_train)}
    batches: list[torch.Tensor] = []

    class Recorder(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            if self.training:
                batches.append(torch.tensor([position[bytes(xi.numpy().tobytes())] for xi in x]))
            return self.model(x)

    class LabelSpy(mn.MentorNet):
        def forward(self, loss, loss_diff, label, progress):
            labels.append(label.clone())
            return super().forward(loss, loss_diff, label, progress)

    labels: list[torch.Tensor] = []
    torch.manual_seed(0)
    mentor = LabelSpy(num_classes=3, label_dim=2, epoch_dim=5, hidden=20, epoch_embedding_trainable=False)
    run_fit(cfg, data, mentor, model=Recorder(new_model()))
    train_batches = batches  # the dd refit runs the student in eval mode (clean subset): not recorded
    assert len(labels) >= 1
    # the mentor's label input of each post-burn-in step is the noisy label of that batch's examples
    for got, idx in zip(labels, train_batches[-len(labels):], strict=True):
        assert torch.equal(got, view.y_train[idx])
        flipped = mask[idx]
        assert flipped.any() and not torch.equal(got[flipped], y_true[idx][flipped])


@pytest.mark.parametrize("fixed", [False, True])
def test_fixed_progress_feeds_the_end_of_burn_in_after_it(fixed: bool) -> None:
    """student.spade.fixed_progress (official DD scripts' fixed_epoch_after_burn_in): after burn-in the mentor is
    fed the progress at the end of burn-in; without it, the progress of each step."""
    cfg = config({"epochs": 3, "burn_in": 0.2, "fixed_progress": fixed})
    data, _, _ = noisy_view()
    fed: list[int] = []

    class ProgressSpy(mn.MentorNet):
        def forward(self, loss, loss_diff, label, progress):
            fed.append(int(progress[0]))
            return super().forward(loss, loss_diff, label, progress)

    torch.manual_seed(0)
    mentor = ProgressSpy.from_config(cfg.mentor, num_classes=3)
    run_fit(cfg, data, mentor)
    total = 3 * -(-96 // 16)
    end_of_burn_in = mn.progress_percent(round(0.2 * total), total)
    if fixed:
        assert fed and set(fed) == {end_of_burn_in}
    else:
        assert fed == sorted(fed) and fed[0] == end_of_burn_in and fed[-1] > end_of_burn_in


# ----------------------------------------------------------------------------- resume
def assert_same_result(a: engine.FitResult, b: engine.FitResult) -> None:
    assert a.history == b.history
    for key in a.model.state_dict():
        assert torch.equal(a.model.state_dict()[key], b.model.state_dict()[key]), key
    assert a.weights.keys() == b.weights.keys()
    for key in a.weights:
        np.testing.assert_array_equal(a.weights[key], b.weights[key])
    assert a.extra == b.extra


@pytest.mark.parametrize("student, mentor", [
    ({"mentor_update": "lr_change", "schedule": "multistep", "milestones": [0.5], "sample_weights": True},
     {"kind": "pd", "curriculum": "official_pd"}),
    ({"mentor_update": "every_k", "mentor_update_every": 1, "augment": "crop_flip"}, {"kind": "dd"}),
])
def test_resume_after_crash_equals_uninterrupted(tmp_path, student, mentor) -> None:
    cfg = config({"epochs": 3, **student}, mentor)
    data, _, _ = noisy_view(rate=0.3)
    straight_mentor = new_mentor(cfg)
    straight = run_fit(cfg, data, straight_mentor)
    assert straight.extra["mentor_updates"]  # the mentor was refitted, so its state must be resumed too

    class Crash(Exception):
        pass

    def crash(row: dict) -> None:
        if row["epoch"] == 2:
            raise Crash

    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(Crash):
        run_fit(cfg, data, new_mentor(cfg), ckpt, on_epoch=crash)
    resumed_mentor = new_mentor(cfg)  # as loaded from mentor.pt again
    resumed = run_fit(cfg, data, resumed_mentor, ckpt, model=new_model(seed=9))
    assert resumed.resumed_epochs == 2
    assert_same_result(resumed, straight)
    for key, value in straight_mentor.state_dict().items():
        assert torch.equal(resumed_mentor.state_dict()[key], value), key


def test_ctrl_c_mid_epoch_resumes_exactly(tmp_path) -> None:
    cfg = config({"epochs": 2, "mentor_update": "every_k", "mentor_update_every": 1, "sample_weights": True},
                 {"kind": "pd"})
    data, _, _ = noisy_view(rate=0.3)
    straight = run_fit(cfg, data, new_mentor(cfg), model=SigintAt(new_model(), at=-1))
    ckpt = tmp_path / "ckpt.pt"
    with live_sigint(), pytest.raises(engine.TrainingInterrupted):
        run_fit(cfg, data, new_mentor(cfg), ckpt, model=SigintAt(new_model(), at=9))  # epoch 2, batch 3 of 6
    assert torch.load(ckpt, weights_only=True)["partial"]["batch"] == 3
    resumed = run_fit(cfg, data, new_mentor(cfg), ckpt, model=SigintAt(new_model(seed=3), at=-1))
    assert resumed.resumed_epochs == pytest.approx(1.5)
    assert_same_result(resumed, straight)


def test_checkpoint_of_another_mentor_is_refused(tmp_path) -> None:
    cfg = config({"epochs": 2})
    data, _, _ = noisy_view()
    ckpt = tmp_path / "ckpt.pt"

    def stop(row: dict) -> None:
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        run_fit(cfg, data, new_mentor(cfg, seed=0), ckpt, on_epoch=stop)
    lines: list[str] = []
    result = run_fit(cfg, data, new_mentor(cfg, seed=1), ckpt, log=lines.append)
    assert result.resumed_epochs == 0
    assert any("mentor.weights" in line for line in lines if "not resumed" in line)


# ----------------------------------------------------------------------------- weight log
def test_weight_epochs() -> None:
    assert engine.weight_epochs([0.1, 0.5, 1.0], 15) == [2, 8, 15]
    assert engine.weight_epochs([0.01, 0.02], 10) == [1]  # at least epoch 1, no duplicates
    assert engine.weight_epochs([1.0, 0.5], 4) == [2, 4]


def test_ce_records_losses_with_unit_weights() -> None:
    cfg = config({"method": "ce", "epochs": 2, "weights_at": [1.0]})
    data, _, _ = noisy_view()
    result = run_fit(cfg, data, mentor=None)
    w = result.weights
    assert list(w["epochs"]) == [2] and w["weight"].shape == (1, 96)
    assert (w["weight"] == 1).all() and np.isnan(w["loss_diff"]).all()
    assert np.isfinite(w["loss"]).all() and (w["loss"] >= 0).all()
    assert set(result.history[0]) == {"epoch", "train_loss", "train_acc_noisy", "clean_acc", "test_acc", "lr"}
    assert np.mean(w["loss"][-1]) == pytest.approx(result.history[-1]["train_loss"], rel=0.05)


def test_spade_needs_a_mentor() -> None:
    data, _, _ = noisy_view()
    with pytest.raises(ValueError, match="mentor"):
        run_fit(config(), data, mentor=None)


def test_weights_file_round_trip(tmp_path) -> None:
    arrays = {"epochs": np.array([1, 3]), "loss": np.ones((2, 4), np.float32),
              "loss_diff": np.full((2, 4), np.nan, np.float32), "weight": np.zeros((2, 4), np.float32)}
    engine.save_weights(tmp_path / "w.npz", arrays, method="spade")
    back = engine.load_weights(tmp_path / "w.npz")
    assert back["method"] == "spade"
    for key, value in arrays.items():
        np.testing.assert_array_equal(back[key], value)


# ----------------------------------------------------------------------------- stages
def stage_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[TrainView, torch.Tensor, torch.Tensor]:
    """Make ``tmp_path`` a stage workspace: its own MLflow store, no DVC/pipeline env, and the prepared and
    noisy inputs of a 3-class digits-shaped problem (60 train at 40 % noise, 24 clean, 24 test) written where
    the stages read them. Returns (view, true train labels, corruption mask)."""
    from labelnoise.datasets import Prepared, save_prepared
    from labelnoise.noise import NoisyLabels, save_noisy
    from stages.common import PATHS

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", new_store(tmp_path))
    for var in ("DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME", "LABELNOISE_PIPELINE_ID"):
        monkeypatch.delenv(var, raising=False)
    view, y_true, mask = noisy_view(n_train=60, n_clean=24, n_test=24, rate=0.4)
    images = torch.cat([view.x_train, view.x_clean, view.x_test]).numpy()
    labels = torch.cat([y_true, view.y_clean, view.y_test]).numpy()
    idx = np.arange(108, dtype=np.int64)
    save_prepared(PATHS.prepared, Prepared(images=images, labels=labels, train_idx=idx[:60], clean_idx=idx[60:84],
                                           val_idx=idx[:0], test_idx=idx[84:], classes=["a", "b", "c"],
                                           dataset="digits"))
    save_noisy(PATHS.noisy, NoisyLabels(labels=view.y_train.numpy(), mask=mask.numpy()))
    return view, y_true, mask


def test_train_student_and_evaluate_stages_with_spade(tmp_path, monkeypatch) -> None:
    import csv
    import json

    from mlflow.tracking import MlflowClient

    from stages import correct_labels, estimate_noise, evaluate, train_student
    from stages.common import PATHS

    view, y_true, mask = stage_workspace(tmp_path, monkeypatch)
    cfg = from_dict(merge(read_yaml(REPO / "params.yaml"), split_student({
        "base": {"device": "cpu", "threads": 1, "experiment": "test-spade"},
        "data": {"dataset": "digits"},
        "mentor": {"kind": "dd"},
        "student": {"method": "spade", "epochs": 3, "batch_size": 16, "eval_batch_size": 10, "lr": 0.05,
                    "precision": "fp32", "channels_last": "off", "mentor_update": "every_k", "mentor_update_every": 1,
                    "mentor_update_steps": 5},
        "correction": {"epochs": 2, "begin": 1, "retrain_epochs": 1, "teacher": "student"}})))
    estimate_noise.run(cfg)  # the auto settings read the noise estimate
    with pytest.raises(FileNotFoundError, match="mentor"):
        train_student.run(cfg)  # spade needs the pretrain_mentor stage's output
    save_settled_mentor(PATHS.mentor_model, new_mentor(cfg), cfg)

    metrics = train_student.run(cfg)

    assert metrics["mentor_updates"] == 2 and 0 <= metrics["final_mean_weight"] <= 1
    weights = engine.load_weights(PATHS.student_weights)
    assert weights["method"] == "spade" and list(weights["epochs"]) == [1, 2, 3]  # weights_at 0.1, 0.5, 1.0 of 3
    assert weights["weight"].shape == weights["loss"].shape == weights["loss_diff"].shape == (3, 60)
    assert np.isfinite(weights["weight"]).all() and ((weights["weight"] >= 0) & (weights["weight"] <= 1)).all()
    with open(PATHS.curves, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[-3:] == ["mean_weight", "l_pt", "mentor_updates"]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("test-spade")
    (child,) = client.search_runs([exp.experiment_id], filter_string="tags.`mlflow.runName` = 'train_student'")
    assert child.data.tags["method"] == "spade" and child.data.tags["mentor"] == "dd"
    assert [m.step for m in client.get_metric_history(child.info.run_id, "mean_weight")] == [1, 2, 3]

    correct_labels.run(cfg)  # evaluate also reports the label-corrected model
    logged = evaluate.run(cfg)
    report = json.loads(Path(PATHS.metrics).read_text())
    assert report["method"] == "spade" and report["detection_epoch"] == 3
    assert 0.0 <= report["detection_auroc"] <= 1.0 and logged["detection_auroc"] == report["detection_auroc"]
    assert (Path(PATHS.plots_dir) / "weights.png").is_file()
