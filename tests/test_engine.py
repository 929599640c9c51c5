"""The engine: schedules, augmentation, learning, exact resume, refusals, NaN stop, no true labels, precision."""

from __future__ import annotations

import dataclasses
import inspect
import math
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from labelnoise import engine, runtime
from labelnoise.config import from_dict, merge, read_yaml
from labelnoise.models import create_model
from labelnoise.views import TrainView
from tests.helpers import SigintAt, live_sigint, live_signals, nan_from, new_store, split_student

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_thread")



def recipe_cfg(**overrides: Any):
    """The training recipe (params `train`) of params.yaml with a short run's values and ``overrides``."""
    base = {"epochs": 3, "batch_size": 16, "eval_batch_size": 64, "lr": 0.05, "schedule": "cosine",
            "precision": "fp32", "channels_last": "off"}
    raw = merge(read_yaml(REPO / "params.yaml"), {"train": {**base, **overrides}})
    return from_dict(raw).train


def separable_view(n_train: int = 96, n_clean: int = 30, n_test: int = 30, k: int = 3, seed: int = 0) -> TrainView:
    """8x8 grey images: class c lights up row block c (plus noise). Easy to learn, like digits."""
    g = torch.Generator().manual_seed(seed)

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % k
        x = torch.randint(0, 60, (n, 1, 8, 8), generator=g)
        for c in range(k):
            x[y == c, :, 2 * c : 2 * c + 2, :] += 180
        return x.clamp(0, 255).to(torch.uint8), y.to(torch.int64)

    x_train, y_train = make(n_train)
    x_clean, y_clean = make(n_clean)
    x_test, y_test = make(n_test)
    empty_x, empty_y = torch.empty(0, 1, 8, 8, dtype=torch.uint8), torch.empty(0, dtype=torch.int64)
    return TrainView(x_train=x_train, y_train=y_train, x_clean=x_clean, y_clean=y_clean, x_val=empty_x,
                     y_val=empty_y, x_test=x_test, y_test=y_test, classes=["a", "b", "c"][:k], dataset="digits")


def new_model(seed: int = 0, k: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("cnn", num_classes=k, in_channels=1, image_size=8, mean=[0.3], std=[0.3])


def fit(model: nn.Module, data: Any, cfg: Any, **kw: Any) -> engine.FitResult:
    """engine.fit with plain cross-entropy, the recipe ``cfg`` also as what a checkpoint must match."""
    kw = {"seed": 0, "progress": False, "log": lambda line: None, **kw}
    return engine.fit(model, data, engine.Task(label_smoothing=cfg.label_smoothing), recipe=cfg,
                      config={"train": dataclasses.asdict(cfg), "seed": kw["seed"]},
                      record_epochs=engine.weight_epochs([0.5, 1.0], cfg.epochs), **kw)


def run_fit(cfg, data, path=None, model=None, **kw) -> engine.FitResult:
    return fit(model or new_model(), data, cfg, device="cpu", checkpoint_path=path, **kw)


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ----------------------------------------------------------------------------- schedules
def factors(schedule: str, total: int = 100, **kw: Any) -> list[float]:
    args = {"warmup_steps": 0, "milestones": [0.5, 0.75], "gamma": 0.1, "pct_start": 0.25, **kw}
    return [engine.lr_factor(s, schedule=schedule, total_steps=total, **args) for s in range(total)]


def test_constant_schedule() -> None:
    assert factors("constant") == [1.0] * 100


def test_multistep_milestones_are_fractions_of_training() -> None:
    f = factors("multistep", total=100, milestones=[0.5, 0.75], gamma=0.1)
    assert f[49] == 1.0 and f[50] == pytest.approx(0.1) and f[74] == pytest.approx(0.1)
    assert f[75] == pytest.approx(0.01) and f[99] == pytest.approx(0.01)


def test_linear_warmup_then_cosine() -> None:
    f = factors("cosine", total=100, warmup_steps=10)
    assert f[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])  # linear ramp, first step > 0
    assert f[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False))  # monotone decay after warm-up
    assert f[55] == pytest.approx(0.5, abs=0.02) and f[-1] < 0.01


def test_warmup_applies_to_multistep() -> None:
    f = factors("multistep", total=100, warmup_steps=5)
    assert f[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0]) and f[5] == 1.0


def test_onecycle_peaks_at_pct_start() -> None:
    f = factors("onecycle", total=200, pct_start=0.3)
    peak = max(range(200), key=lambda s: f[s])
    assert f[peak] == pytest.approx(1.0) and peak in (59, 60)
    assert all(a <= b for a, b in zip(f[:60], f[1:60], strict=False))  # rises
    assert all(a >= b for a, b in zip(f[60:], f[61:], strict=False))  # then falls
    assert f[0] < 0.05 and f[-1] < 0.01


def test_scheduler_steps_per_iteration() -> None:
    cfg = recipe_cfg(epochs=4, schedule="multistep", milestones=[0.5], lr_gamma=0.5, warmup_epochs=1, lr=0.2)
    model = nn.Linear(2, 2)
    opt = engine.make_optimizer(model, cfg)
    sched = engine.make_scheduler(opt, cfg, steps_per_epoch=5)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:5] == pytest.approx([0.04, 0.08, 0.12, 0.16, 0.2])  # warm-up over 1 epoch = 5 steps
    assert lrs[9] == pytest.approx(0.2) and lrs[10] == pytest.approx(0.1)  # milestone 0.5 of 20 steps


def test_optimizer_settings_come_from_config() -> None:
    cfg = recipe_cfg(lr=0.03, momentum=0.8, nesterov=True, weight_decay=1e-3)
    group = engine.make_optimizer(nn.Linear(2, 2), cfg).param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.03, 0.8, True, 1e-3)


# ----------------------------------------------------------------------------- augmentation and settings
def test_crop_flip_is_a_seeded_per_image_crop() -> None:
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.int64).remainder(250).add(1).to(torch.uint8).view(2, 3, 6, 6)
    x = x.repeat(16, 1, 1, 1)  # 32 identical pairs: different crops must show up
    out = engine.crop_flip(x, padding=2, generator=torch.Generator().manual_seed(0))
    again = engine.crop_flip(x, padding=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8 and torch.equal(out, again)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    distinct = set()
    for i in range(x.shape[0]):  # each output is some crop of the padded image, maybe flipped
        crops = [padded[i, :, r : r + 6, c : c + 6] for r in range(5) for c in range(5)]
        crops += [cr.flip(-1) for cr in crops]
        match = [j for j, cr in enumerate(crops) if torch.equal(cr, out[i])]
        assert match
        if i % 2 == 0:
            distinct.add(match[0])
    assert len(distinct) > 1  # per image, not one crop for the whole batch
    flip_only = engine.crop_flip(x, padding=0, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(o, xi) or torch.equal(o, xi.flip(-1)) for o, xi in zip(flip_only, x, strict=True))


def test_resolved_settings() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert engine.resolve_augment("auto", "cifar10") == "crop_flip"
    assert engine.resolve_augment("auto", "fashion_mnist") == "none"
    assert engine.resolve_augment("crop_flip", "digits") == "crop_flip"
    assert runtime.resolve_precision("fp32", cpu) is None and runtime.resolve_precision("bf16", cpu) is torch.bfloat16
    assert runtime.resolve_channels_last("off", cuda) is False and runtime.resolve_channels_last("auto", cuda)


def test_precision_auto_follows_the_cpu_unless_the_switch_says(monkeypatch: pytest.MonkeyPatch) -> None:
    """``auto`` on a CPU: bf16 autocast only with native bf16; ``LABELNOISE_CPU_BF16`` (0 / 1) decides instead,
    so the suite runs the fp32 path of a CPU without bf16 on any machine (and the bf16 path on any)."""
    cpu = torch.device("cpu")
    monkeypatch.delenv("LABELNOISE_CPU_BF16", raising=False)
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert runtime.resolve_precision("auto", cpu) is (torch.bfloat16 if native else None)
    monkeypatch.setenv("LABELNOISE_CPU_BF16", "0")
    assert runtime.resolve_precision("auto", cpu) is None
    assert runtime.resolve_precision("bf16", cpu) is torch.bfloat16  # an explicit choice stays
    monkeypatch.setenv("LABELNOISE_CPU_BF16", "1")
    assert runtime.resolve_precision("auto", cpu) is torch.bfloat16
    monkeypatch.setenv("LABELNOISE_CPU_BF16", "yes")
    with pytest.raises(ValueError, match="LABELNOISE_CPU_BF16 must be 0 or 1"):
        runtime.resolve_precision("auto", cpu)


# ----------------------------------------------------------------------------- evaluation
def test_predict_logits_and_evaluate() -> None:
    data = separable_view()
    model = new_model()
    logits = engine.predict_logits(model, data.x_test, batch_size=7, device="cpu")
    assert logits.shape == (30, 3) and logits.dtype == torch.float32
    assert model.training  # mode restored
    stats = engine.evaluate_accuracy(model, data.x_test, data.y_test, batch_size=7, device="cpu")
    assert stats["acc"] == pytest.approx((logits.argmax(1) == data.y_test).float().mean().item())
    empty = engine.evaluate_accuracy(model, data.x_val, data.y_val, batch_size=7, device="cpu")
    assert empty["n"] == 0 and math.isnan(empty["acc"])


# ----------------------------------------------------------------------------- fit
def test_tiny_fit_learns() -> None:
    cfg = recipe_cfg(epochs=6, lr=0.05, schedule="onecycle")
    result = run_fit(cfg, separable_view())
    assert [r["epoch"] for r in result.history] == list(range(1, 7))
    assert set(result.history[0]) == {"epoch", "train_loss", "train_acc_noisy", "clean_acc", "test_acc", "lr"}
    assert result.history[-1]["train_acc_noisy"] >= 0.95
    assert result.history[-1]["clean_acc"] >= 0.9
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    best = max(result.history, key=lambda r: r["clean_acc"])
    assert result.best_clean_acc == best["clean_acc"]
    assert result.history[result.best_epoch - 1]["clean_acc"] == best["clean_acc"]


def test_epoch_size_repeats_a_small_set_to_the_same_steps_per_epoch() -> None:
    """train.epoch_size: a set smaller than it is repeated (a fresh order each pass) up to it, so 24 examples get
    the optimiser steps of 96; each example is seen as often as the others, give or take one pass."""
    data, small = separable_view(), separable_view(n_train=24)
    assert recipe_cfg().steps_per_epoch(96) == 6 and recipe_cfg(epoch_size=96).steps_per_epoch(24) == 6
    seen = torch.zeros(24, dtype=torch.int64)
    steps: list[int] = []

    class Counting(engine.Task):
        def __call__(self, model, xb, yb, *, step, idx):
            seen.index_add_(0, idx, torch.ones_like(idx))
            steps.append(step)
            return super().__call__(model, xb, yb, step=step, idx=idx)

    cfg = recipe_cfg(epochs=2, epoch_size=96)
    result = engine.fit(new_model(), small, Counting(), recipe=cfg, config={}, seed=0, progress=False,
                        log=lambda line: None, device="cpu")
    assert steps == list(range(12)) and [r["epoch"] for r in result.history] == [1, 2]
    assert result.steps == 12  # what train_student reports as train_steps
    assert seen.sum() == 2 * 96 and seen.min() == seen.max() == 8
    # a set at least epoch_size long is one pass, in the same order as without the param
    same = run_fit(recipe_cfg(epochs=2), data), run_fit(recipe_cfg(epochs=2, epoch_size=50), data)
    assert same[0].history == same[1].history


def test_fit_with_bf16_channels_last_and_augmentation_runs() -> None:
    cfg = recipe_cfg(epochs=1, precision="bf16", channels_last="on", augment="crop_flip", label_smoothing=0.1)
    result = fit(new_model(), separable_view(), cfg, progress=True, log=lambda line: None)
    assert math.isfinite(result.history[0]["train_loss"])


def test_the_training_bar_is_drawn_on_a_terminal_only(monkeypatch) -> None:
    """The epoch bar goes to stderr where that is a terminal (with the epoch counter), and draws nothing into a
    pipe or a log file; the bar of a folder's image reading is the same one (labelnoise.io.terminal_bar)."""
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    shown = {}
    for stream in (Terminal(), io.StringIO()):
        monkeypatch.setattr(sys, "stderr", stream)
        fit(new_model(), separable_view(), recipe_cfg(epochs=1), name="train", progress=None)
        shown[stream.isatty()] = stream.getvalue()
    assert "train 1/1" in shown[True] and shown[False] == ""


def test_resume_after_crash_equals_uninterrupted(tmp_path) -> None:
    cfg, data = recipe_cfg(epochs=3, augment="crop_flip"), separable_view()
    straight = run_fit(cfg, data)

    class Crash(Exception):
        pass

    def crash_after_first_epoch(row: dict) -> None:
        if row["epoch"] == 1:
            raise Crash

    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(Crash):
        run_fit(cfg, data, ckpt, on_epoch=crash_after_first_epoch)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
    seen: list[int] = []
    resumed = run_fit(cfg, data, ckpt, model=new_model(seed=123), on_epoch=lambda row: seen.append(row["epoch"]))
    assert resumed.resumed_epochs == 1
    assert seen == [1, 2, 3]  # restored epochs are replayed to the tracker
    assert resumed.history == straight.history
    assert_same_weights(resumed.model.state_dict(), straight.model.state_dict())
    assert_same_weights(resumed.best_state, straight.best_state)
    assert torch.load(ckpt, weights_only=True)["finished"] is True


def test_ctrl_c_mid_epoch_saves_and_resumes_exactly(tmp_path) -> None:
    cfg, data = recipe_cfg(epochs=2, augment="crop_flip"), separable_view()
    straight = run_fit(cfg, data, model=SigintAt(new_model(), at=-1))
    ckpt = tmp_path / "ckpt.pt"
    with live_sigint():
        before = signal.getsignal(signal.SIGINT)
        with pytest.raises(engine.TrainingInterrupted, match="resume"):
            run_fit(cfg, data, ckpt, model=SigintAt(new_model(), at=9))  # epoch 2, batch 3 of 6
        assert signal.getsignal(signal.SIGINT) is before  # the handler found is restored
    saved = torch.load(ckpt, weights_only=True)
    assert saved["epoch"] == 1 and saved["partial"]["batch"] == 3 and saved["step"] == 9
    resumed = run_fit(cfg, data, ckpt, model=SigintAt(new_model(seed=5), at=-1))
    assert resumed.resumed_epochs == pytest.approx(1.5)
    assert resumed.history == straight.history
    assert_same_weights(resumed.model.state_dict(), straight.model.state_dict())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_during_the_last_step_is_a_stop_and_the_rerun_reuses_the_finished_run(tmp_path, sig: int) -> None:
    """A signal during the last step of the last epoch (no step follows to poll the flag) still stops: the
    finished checkpoint is saved, TrainingInterrupted is raised (a stage then exits 128 + signal instead of going
    on with its next phase), and the rerun takes the finished run as its result, the same numbers."""
    cfg, data = recipe_cfg(epochs=2), separable_view()
    straight = run_fit(cfg, data, model=SigintAt(new_model(), at=-1))
    ckpt, last = tmp_path / "ckpt.pt", 2 * math.ceil(96 / 16)
    with live_signals():
        with pytest.raises(engine.TrainingInterrupted, match="the end of training") as stopped:
            run_fit(cfg, data, ckpt, model=SigintAt(new_model(), at=last, sig=sig))
    assert stopped.value.signum == sig
    assert torch.load(ckpt, weights_only=True)["finished"] is True
    again = run_fit(cfg, data, ckpt, model=SigintAt(new_model(seed=7), at=-1))
    assert again.history == straight.history
    assert_same_weights(again.model.state_dict(), straight.model.state_dict())


def test_an_ignored_sigint_stays_ignored() -> None:
    """A run started in the background (SIGINT ignored, as ``nohup`` or ``cmd &`` in a script leave it) is not
    stopped by a SIGINT and does not make Ctrl-C live: the disposition is the one it found, throughout."""
    cfg, data = recipe_cfg(epochs=1), separable_view()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        seen: list[object] = []

        class Probe(SigintAt):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                seen.append(signal.getsignal(signal.SIGINT))
                return super().forward(x)

        result = run_fit(cfg, data, model=Probe(new_model(), at=2))  # SIGINT at the second step: ignored
        assert len(result.history) == 1 and set(seen) == {signal.SIG_IGN}
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_mismatched_checkpoint_is_refused(tmp_path) -> None:
    data, ckpt = separable_view(), tmp_path / "ckpt.pt"

    def stop(row: dict) -> None:
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        run_fit(recipe_cfg(epochs=2, lr=0.05), data, ckpt, on_epoch=stop)
    lines: list[str] = []
    result = fit(new_model(), data, recipe_cfg(epochs=2, lr=0.02), checkpoint_path=ckpt, log=lines.append)
    assert result.resumed_epochs == 0 and len(result.history) == 2
    refusal = [line for line in lines if "not resumed" in line]
    assert refusal and "train.lr: 0.05 in checkpoint, 0.02 now" in refusal[0]
    # other data (e.g. another noise draw) is refused too, even with equal params
    other = separable_view(seed=1)
    lines.clear()
    with pytest.raises(RuntimeError):
        fit(new_model(), data, recipe_cfg(epochs=2), checkpoint_path=ckpt, log=lines.append, on_epoch=stop)
    fit(new_model(), other, recipe_cfg(epochs=2), checkpoint_path=ckpt, log=lines.append)
    assert any("data.x_train" in line for line in lines if "not resumed" in line)


def test_finished_checkpoint_is_the_result(tmp_path) -> None:
    """A finished run of the same config is reused, not retrained (a stage that failed after training redoes
    only what failed): the same model and history, nothing trained."""
    cfg, data, ckpt = recipe_cfg(epochs=1), separable_view(), tmp_path / "ckpt.pt"
    first = run_fit(cfg, data, ckpt)
    lines: list[str] = []
    again = fit(new_model(), data, cfg, checkpoint_path=ckpt, log=lines.append)
    assert again.resumed_epochs == 1 and any("reusing the finished run" in line for line in lines)
    assert again.history == first.history
    assert_same_weights(again.model.state_dict(), first.model.state_dict())


def test_nan_loss_stops_with_epoch_and_step(tmp_path) -> None:
    cfg, ckpt = recipe_cfg(epochs=3), tmp_path / "ckpt.pt"
    with pytest.raises(engine.NonFiniteLossError, match=r"epoch 2, step 8\b") as info:
        run_fit(cfg, separable_view(), ckpt, model=nan_from(new_model(), 9))  # 6 steps per epoch
    assert (info.value.epoch, info.value.step) == (2, 8)
    assert "last good checkpoint" in str(info.value)
    saved = torch.load(ckpt, weights_only=True)
    assert saved["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())


def test_fit_never_gets_true_train_labels() -> None:
    params = inspect.signature(engine.fit).parameters
    assert params["data"].annotation == "TrainView"
    assert not any("true" in name or name in ("labels", "y_true") for name in params)
    # fit reads only the TrainView fields: an object with exactly those (and nothing else) is enough
    fields = {"x_train", "y_train", "x_clean", "y_clean", "x_val", "y_val", "x_test", "y_test", "classes", "dataset",
              "trusted_in_train", "y_clean_given"}  # y_clean_given: the noise source's labels of trusted images
    assert set(TrainView.__dataclass_fields__) == fields

    class Exactly:
        __slots__ = tuple(fields)

    view, data = separable_view(), Exactly()
    for name in fields:
        setattr(data, name, getattr(view, name))
    result = run_fit(recipe_cfg(epochs=1), data)
    assert len(result.history) == 1


# ----------------------------------------------------------------------------- stage
def test_train_student_stage_end_to_end(tmp_path, monkeypatch) -> None:
    import csv

    import numpy as np
    from mlflow.tracking import MlflowClient

    from labelnoise.datasets import Prepared, save_prepared
    from labelnoise.models import load_model
    from labelnoise.noise import NoisyLabels, save_noisy
    from stages import train_student
    from stages.common import PATHS

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", new_store(tmp_path))
    for var in ("DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME", "LABELNOISE_PIPELINE_ID"):
        monkeypatch.delenv(var, raising=False)
    view = separable_view(n_train=48, n_clean=24, n_test=24)
    images = torch.cat([view.x_train, view.x_clean, view.x_test]).numpy()
    labels = torch.cat([view.y_train, view.y_clean, view.y_test]).numpy()
    idx = np.arange(96, dtype=np.int64)
    save_prepared(PATHS.prepared, Prepared(images=images, labels=labels, train_idx=idx[:48], clean_idx=idx[48:72],
                                           val_idx=idx[:0], test_idx=idx[72:], classes=["a", "b", "c"],
                                           dataset="digits"))
    noisy = labels[:48].copy()
    noisy[:6] = (noisy[:6] + 1) % 3
    save_noisy(PATHS.noisy, NoisyLabels(labels=noisy, mask=noisy != labels[:48]))
    raw = merge(read_yaml(REPO / "params.yaml"), split_student({
        "base": {"device": "cpu", "threads": 1, "experiment": "test-student"},
        "data": {"dataset": "digits"},
        "student": {"method": "ce", "epochs": 3, "batch_size": 16, "eval_batch_size": 10, "lr": 0.05,
                    "precision": "fp32", "channels_last": "off"}}))
    cfg = from_dict(raw)

    metrics = train_student.run(cfg)

    with open(PATHS.curves, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "train_loss", "train_acc_noisy", "clean_acc", "test_acc", "lr"]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    final, best = load_model(PATHS.student_model), load_model(PATHS.student_best)
    for model, record_path in ((final, PATHS.student_model), (best, PATHS.student_best)):
        record = torch.load(record_path, weights_only=True)
        assert record["model_name"] == "cnn" and record["num_classes"] == 3
        assert record["config"]["train"]["epochs"] == 3 and record["config"]["seed"] == cfg.base.seed
        clean = engine.evaluate_accuracy(model, view.x_clean, view.y_clean, batch_size=10, device="cpu")["acc"]
        assert clean == pytest.approx(record["clean_acc"])  # the saved model is the one that was measured
        assert float(rows[record["epoch"] - 1]["clean_acc"]) == pytest.approx(record["clean_acc"])
    assert metrics["best_clean_acc"] == max(float(r["clean_acc"]) for r in rows)
    assert torch.load(PATHS.student_ckpt, weights_only=True)["finished"] is True

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("test-student")
    (child,) = client.search_runs([exp.experiment_id], filter_string="tags.`mlflow.runName` = 'train_student'")
    assert child.info.status == "FINISHED"
    assert child.data.tags["method"] == "ce" and child.data.tags["model"] == "cnn"
    assert [m.step for m in client.get_metric_history(child.info.run_id, "clean_acc")] == [1, 2, 3]
    assert child.data.metrics["best_epoch"] == metrics["best_epoch"]
    assert child.data.params["train.lr"] == "0.05"


def test_a_fit_writes_what_it_cost_to_the_ledger_only_when_asked(tmp_path, monkeypatch) -> None:
    """LABELNOISE_LEDGER names a file: each fit appends one JSON line (stage, purpose, images per epoch, epochs
    trained, seconds, precision); a finished run reused from its checkpoint trains nothing and writes none."""
    import json

    cfg, data, ckpt = recipe_cfg(epochs=2), separable_view(), tmp_path / "ckpt.pt"
    monkeypatch.delenv("LABELNOISE_LEDGER", raising=False)
    run_fit(cfg, data)
    assert not list(tmp_path.iterdir())
    ledger = tmp_path / "ledger.jsonl"
    monkeypatch.setenv("LABELNOISE_LEDGER", str(ledger))
    runtime.set_stage("some_stage")
    fit(new_model(), data, cfg, checkpoint_path=ckpt, purpose="a test network")
    fit(new_model(), data, cfg, checkpoint_path=ckpt, purpose="a test network")  # the finished run, reused
    (row,) = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert row["stage"] == "some_stage" and row["network"] == "a test network"
    assert (row["images_per_epoch"], row["epochs"], row["images"]) == (96, 2, 192)
    assert row["seconds"] > 0 and row["precision"] == "fp32" and row["evaluated_per_epoch"] == 60
    runtime.set_stage("")
