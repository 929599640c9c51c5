"""Label correction by joint optimization: loss terms by hand, the label buffer and updates, mentor trust,
no true train labels in training, exact resume, and the `correct_labels` stage on the tiny preset."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from labelnoise import correction
from labelnoise.config import Config, ConfigError, from_dict, merge, read_yaml
from labelnoise.models import create_model
from labelnoise.views import TrainView
from tests.helpers import nan_from, new_store, split_student

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ----------------------------------------------------------------------------- losses by hand
# Two examples, three classes; logits = log(s), so softmax(logits) = s exactly.
S = [[0.5, 0.25, 0.25], [0.2, 0.2, 0.6]]
Y = [[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]]


def _logits() -> torch.Tensor:
    return torch.tensor(S, dtype=torch.float64).log().float()


def test_compatibility_loss_by_hand() -> None:
    expected = -(math.log(0.5) + 0.5 * math.log(0.2) + 0.5 * math.log(0.6)) / 2
    got = correction.compatibility_loss(_logits(), torch.tensor(Y))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # = KL(y‖s) + H(y), averaged over the batch
    kl = (math.log(1 / 0.5) + 0.5 * math.log(0.5 / 0.2) + 0.5 * math.log(0.5 / 0.6)) / 2
    entropy_y = (0 + math.log(2)) / 2
    assert got.item() == pytest.approx(kl + entropy_y, rel=1e-6)


def test_prior_loss_by_hand() -> None:
    mean = [(0.5 + 0.2) / 2, (0.25 + 0.2) / 2, (0.25 + 0.6) / 2]  # s̄ = (0.35, 0.225, 0.425)
    expected = sum((1 / 3) * math.log((1 / 3) / m) for m in mean)
    got = correction.prior_loss(_logits(), torch.full((3,), 1 / 3))
    assert got.item() == pytest.approx(expected, rel=1e-5)
    prior = torch.tensor([0.5, 0.5, 0.0])  # a zero-prior class contributes nothing
    expected = 0.5 * math.log(0.5 / 0.35) + 0.5 * math.log(0.5 / 0.225)
    assert correction.prior_loss(_logits(), prior).item() == pytest.approx(expected, rel=1e-5)


def test_entropy_loss_by_hand() -> None:
    expected = -sum(p * math.log(p) for row in S for p in row) / 2
    assert correction.entropy_loss(_logits()).item() == pytest.approx(expected, rel=1e-6)


def test_joint_loss_is_the_weighted_sum() -> None:
    prior = torch.full((3,), 1 / 3)
    out = correction.joint_loss(_logits(), torch.tensor(Y), prior=prior, alpha=1.2, beta=0.8)
    assert set(out) == {"loss", "l_c", "l_p", "l_e"}
    parts = (correction.compatibility_loss(_logits(), torch.tensor(Y)), correction.prior_loss(_logits(), prior),
             correction.entropy_loss(_logits()))
    for name, value in zip(("l_c", "l_p", "l_e"), parts, strict=True):
        assert out[name].item() == pytest.approx(value.item())
    assert out["loss"].item() == pytest.approx(parts[0].item() + 1.2 * parts[1].item() + 0.8 * parts[2].item())


def test_losses_give_gradients_through_the_softmax() -> None:
    logits = _logits().requires_grad_(True)
    out = correction.joint_loss(logits, torch.tensor(Y), prior=torch.full((3,), 1 / 3), alpha=1.0, beta=1.0)
    out["loss"].backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_prior_loss_is_zero_exactly_when_the_mean_prediction_is_the_prior() -> None:
    prior = torch.tensor([0.5, 0.3, 0.2])
    rows = torch.tensor([[0.6, 0.2, 0.2], [0.4, 0.4, 0.2]], dtype=torch.float64)  # mean = prior
    assert correction.prior_loss(rows.log().float(), prior).item() == pytest.approx(0.0, abs=1e-6)
    uniform = torch.zeros(4, 3)  # every prediction uniform, prior uniform
    assert correction.prior_loss(uniform, torch.full((3,), 1 / 3)).item() == pytest.approx(0.0, abs=1e-7)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):  # any other mean prediction: strictly positive (Gibbs' inequality)
        logits = torch.randn(5, 3, generator=g) * 2
        mean = torch.softmax(logits, dim=1).mean(dim=0)
        if (mean - prior).abs().max() > 1e-3:
            assert correction.prior_loss(logits, prior).item() > 0


# ----------------------------------------------------------------------------- labels
def test_soft_update_is_the_buffer_mean_and_hard_its_argmax() -> None:
    g = torch.Generator().manual_seed(1)
    buffer = correction.LabelBuffer(3, 6, 4)
    epochs = [torch.softmax(torch.randn(6, 4, generator=g), dim=1) for _ in range(3)]
    for e in epochs:
        buffer.push(e)
    mean = torch.stack(epochs).mean(dim=0)
    soft = correction.update_labels(buffer.mean(), mode="soft")
    assert torch.allclose(soft, mean) and torch.allclose(soft.sum(dim=1), torch.ones(6))
    hard = correction.update_labels(buffer.mean(), mode="hard")
    assert torch.equal(hard, torch.nn.functional.one_hot(mean.argmax(dim=1), 4).float())
    assert torch.equal(hard.sum(dim=1), torch.ones(6))
    with pytest.raises(ValueError, match="soft | hard"):
        correction.update_labels(mean, mode="both")


def test_noisy_label_posterior_by_hand() -> None:
    mean = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    noisy = torch.tensor([1, 2])
    assert torch.equal(correction.noisy_label_posterior(mean, noisy, weight=0.0), mean)  # the paper's update
    assert torch.allclose(correction.noisy_label_posterior(mean, noisy, weight=1.0),
                          torch.nn.functional.one_hot(noisy, 3).float())
    # w = 0.4: channel = 0.4 on the noisy label + 0.2 everywhere; row 0: (0.5·0.2, 0.3·0.6, 0.2·0.2) / 0.32
    post = correction.noisy_label_posterior(mean, noisy, weight=0.4)
    assert torch.allclose(post[0], torch.tensor([0.10, 0.18, 0.04]) / 0.32)
    assert torch.allclose(post.sum(dim=1), torch.ones(2))
    assert post[0].argmax() == 1  # the given label wins where the network is unsure


def test_ring_buffer_keeps_only_the_last_k_epochs() -> None:
    buffer = correction.LabelBuffer(3, 2, 2)
    with pytest.raises(ValueError, match="empty"):
        buffer.mean()
    epochs = [torch.full((2, 2), float(e)) for e in range(1, 6)]  # epoch e: every entry equals e
    buffer.push(epochs[0])
    buffer.push(epochs[1])
    assert len(buffer) == 2 and torch.allclose(buffer.mean(), torch.full((2, 2), 1.5))  # not yet full
    for e in epochs[2:]:
        buffer.push(e)
    assert len(buffer) == 3 and buffer.count == 5
    assert torch.allclose(buffer.mean(), torch.full((2, 2), 4.0))  # epochs 3, 4, 5 only
    state = buffer.state_dict()
    other = correction.LabelBuffer(3, 2, 2)
    other.load_state_dict(state)
    other.push(epochs[0])  # replaces epoch 3: (4 + 5 + 1) / 3
    assert torch.allclose(other.mean(), torch.full((2, 2), 10 / 3))
    with pytest.raises(ValueError, match="expected"):
        buffer.push(torch.zeros(3, 2))


def test_label_update_schedule() -> None:
    due = [e for e in range(1, 11) if correction.label_update_due(e, begin=3, every=3, epochs=10)]
    assert due == [3, 6, 9, 10]  # from begin, every 3 epochs, and always the last epoch
    assert [e for e in range(1, 6) if correction.label_update_due(e, begin=1, every=1, epochs=5)] == [1, 2, 3, 4, 5]


def test_class_prior() -> None:
    assert torch.allclose(correction.class_prior("uniform", num_classes=4), torch.full((4,), 0.25))
    clean = torch.tensor([0, 0, 0, 1, 2, 2])
    assert torch.allclose(correction.class_prior("clean", num_classes=4, clean_labels=clean),
                          torch.tensor([0.5, 1 / 6, 1 / 3, 0.0]))
    with pytest.raises(ConfigError, match="correction.prior"):
        correction.class_prior("clean", num_classes=4, clean_labels=torch.empty(0, dtype=torch.int64))


def test_mentor_trust_uses_the_last_saved_epoch() -> None:
    weights = {"epochs": np.array([1, 5]), "weight": np.array([[1.0, 1.0, 1.0, 1.0], [0.95, 0.2, np.nan, 0.9]]),
               "method": "spade"}
    trusted = correction.mentor_trust(weights, threshold=0.9, n=4)
    assert trusted.tolist() == [True, False, False, False]  # above (not at) the threshold; unseen = untrusted


@pytest.mark.parametrize("weights", [
    None,
    {"epochs": np.array([3]), "weight": np.ones((1, 4)), "method": ""},  # all ones: a ce student
    {"epochs": np.array([3]), "weight": np.full((1, 4), 0.5), "method": "ce"},
    {"epochs": np.zeros(0), "weight": np.zeros((0, 4)), "method": "spade"},
])
def test_mentor_trust_refuses_a_student_without_mentor(weights: Any) -> None:
    with pytest.raises(ConfigError, match=r"^correction\.trust_mentor: "):
        correction.mentor_trust(weights, threshold=0.5, n=4)


def test_begin_after_the_last_epoch_is_a_config_error() -> None:
    raw = merge(read_yaml(REPO / "params.yaml"), {"correction": {"epochs": 3, "begin": 4}})
    with pytest.raises(ConfigError, match=r"^correction\.begin: must be <= correction\.epochs \(3\)"):
        from_dict(raw)


# ----------------------------------------------------------------------------- the two phases
def separable_view(n_train: int = 60, n_clean: int = 24, n_test: int = 24, k: int = 3, seed: int = 0,
                   noisy: int = 15) -> TrainView:
    """8x8 grey images: class c lights up row block c; the first ``noisy`` train labels are shifted by one."""
    g = torch.Generator().manual_seed(seed)

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % k
        x = torch.randint(0, 60, (n, 1, 8, 8), generator=g)
        for c in range(k):
            x[y == c, :, 2 * c : 2 * c + 2, :] += 180
        return x.clamp(0, 255).to(torch.uint8), y.to(torch.int64)

    x_train, y_train = make(n_train)
    y_train[:noisy] = (y_train[:noisy] + 1) % k
    x_clean, y_clean = make(n_clean)
    x_test, y_test = make(n_test)
    empty_x, empty_y = torch.empty(0, 1, 8, 8, dtype=torch.uint8), torch.empty(0, dtype=torch.int64)
    return TrainView(x_train=x_train, y_train=y_train, x_clean=x_clean, y_clean=y_clean, x_val=empty_x,
                     y_val=empty_y, x_test=x_test, y_test=y_test, classes=["a", "b", "c"][:k], dataset="digits")


def configs(**correction_overrides: Any) -> tuple[Any, Any]:
    train = {"batch_size": 16, "eval_batch_size": 64, "precision": "fp32", "channels_last": "off"}
    corr = {"epochs": 4, "begin": 2, "buffer": 2, "lr": 0.05, "retrain_epochs": 3, "retrain_lr": 0.05,
            "noisy_label_weight": 0.1, **correction_overrides}
    cfg = from_dict(merge(read_yaml(REPO / "params.yaml"), {"train": train, "correction": corr}))
    return cfg.correction, cfg.train


def new_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("cnn", num_classes=3, in_channels=1, image_size=8, mean=[0.3], std=[0.3])


def run_both(data: Any, c: Any, s: Any, *, path: Path | None = None, joint_model: nn.Module | None = None,
             crash: tuple[str, int] | None = None, log: list[str] | None = None,
             trusted: np.ndarray | None = None) -> tuple[correction.Relabelled, correction.RetrainResult]:
    """Phase 1 then phase 2 on ``data``, their checkpoints at ``path`` (phase 1: ``*.joint.pt``) as the stage keeps
    them; ``crash=(phase, epoch)`` raises after that epoch's checkpoint."""
    joint_model = joint_model or new_model(0)
    retrain_model = new_model(1)
    sink = log.append if log is not None else (lambda line: None)

    def stop(phase: str) -> Any:
        def on_epoch(row: dict[str, float]) -> None:
            if crash == (phase, row["epoch"]):
                raise KeyboardInterrupt(f"killed after {phase} epoch {row['epoch']}")
        return on_epoch

    joint = correction.joint_optimize(joint_model, data, cfg=c, recipe=s, seed=0, trusted=trusted,
                                      checkpoint_path=joint_path(path) if path else None, on_epoch=stop("joint"),
                                      log=sink)
    final = correction.retrain(retrain_model, data, joint.soft_labels, cfg=c, recipe=s, seed=0, checkpoint_path=path,
                               on_epoch=stop("retrain"), log=sink)
    return joint, final


def joint_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.joint{path.suffix}")


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_joint_optimization_corrects_shifted_labels() -> None:
    c, s = configs(epochs=6, begin=3, buffer=3, update="hard")
    data = separable_view()
    joint, final = run_both(data, c, s)
    true = torch.arange(60) % 3
    hard = joint.soft_labels.argmax(dim=1)
    assert (hard == true).float().mean() > (data.y_train == true).float().mean()  # labels got better
    assert set(joint.soft_labels.unique().tolist()) <= {0.0, 1.0}  # hard update: one-hot rows
    rows = joint.history
    assert [r["epoch"] for r in rows] == list(range(1, 7))
    assert rows[0]["labels_changed"] == 0.0 and rows[1]["labels_changed"] == 0.0  # no update before `begin`
    assert joint.hard_history.shape == (6, 60) and np.array_equal(joint.hard_history[-1], hard.numpy())
    assert len(final.history) == 3 and 1 <= final.best_epoch <= 3


def test_trusted_examples_keep_their_noisy_label() -> None:
    c, s = configs(epochs=4, begin=2)
    data = separable_view()
    trusted = np.zeros(60, dtype=bool)
    trusted[:10] = True  # ten wrong labels (the first 15 are shifted) the mentor "trusts"
    joint, _ = run_both(data, c, s, trusted=trusted)
    kept = joint.soft_labels[torch.from_numpy(trusted)]
    assert torch.equal(kept, torch.nn.functional.one_hot(data.y_train[:10], 3).float())
    assert (joint.soft_labels[10:15].argmax(dim=1) != data.y_train[10:15]).any()  # untrusted ones may change


def test_phases_never_get_true_train_labels() -> None:
    fields = {"x_train", "y_train", "x_clean", "y_clean", "x_val", "y_val", "x_test", "y_test", "classes", "dataset",
              "trusted_in_train", "y_clean_given"}  # y_clean_given: the noise source's labels of trusted images
    assert set(TrainView.__dataclass_fields__) == fields  # the view has no true train labels
    for fn in (correction.joint_optimize, correction.retrain):
        params = inspect.signature(fn).parameters
        assert params["data"].annotation == "TrainView"
        assert not any("true" in name or name in ("labels", "y_true", "prepared", "mask") for name in params)

    class Exactly:  # an object with exactly the TrainView fields (and nothing else) is enough
        __slots__ = tuple(fields)

    view, data = separable_view(), Exactly()
    for name in fields:
        setattr(data, name, getattr(view, name))
    c, s = configs(epochs=2, begin=1, retrain_epochs=1)
    joint, final = run_both(data, c, s)
    assert len(joint.history) == 2 and len(final.history) == 1


def test_resume_after_a_kill_equals_uninterrupted(tmp_path: Path) -> None:
    c, s = configs(epochs=4, begin=2, retrain_epochs=3)
    s = dataclasses.replace(s, augment="crop_flip")  # the augmentation draws are checkpointed too
    data = separable_view()
    straight_joint, straight_final = run_both(data, c, s)
    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(KeyboardInterrupt):
        run_both(data, c, s, path=ckpt, crash=("joint", 2))
    saved = torch.load(joint_path(ckpt), weights_only=True)
    assert saved["epoch"] == 2 and saved["finished"] is False and not ckpt.exists()
    with pytest.raises(KeyboardInterrupt):  # resumes phase 1 at epoch 3, then dies in phase 2
        run_both(data, c, s, path=ckpt, crash=("retrain", 2))
    assert torch.load(joint_path(ckpt), weights_only=True)["finished"] is True
    saved = torch.load(ckpt, weights_only=True)
    assert saved["epoch"] == 2 and saved["finished"] is False
    # the networks passed in are overwritten from the checkpoints (a finished phase 1 is reused as it is)
    lines: list[str] = []
    joint, final = run_both(data, c, s, path=ckpt, log=lines)
    assert (joint.resumed_epochs, final.resumed_epochs) == (4, 2)
    assert any("reusing the finished run" in line for line in lines)
    assert joint.history == straight_joint.history and final.history == straight_final.history
    assert torch.equal(joint.soft_labels, straight_joint.soft_labels)
    assert np.array_equal(joint.hard_history, straight_joint.hard_history)
    assert_same_weights(joint.model.state_dict(), straight_joint.model.state_dict())
    assert_same_weights(final.model.state_dict(), straight_final.model.state_dict())
    assert_same_weights(final.best_state, straight_final.best_state)
    assert torch.load(ckpt, weights_only=True)["finished"] is True


def test_checkpoint_of_another_config_is_refused(tmp_path: Path) -> None:
    data, ckpt = separable_view(), tmp_path / "ckpt.pt"
    c, s = configs(lr=0.05)
    with pytest.raises(KeyboardInterrupt):
        run_both(data, c, s, path=ckpt, crash=("joint", 1))
    lines: list[str] = []
    c2, _ = configs(lr=0.02)
    joint, _ = run_both(data, c2, s, path=ckpt, log=lines)
    assert joint.resumed_epochs == 0 and len(joint.history) == 4
    refusal = [line for line in lines if "not resumed" in line]
    assert refusal and "correction.lr: 0.05 in checkpoint, 0.02 now" in refusal[0]
    # a finished run is the result: running again trains nothing (phase 1 and phase 2 reused), the same numbers
    lines.clear()
    again, final = run_both(data, c2, s, path=ckpt, log=lines)
    assert again.history == joint.history and final.resumed_epochs == c2.retrain_epochs
    assert sum("reusing the finished run" in line for line in lines) == 2


def test_nan_loss_stops_with_epoch_step_and_the_param_to_lower() -> None:
    from labelnoise.engine import NonFiniteLossError

    c, s = configs()
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 5\b.*correction\.lr") as info:
        correction.joint_optimize(nan_from(new_model(), 6), separable_view(), cfg=c, recipe=s, seed=0,
                                  log=lambda line: None)  # 60 examples / 16 = 4 steps per epoch
    assert (info.value.epoch, info.value.step) == (2, 5)


# ----------------------------------------------------------------------------- the stage (tiny preset)
STAGE_OVERLAY = {"base": {"threads": 1, "experiment": "test-correction"},
                 "correction": {"epochs": 4, "begin": 2, "buffer": 2, "retrain_epochs": 3, "teacher": "student"}}


def tiny(tiny_base: dict[str, Any], **correction_overrides: Any) -> Config:
    return from_dict(merge(tiny_base, {"correction": correction_overrides}))


@pytest.fixture(scope="module")
def tiny_base() -> dict[str, Any]:
    """params.yaml + presets/tiny.yaml + a short correction (the `tiny_config` fixture, as a raw dict)."""
    raw = merge(read_yaml(REPO / "params.yaml"), read_yaml(REPO / "presets" / "tiny.yaml"))
    return merge(raw, STAGE_OVERLAY)


@pytest.fixture(scope="module")
def prerequisites(tmp_path_factory: pytest.TempPathFactory, tiny_base: dict[str, Any]) -> Path:
    """download → inject_noise → estimate_noise → a ce student, once for the module (each test copies the
    folder)."""
    from stages import download, estimate_noise, inject_noise, train_student

    root = tmp_path_factory.mktemp("prereq")
    cfg = from_dict(merge(tiny_base, split_student({"student": {"method": "ce"}})))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", new_store(root))
        for var in ("DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME", "LABELNOISE_PIPELINE_ID"):
            mp.delenv(var, raising=False)
        download.run(cfg)
        inject_noise.run(cfg)
        estimate_noise.run(cfg)  # the auto settings of the correction read it
        train_student.run(cfg)
    return root


@pytest.fixture()
def workdir(prerequisites: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    work = tmp_path / "work"
    shutil.copytree(prerequisites, work, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"))
    monkeypatch.chdir(work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", new_store(work))
    for var in ("DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME", "LABELNOISE_PIPELINE_ID"):
        monkeypatch.delenv(var, raising=False)
    return work


def test_stage_writes_all_outputs_and_logs_to_mlflow(workdir: Path, tiny_base: dict[str, Any]) -> None:
    from mlflow.tracking import MlflowClient

    from labelnoise.datasets import load_prepared
    from labelnoise.io import load_json
    from labelnoise.models import load_model
    from labelnoise.noise import load_noisy
    from stages import correct_labels
    from stages.common import PATHS

    cfg = tiny(tiny_base)
    metrics = correct_labels.run(cfg)

    prepared, noisy = load_prepared(PATHS.prepared), load_noisy(PATHS.noisy)
    n, k = prepared.train_idx.size, len(prepared.classes)
    with np.load(PATHS.corrected) as z:
        soft, hard, changed, history = z["soft"], z["hard"], z["changed"], z["hard_history"]
    assert soft.shape == (n, k) and soft.dtype == np.float32 and np.allclose(soft.sum(axis=1), 1, atol=1e-4)
    assert hard.dtype == np.int64 and np.array_equal(hard, soft.argmax(axis=1))
    assert np.array_equal(changed, hard != noisy.labels) and history.shape == (4, n)

    report = load_json(PATHS.correction_report)
    true = prepared.labels[prepared.train_idx]
    rec = report["label_recovery"]
    assert rec["before"] == pytest.approx(float((noisy.labels == true).mean()))
    assert rec["after"] == pytest.approx(float((hard == true).mean()))
    assert rec["residual_noise_rate"] == pytest.approx(1 - rec["after"])
    assert rec["labels_changed"] == int(changed.sum())
    assert rec["after"] > rec["before"]  # the tiny run already corrects labels
    assert (report["label_acc_before"], report["recovered_label_acc"]) == (rec["before"], rec["after"])
    assert set(report["per_class_recovery"]) == set(prepared.classes)
    assert len(report["per_epoch"]["recovery"]) == 4 and len(report["per_epoch"]["labels_changed"]) == 4
    assert {"phase1", "phase2", "total"} <= set(report["timings_seconds"])
    assert metrics["recovered_label_acc"] == pytest.approx(rec["after"])

    final = load_model(PATHS.final_model)
    record = torch.load(PATHS.final_model, weights_only=True)
    assert record["model_name"] == cfg.train.model and record["epoch"] == 3
    assert record["config"]["correction"]["retrain_epochs"] == 3
    from labelnoise.engine import evaluate_accuracy
    x_test = torch.from_numpy(prepared.images[prepared.test_idx])
    y_test = torch.from_numpy(prepared.labels[prepared.test_idx])
    from labelnoise.runtime import resolve_precision

    # as the engine measured it: the recipe's precision (bf16 autocast on a CPU with native bf16), its eval batch
    acc = evaluate_accuracy(final, x_test, y_test, batch_size=cfg.train.eval_batch_size, device="cpu",
                            autocast_dtype=resolve_precision(cfg.train.precision, torch.device("cpu")))["acc"]
    assert acc == pytest.approx(report["final_model"]["test_acc"], abs=1e-6)  # the saved model is the measured one
    assert 1 <= report["final_model"]["best_epoch"] <= 3

    pngs = sorted(p.name for p in Path(PATHS.correction_plots).iterdir())
    assert pngs == ["joint_curves.png", "label_changes.png", "per_class_recovery.png", "retrain_curves.png"]
    assert all((Path(PATHS.correction_plots) / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    assert torch.load(PATHS.correction_ckpt, weights_only=True)["finished"] is True
    assert torch.load(joint_path(Path(PATHS.correction_ckpt)), weights_only=True)["finished"] is True

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir}/mlflow.db")
    exp = client.get_experiment_by_name("test-correction")
    (child,) = client.search_runs([exp.experiment_id], filter_string="tags.`mlflow.runName` = 'correct_labels'")
    assert child.info.status == "FINISHED"
    assert child.data.params["correction.epochs"] == "4" and "train.epochs" not in child.data.params
    run_id = child.info.run_id
    assert [m.step for m in client.get_metric_history(run_id, "joint_labels_changed")] == [1, 2, 3, 4]
    assert [m.step for m in client.get_metric_history(run_id, "retrain_clean_acc")] == [1, 2, 3]
    assert child.data.metrics["recovered_label_acc"] == pytest.approx(rec["after"])
    assert child.data.metrics["final_test_acc"] == pytest.approx(report["final_model"]["test_acc"])
    artifacts = {a.path for a in client.list_artifacts(run_id)} | {
        a.path for a in client.list_artifacts(run_id, "correction")}
    assert "correction.json" in artifacts and "correction/label_changes.png" in artifacts
    parent = client.get_run(child.data.tags["mlflow.parentRunId"])
    assert "recovered_label_acc" in parent.data.metrics


def test_stage_result_does_not_depend_on_the_true_train_labels(workdir: Path, tiny_base: dict[str, Any]) -> None:
    from labelnoise.datasets import Prepared, load_prepared, save_prepared
    from labelnoise.io import load_json
    from stages import correct_labels
    from stages.common import PATHS

    cfg = tiny(tiny_base, init="scratch")
    correct_labels.run(cfg)
    with np.load(PATHS.corrected) as z:
        first = {key: z[key] for key in z.files}
    first_model = torch.load(PATHS.final_model, weights_only=True)["state_dict"]
    first_report = load_json(PATHS.correction_report)

    # Scramble the true labels of the train split (only there: the clean subset and test stay true).
    p = load_prepared(PATHS.prepared)
    labels = p.labels.copy()
    labels[p.train_idx] = np.random.default_rng(0).permutation(labels[p.train_idx])[::-1] % len(p.classes)
    save_prepared(PATHS.prepared, Prepared(images=p.images, labels=labels, train_idx=p.train_idx,
                                           clean_idx=p.clean_idx, val_idx=p.val_idx, test_idx=p.test_idx,
                                           classes=p.classes, dataset=p.dataset))
    shutil.rmtree(Path(PATHS.correction_ckpt).parent)  # train both phases again (a finished phase 1 is reused)
    correct_labels.run(cfg)
    with np.load(PATHS.corrected) as z:
        second = {key: z[key] for key in z.files}
    assert first.keys() == second.keys()
    for key in first:
        assert np.array_equal(first[key], second[key]), key
    assert_same_weights(first_model, torch.load(PATHS.final_model, weights_only=True)["state_dict"])
    # ... while the evaluation, which does read them, changed
    assert load_json(PATHS.correction_report)["label_recovery"]["before"] != first_report["label_recovery"]["before"]


def test_stage_trust_mentor(workdir: Path, tiny_base: dict[str, Any]) -> None:
    from labelnoise.engine import load_weights, save_weights
    from labelnoise.noise import load_noisy
    from stages import correct_labels
    from stages.common import PATHS

    cfg = tiny(tiny_base, trust_mentor=True, trust_threshold=0.5)
    with pytest.raises(ConfigError, match=r"^correction\.trust_mentor: "):  # the student is ce: weights all 1
        correct_labels.run(cfg)
    assert not Path(PATHS.corrected).exists()

    # A student with mentor weights (written here as train_student would for spade)
    weights = load_weights(PATHS.student_weights)
    n = weights["weight"].shape[1]
    v = np.where(np.arange(n) % 3 == 0, 0.95, 0.1).astype(np.float32)
    weights["weight"] = np.stack([np.ones(n, dtype=np.float32), v])
    weights["loss"] = np.stack([weights["loss"][-1]] * 2)
    weights["loss_diff"] = np.full((2, n), np.nan, dtype=np.float32)
    weights["epochs"] = np.array([1, 4])
    save_weights(PATHS.student_weights, {key: weights[key] for key in ("epochs", "loss", "loss_diff", "weight")},
                 method="spade")
    metrics = correct_labels.run(cfg)
    with np.load(PATHS.corrected) as z:
        hard, trusted = z["hard"], z["trusted"]
    assert np.array_equal(trusted, v > 0.5) and metrics["n_trusted"] == trusted.sum()
    assert np.array_equal(hard[trusted], load_noisy(PATHS.noisy).labels[trusted])


def test_no_joint_epochs_labels_are_the_posterior_of_the_students_predictions(workdir: Path,
                                                                               tiny_base: dict[str, Any]) -> None:
    from labelnoise.datasets import load_prepared
    from labelnoise.engine import predict_logits
    from labelnoise.models import load_model
    from labelnoise.noise import load_noisy
    from stages import correct_labels
    from stages.common import PATHS

    Path(PATHS.correction_plots).mkdir(parents=True, exist_ok=True)
    (Path(PATHS.correction_plots) / "joint_curves.png").write_bytes(b"\x89PNG stale")  # an earlier run's figure
    correct_labels.run(tiny(tiny_base, epochs=0, noisy_label_weight=0.3, include_trusted=False))
    prepared, noisy = load_prepared(PATHS.prepared), load_noisy(PATHS.noisy)
    x = torch.from_numpy(prepared.images[prepared.train_idx])
    probs = torch.softmax(predict_logits(load_model(PATHS.student_model), x, batch_size=256, device="cpu"), dim=1)
    expected = correction.noisy_label_posterior(probs, torch.from_numpy(noisy.labels), weight=0.3)
    with np.load(PATHS.corrected) as z:
        np.testing.assert_allclose(z["soft"], expected.numpy(), atol=1e-5)
        assert z["hard_history"].shape == (0, x.shape[0])
    assert sorted(p.name for p in Path(PATHS.correction_plots).iterdir()) == ["per_class_recovery.png",
                                                                               "retrain_curves.png"]


def test_trusted_and_ensemble_teachers(workdir: Path, tiny_base: dict[str, Any]) -> None:
    """teacher trusted: the labels come from a network trained on the trusted subset alone (not the student);
    ensemble: from the mean of its softmax and the student's."""
    from labelnoise.datasets import load_prepared
    from labelnoise.engine import predict_logits
    from labelnoise.io import load_json
    from labelnoise.models import load_model
    from stages import correct_labels
    from stages.common import PATHS

    prepared = load_prepared(PATHS.prepared)
    x = torch.from_numpy(prepared.images[prepared.train_idx])
    student = torch.softmax(predict_logits(load_model(PATHS.student_model), x, batch_size=256, device="cpu"), dim=1)
    soft = {}
    for teacher in ("trusted", "ensemble"):
        correct_labels.run(tiny(tiny_base, epochs=0, noisy_label_weight=0.0, include_trusted=False, teacher=teacher))
        with np.load(PATHS.corrected) as z:
            soft[teacher] = z["soft"]
        assert load_json(PATHS.correction_report)["teacher"] == teacher
    assert np.abs(soft["trusted"] - student.numpy()).max() > 0.1  # another network's predictions
    np.testing.assert_allclose(soft["ensemble"], (soft["trusted"] + student.numpy()) / 2, atol=1e-5)


def test_a_trusted_teacher_needs_no_joint_epochs(workdir: Path, tiny_base: dict[str, Any]) -> None:
    from stages import correct_labels

    with pytest.raises(ValueError, match="correction.teacher: ensemble needs correction.epochs: 0"):
        correct_labels.run(tiny(tiny_base, epochs=2, teacher="ensemble"))
    assert not Path("data/corrected.npz").exists()


def test_the_trusted_teacher_is_the_noise_estimates_networks_and_none_is_trained_again(
        workdir: Path, tiny_base: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The misfit check of stage estimate_noise trained networks on the trusted subset alone: their predictions
    (models/trusted_probs.npz) are the trusted teacher, no network is trained for it (the ledger says what was
    reused); without them the stage trains one on the whole trusted subset."""
    from stages import correct_labels
    from stages.common import PATHS

    ledger = workdir / "ledger.jsonl"
    monkeypatch.setenv("LABELNOISE_LEDGER", str(ledger))
    cfg = tiny(tiny_base, epochs=0, noisy_label_weight=0.0, include_trusted=False, teacher="trusted")
    correct_labels.run(cfg)
    with np.load(PATHS.corrected) as z, np.load(PATHS.trusted_probs) as t:
        np.testing.assert_allclose(z["soft"], t["train"], atol=1e-6)  # weight 0: the labels are the teacher's p
    rows = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert [r["network"] for r in rows if r.get("reused")] == ["label correction: trusted teacher"]
    assert "trusted-only network" not in [r["network"] for r in rows]
    assert not list(Path(PATHS.correction_ckpt).parent.glob("*.teacher.pt"))

    ledger.unlink()
    Path(PATHS.trusted_probs).unlink()  # an estimate without its misfit check: the stage trains its own teacher
    correct_labels.run(cfg)
    rows = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert "trusted-only network" in [r["network"] for r in rows] and not any(r.get("reused") for r in rows)


def test_phase_2_fine_tunes_the_student_or_trains_a_fresh_network(workdir: Path, tiny_base: dict[str, Any],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """correction.retrain_init: student starts phase 2 from the student's weights, scratch from a fresh network
    (seeded); both train correction.retrain_epochs epochs on the corrected labels."""
    from labelnoise.correction.correct import retrain as real
    from labelnoise.engine import module_fingerprint
    from labelnoise.models import load_model
    from stages import correct_labels
    from stages.common import PATHS

    started: list[str] = []

    def spy(model, *args, **kwargs):
        started.append(module_fingerprint(model))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(sys.modules["labelnoise.correction.correct"], "retrain", spy)
    student = module_fingerprint(load_model(PATHS.student_model))
    for init in ("student", "scratch"):
        correct_labels.run(tiny(tiny_base, epochs=0, teacher="student", retrain_init=init))
    assert started[0] == student and started[1] != student


# ----------------------------------------------------------------------------- phase 2, semi-supervised
def test_semi_labelled_takes_the_confident_and_the_kept_labels() -> None:
    from labelnoise.correction.retrain import semi_labelled

    soft = torch.tensor([[0.9, 0.05, 0.05], [0.4, 0.3, 0.3], [0.6, 0.4, 0.0], [0.34, 0.33, 0.33]])
    assert semi_labelled(soft, 0.6).tolist() == [True, False, True, False]
    assert semi_labelled(soft, 0.6, np.array([False, False, False, True])).tolist() == [True, False, True, True]


def test_semi_retrain_learns_from_the_confident_labels_and_the_rest_unlabelled() -> None:
    data = separable_view(n_train=90, noisy=30)
    k = 3
    soft = torch.nn.functional.one_hot(data.y_train, k).float() * 0.9 + 0.1 / k  # confident: the given labels
    soft[:30] = 1.0 / k  # the shifted labels: no confidence, so they train unlabelled
    c, s = configs(retrain_loss="semi", semi_threshold=0.5, retrain_epochs=4, semi_view_augment="none")
    lines: list[str] = []
    final = correction.retrain(new_model(), data, soft, cfg=c, recipe=s, seed=0, log=lines.append)
    assert any("60 of 90 labels used" in line for line in lines)
    assert [row["labelled"] for row in final.history] == pytest.approx([60 / 90] * 4)
    assert final.history[-1]["test_acc"] > 0.9 and final.history[-1]["lu"] >= 0
    again = correction.retrain(new_model(), data, soft, cfg=c, recipe=s, seed=0, log=lines.append)
    assert again.history == final.history  # seeded: views and mixing from the run's own stream


def test_semi_threshold_auto_is_one_minus_the_estimated_rate() -> None:
    from labelnoise import auto

    estimate = auto.NoiseEstimate(rate=0.37, transition=np.eye(3), use="test")
    assert auto.RULES["correction.semi_threshold"].value(estimate, None) == 0.63
    c, s = configs(retrain_loss="semi", semi_threshold="auto")
    with pytest.raises(ValueError, match="correction.semi_threshold: auto is settled"):
        correction.retrain(new_model(), separable_view(), torch.full((60, 3), 1 / 3), cfg=c, recipe=s, seed=0,
                           log=lambda line: None)
