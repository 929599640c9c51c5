"""MentorNet library: curricula against hand values, the moving percentile against numpy, the network,
PD and DD fitting, feature collection, save/load."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from labelnoise import mentornet as mn
from labelnoise.config import MentorConfig, from_dict, merge, read_yaml
from tests.helpers import split_student

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def mentor_cfg(**overrides: Any) -> MentorConfig:
    return from_dict(merge(read_yaml(REPO / "params.yaml"), {"mentor": overrides})).mentor


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


# ----------------------------------------------------------------------------- curricula
def test_self_paced_and_linear_hand_values() -> None:
    diff = t(-2.0, -0.1, 0.0, 0.1, 0.5, 1.0, 3.0)
    assert mn.self_paced(diff).tolist() == [1, 1, 1, 0, 0, 0, 0]
    # clip(1 - diff / gamma, 0, 1) with gamma = 2: clipped at 1 below 0 and at 0 above gamma
    assert mn.linear(diff, gamma=2.0).tolist() == pytest.approx([1.0, 1.0, 1.0, 0.95, 0.75, 0.5, 0.0])


def test_mixture_hard_and_soft() -> None:
    loss = t(0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
    assert mn.mixture(loss, lambda1=1.0, lambda2=0.0).tolist() == [1, 1, 1, 0, 0, 0]
    # lambda2 = 2: 1 up to lambda1, then down linearly to 0 at lambda1 + lambda2
    assert mn.mixture(loss, lambda1=1.0, lambda2=2.0).tolist() == pytest.approx([1.0, 1.0, 1.0, 0.75, 0.5, 0.0])


def test_focal_hand_values() -> None:
    loss = t(0.0, 1.0, 2.0)
    expected = [(1 - np.exp(-x)) ** 2 for x in (0.0, 1.0, 2.0)]
    assert mn.focal(loss, gamma=2.0).tolist() == pytest.approx(expected, rel=1e-6)
    assert mn.focal(loss, gamma=0.0).tolist() == [1.0, 1.0, 1.0]


def test_official_pd_phases() -> None:
    diff = t(-1.0, 0.5, 2.0)
    kw = dict(burn_in=0.18, linear_from=0.9, gamma=1.0)
    at = {p: mn.official_pd(torch.zeros(3), diff, torch.full((3,), p), **kw).tolist()
          for p in (0, 17, 18, 50, 89, 90, 99)}
    assert at[0] == at[17] == [1.0, 1.0, 1.0]  # burn-in: everything counts
    assert at[18] == at[50] == at[89] == [1.0, 0.0, 0.0]  # self-paced threshold at l_pt
    assert at[90] == at[99] == pytest.approx([1.0, 0.5, 0.0])  # linear: clip(1 - diff / gamma)


def test_curriculum_dispatch_uses_config_constants() -> None:
    cfg = mentor_cfg(gamma=2.0, lambda1=0.5, lambda2=0.0, focal_gamma=1.0, pd_burn_in=0.5, pd_linear_from=0.8)
    loss, diff, prog = t(0.4, 1.0), t(-1.0, 1.0), torch.tensor([10, 85])
    assert mn.curriculum("self_paced", cfg)(loss, diff, prog).tolist() == [1.0, 0.0]
    assert mn.curriculum("linear", cfg)(loss, diff, prog).tolist() == [1.0, 0.5]
    assert mn.curriculum("mixture", cfg)(loss, diff, prog).tolist() == [1.0, 0.0]
    assert mn.curriculum("official_pd", cfg)(loss, diff, prog).tolist() == [1.0, 0.5]  # burn-in, then linear
    assert mn.curriculum("focal", cfg)(loss, diff, prog).tolist() == pytest.approx([1 - np.exp(-0.4), 1 - np.exp(-1)])
    with pytest.raises(ValueError, match="mentor.curriculum"):
        mn.curriculum("nope", cfg)


# ----------------------------------------------------------------------------- moving percentile
def test_moving_percentile_matches_numpy_ema() -> None:
    rng = np.random.default_rng(0)
    p, decay = 0.7, 0.9
    mp = mn.MovingPercentile(p, decay)
    assert mp.value == 0.0  # starts at 0, no bias correction
    avg = 0.0
    for size in (7, 128, 1, 33, 128, 2):
        batch = rng.exponential(2.0, size=size)
        avg = decay * avg + (1 - decay) * np.quantile(batch, p)  # numpy's default: linear interpolation
        out = mp.update(torch.tensor(batch, dtype=torch.float32, requires_grad=True))
        assert out.shape == () and not out.requires_grad
        assert out.item() == pytest.approx(avg, rel=1e-5)
        assert mp.value == pytest.approx(avg, rel=1e-5)
    state = mp.state_dict()
    other = mn.MovingPercentile(0.5, 0.5)
    other.load_state_dict(state)
    assert (other.p, other.decay, other.value) == (p, decay, pytest.approx(avg, rel=1e-5))
    with pytest.raises(ValueError):
        mp.update(torch.empty(0))


def test_class_percentile_keeps_one_ema_per_label() -> None:
    rng = np.random.default_rng(1)
    p, decay, k = 0.3, 0.8, 4
    mp = mn.MovingPercentile(p, decay, num_classes=k)
    expected = np.zeros(k)
    for size in (40, 9, 64):
        losses = rng.exponential(1.0, size=size) + rng.integers(0, k, size=size)  # classes differ in level
        labels = rng.integers(0, 3, size=size)  # class 3 never appears: its value stays 0
        for c in np.unique(labels):
            expected[c] = decay * expected[c] + (1 - decay) * np.quantile(losses[labels == c], p)
        out = mp.update(torch.tensor(losses, dtype=torch.float32), torch.from_numpy(labels))
        assert out.shape == (size,)  # each example gets its own label's l_pt
        np.testing.assert_allclose(out.numpy(), expected[labels], rtol=1e-5)
    assert expected[3] == 0.0 and mp.value == pytest.approx(expected.mean(), rel=1e-5)
    other = mn.MovingPercentile(0.5, 0.5)
    other.load_state_dict(mp.state_dict())  # resumes per class
    labels = torch.tensor([0, 1, 2, 3])
    assert torch.equal(other.update(torch.ones(4), labels), mp.update(torch.ones(4), labels))
    with pytest.raises(ValueError, match="one label per loss"):
        mp.update(torch.ones(3))


def test_progress_percent() -> None:
    assert [mn.progress_percent(s, 200) for s in (0, 1, 2, 199, 200, 500, -3)] == [0, 0, 1, 99, 99, 99, 0]
    assert mn.progress_percent(33, 100) == 33
    with pytest.raises(ValueError):
        mn.progress_percent(0, 0)


# ----------------------------------------------------------------------------- network
def new_mentor(cfg: MentorConfig | None = None, k: int = 10, seed: int = 0) -> mn.MentorNet:
    torch.manual_seed(seed)
    return mn.MentorNet.from_config(cfg or mentor_cfg(), num_classes=k)


def test_mentornet_shape_range_and_inputs_matter() -> None:
    mentor = new_mentor()
    n = 64
    g = torch.Generator().manual_seed(0)
    loss = torch.rand(n, generator=g) * 5
    diff = loss - 1.5
    label = torch.randint(10, (n,), generator=g)
    progress = torch.randint(100, (n,), generator=g)
    v = mentor(loss, diff, label, progress)
    assert v.shape == (n,) and v.dtype == torch.float32
    assert ((v > 0) & (v < 1)).all()
    assert not torch.allclose(v, mentor(loss, diff, (label + 1) % 10, progress))  # depends on the label
    assert not torch.allclose(v, mentor(loss, diff, label, (progress + 37) % 100))  # and on the progress
    # progress beyond 99 is clipped (official: the epoch feature stops at 99)
    last, beyond = torch.full((n,), 99), torch.full((n,), 250)
    assert torch.equal(mentor(loss, diff, label, last), mentor(loss, diff, label, beyond))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert mentor(loss, diff, label, progress).dtype == torch.float32  # float32 under autocast


def test_label_input_none_reads_every_label_as_one_constant() -> None:
    """mentor.label_input: none (the official code's students feed label 0): the weight does not depend on the
    label."""
    mentor = new_mentor(mentor_cfg(label_input="none"))
    g = torch.Generator().manual_seed(1)
    loss, label = torch.rand(32, generator=g) * 4, torch.randint(10, (32,), generator=g)
    progress = torch.full((32,), 30)
    v = mentor(loss, loss - 1.0, label, progress)
    assert torch.equal(v, mentor(loss, loss - 1.0, (label + 3) % 10, progress))
    assert torch.equal(v, mentor(loss, loss - 1.0, torch.zeros_like(label), progress))


def test_mentornet_architecture_is_the_official_one() -> None:
    cfg = mentor_cfg(label_dim=2, epoch_dim=5, hidden=20, epoch_embedding_trainable=False)
    mentor = new_mentor(cfg, k=3)
    assert mentor.label_embedding.weight.shape == (3, 2)
    assert mentor.epoch_embedding.weight.shape == (100, 5)
    assert not mentor.epoch_embedding.weight.requires_grad  # official: a fixed random table
    assert mentor.fc1.in_features == 2 + 5 + 2  # [label_emb, epoch_emb, c_fw, c_bw]
    assert mentor.fc1.out_features == 20
    trainable = new_mentor(dataclasses.replace(cfg, epoch_embedding_trainable=True), k=3)
    assert trainable.epoch_embedding.weight.requires_grad


def test_lstm_cell_state_equals_torch_lstm() -> None:
    """The one-step cell state c equals that of torch's 1-unit bidirectional LSTM with the same gates."""
    torch.manual_seed(0)
    ours = mn._OneStepBiLSTMCellState(2)
    nn.init.normal_(ours.gates.bias)
    ref = nn.LSTM(2, 1, bidirectional=True, batch_first=True)
    w, b = ours.gates.weight.detach(), ours.gates.bias.detach()  # rows i_fw, g_fw, i_bw, g_bw
    with torch.no_grad():
        for suffix, (i, g) in (("", (0, 1)), ("_reverse", (2, 3))):
            w_ih = torch.randn(4, 2)  # torch's gate order: i, f, g, o (f and o cannot change c from c0 = 0)
            w_ih[0], w_ih[2] = w[i], w[g]
            bias = torch.randn(4)
            bias[0], bias[2] = b[i], b[g]
            getattr(ref, f"weight_ih_l0{suffix}").copy_(w_ih)
            getattr(ref, f"bias_ih_l0{suffix}").copy_(bias)
            getattr(ref, f"bias_hh_l0{suffix}").zero_()
    x = torch.randn(16, 2) * 3
    _, (_, c_n) = ref(x[:, None, :])  # c_n: (2 directions, B, 1)
    assert torch.allclose(ours(x), c_n[:, :, 0].T, atol=1e-6)


# ----------------------------------------------------------------------------- pd
@pytest.mark.parametrize("name", ["official_pd", "self_paced"])
def test_pd_fit_follows_the_curriculum(name: str) -> None:
    cfg = mentor_cfg(curriculum=name, grid_size=20000, fit_steps=1500, fit_lr=0.1, fit_batch_size=256)
    g = torch.Generator().manual_seed(0)
    grid = mn.pd_grid(cfg, num_classes=10, generator=g)
    assert len(grid) == 20000
    assert grid.loss.min() >= 0 and grid.loss.max() <= 29 and grid.loss_diff.abs().max() <= 5
    assert grid.progress.min() >= 0 and grid.progress.max() <= 99 and grid.label.max() <= 9
    assert torch.equal(grid.target, mn.curriculum(name, cfg)(grid.loss, grid.loss_diff, grid.progress))
    held = mn.split_examples(len(grid), holdout=0.2, generator=g)
    mentor = new_mentor(cfg)
    before = mn.mean_abs_error(mentor, grid.select(held))
    stats = mn.fit_mentor(mentor, grid.select(~held), cfg=cfg, generator=g,
                          loss="mse" if name == "official_pd" else "bce")
    assert stats["loss_last"] < stats["loss_first"]
    assert stats["lr_last"] == pytest.approx(0.1 * cfg.fit_lr_decay ** (1500 // cfg.fit_lr_decay_steps))
    after = mn.mean_abs_error(mentor, grid.select(held))
    assert after < 0.05 < before


def test_pd_grid_and_fit_are_deterministic() -> None:
    cfg = mentor_cfg(grid_size=500, fit_steps=30, fit_batch_size=32)
    a, b = (mn.pd_grid(cfg, num_classes=4, generator=torch.Generator().manual_seed(5)) for _ in range(2))
    assert all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("loss", "loss_diff", "label", "progress", "target"))
    m1, m2 = new_mentor(cfg, k=4), new_mentor(cfg, k=4)
    mn.fit_mentor(m1, a, cfg=cfg, generator=torch.Generator().manual_seed(1), loss="mse")
    mn.fit_mentor(m2, b, cfg=cfg, generator=torch.Generator().manual_seed(1), loss="mse")
    for (k1, v1), (_, v2) in zip(m1.state_dict().items(), m2.state_dict().items(), strict=True):
        assert torch.equal(v1, v2), k1
    with pytest.raises(ValueError, match="grid_size"):
        mn.pd_grid(dataclasses.replace(cfg, grid_size=10**7), num_classes=4, generator=torch.Generator())


def test_fixed_epoch_embedding_is_not_trained() -> None:
    cfg = mentor_cfg(grid_size=500, fit_steps=20, fit_batch_size=32)
    grid = mn.pd_grid(cfg, num_classes=4, generator=torch.Generator().manual_seed(0))
    mentor = new_mentor(cfg, k=4)
    table = mentor.epoch_embedding.weight.detach().clone()
    fc = mentor.fc1.weight.detach().clone()
    mn.fit_mentor(mentor, grid, cfg=cfg, generator=torch.Generator().manual_seed(0), loss="mse")
    assert torch.equal(mentor.epoch_embedding.weight, table)
    assert not torch.equal(mentor.fc1.weight, fc)


# ----------------------------------------------------------------------------- dd
def synthetic_dd(n: int = 3000, seed: int = 0) -> tuple[mn.MentorFeatures, torch.Tensor]:
    """Rows of 600 examples x 5 epochs; corrupted examples have a higher loss, more so later in training."""
    g = torch.Generator().manual_seed(seed)
    n_ex, epochs = n // 5, 5
    bad = torch.rand(n_ex, generator=g) < 0.4  # (n_ex,)
    example = torch.arange(n_ex).repeat(epochs)
    epoch = torch.arange(epochs).repeat_interleave(n_ex)
    loss = torch.rand(n, generator=g).mul(0.8) + bad[example] * (0.5 + 0.4 * epoch) + 0.2
    lpt = torch.quantile(loss, 0.7)
    feats = mn.MentorFeatures(loss=loss, loss_diff=loss - lpt, label=torch.randint(10, (n,), generator=g),
                              progress=epoch * 20 + torch.randint(20, (n,), generator=g),
                              target=(~bad[example]).float())
    return feats, example


def test_dd_fit_detects_corrupted_examples() -> None:
    cfg = mentor_cfg(fit_steps=300, fit_lr=0.03, fit_batch_size=128)
    feats, example = synthetic_dd()
    held = mn.split_examples(int(example.max()) + 1, holdout=0.25, generator=torch.Generator().manual_seed(1))[example]
    mentor = new_mentor(cfg)
    mn.fit_mentor(mentor, feats.select(~held), cfg=cfg, generator=torch.Generator().manual_seed(2), loss="bce")
    assert mn.detection_auroc(mentor, feats.select(held)) > 0.8


def test_features_cat_select_and_validation() -> None:
    feats, _ = synthetic_dd(100)
    both = mn.MentorFeatures.cat([feats, feats.select(torch.arange(10))])
    assert len(both) == 110 and torch.equal(both.loss[100:], feats.loss[:10])
    with pytest.raises(ValueError, match="label"):
        mn.MentorFeatures(loss=torch.zeros(3), loss_diff=torch.zeros(3), label=torch.zeros(2, dtype=torch.int64),
                          progress=torch.zeros(3, dtype=torch.int64), target=torch.zeros(3))


class _FixedLogits(nn.Module):
    """A 'model' whose logits are looked up by the image's first pixel (an index)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x[:, 0, 0, 0].long()]


def test_collect_features_losses_percentile_and_targets() -> None:
    n, k = 37, 4
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(n, k, generator=g)
    x = torch.zeros(n, 1, 2, 2, dtype=torch.uint8)
    x[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    y = torch.randint(k, (n,), generator=g)
    correct = torch.rand(n, generator=g) < 0.6
    model = _FixedLogits(logits).train()
    mp = mn.MovingPercentile(0.75, 0.5)
    feats = mn.collect_features(model, x, y, correct, percentile=mp, progress=42, batch_size=10,
                                device=torch.device("cpu"))
    assert model.training  # the caller's mode is restored
    expected = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    assert torch.allclose(feats.loss, expected, atol=1e-6)
    assert torch.equal(feats.target, correct.float()) and torch.equal(feats.label, y)
    assert feats.progress.tolist() == [42] * n
    # sequential batches: l_pt follows the EMA over batches [0:10], [10:20], ...
    avg, lpt = 0.0, torch.empty(n)
    for s in range(0, n, 10):
        avg = 0.5 * avg + 0.5 * float(np.quantile(expected[s:s + 10].numpy(), 0.75))
        lpt[s:s + 10] = avg
    assert torch.allclose(feats.loss_diff, expected - lpt, atol=1e-5)
    assert mp.value == pytest.approx(avg, rel=1e-5)
    # with a generator: another batch order, same rows in the order of x
    shuffled = mn.collect_features(model, x, y, correct, percentile=mn.MovingPercentile(0.75, 0.5), progress=3,
                                   batch_size=10, device=torch.device("cpu"),
                                   generator=torch.Generator().manual_seed(1))
    assert torch.allclose(shuffled.loss, expected, atol=1e-6)
    assert not torch.allclose(shuffled.loss_diff, feats.loss_diff)


def test_record_training_features_covers_every_progress() -> None:
    from labelnoise.models import create_model

    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    x = torch.randint(0, 60, (60, 1, 8, 8), generator=g)
    for c in range(3):  # class c lights up rows 2c, 2c+1: easy to learn
        x[y == c, :, 2 * c : 2 * c + 2, :] += 180
    x = x.clamp(0, 255).to(torch.uint8)
    correct = torch.rand(60, generator=g) < 0.7
    raw = merge(read_yaml(REPO / "params.yaml"), split_student({"student": {
        "epochs": 4, "batch_size": 16, "lr": 0.05, "schedule": "cosine", "precision": "fp32", "channels_last": "off"}}))
    cfg = from_dict(raw).train
    torch.manual_seed(0)
    model = create_model("cnn", num_classes=3, in_channels=1, image_size=8, mean=[0.3], std=[0.3])
    rec = mn.record_training_features(model, x, y, correct, recipe=cfg,
                                      percentile=mn.MovingPercentile(0.7, 0.9), dataset="digits",
                                      device=torch.device("cpu"), generator=torch.Generator().manual_seed(0))
    assert len(rec.features) == 240 and rec.example.tolist() == list(range(60)) * 4
    assert rec.epoch.tolist() == sum(([e] * 60 for e in range(1, 5)), [])
    assert torch.equal(rec.features.target, correct.float().repeat(4))
    # 4 steps per epoch reach only percents 0, 6, 12, 18, 25, ...: the ranges still cover 0..99
    assert [(r["progress_lo"], r["progress_hi"]) for r in rec.history] == [(0, 24), (25, 49), (50, 74), (75, 99)]
    for r in rec.history:  # each epoch's rows spread over its percents
        p = rec.features.progress[rec.epoch == r["epoch"]]
        assert p.min() >= r["progress_lo"] and p.max() <= r["progress_hi"]
    assert rec.history[-1]["train_loss"] < rec.history[0]["train_loss"]


# ----------------------------------------------------------------------------- files
def test_save_load_round_trip(tmp_path: Path) -> None:
    cfg = mentor_cfg(hidden=7, epoch_dim=3)
    mentor = new_mentor(cfg, k=5)
    path = mn.save_mentor(tmp_path / "m" / "mentor.pt", mentor, cfg=cfg, num_classes=5, info={"auroc": 0.9})
    loaded = mn.load_mentor(path)
    assert not loaded.training and loaded.num_classes == 5
    for (k1, v1), (_, v2) in zip(mentor.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(v1, v2), k1
    x = (t(0.5, 2.0), t(-0.5, 1.0), torch.tensor([0, 4]), torch.tensor([3, 97]))
    assert torch.equal(mentor(*x), loaded(*x))
    assert not loaded.epoch_embedding.weight.requires_grad
    record = torch.load(path, weights_only=True)
    assert record["config"]["hidden"] == 7 and record["info"] == {"auroc": 0.9}
    assert [p.name for p in path.parent.iterdir()] == ["mentor.pt"]  # no temp file left


def test_load_mentor_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="pretrain_mentor"):
        mn.load_mentor(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt is corrupt or unreadable .*pretrain_mentor"):
        mn.load_mentor(bad)
    torch.save({"state_dict": {}, "config": {}}, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="not a valid MentorNet file"):
        mn.load_mentor(tmp_path / "partial.pt")


def test_weight_map_shape() -> None:
    mentor = new_mentor(k=3)
    m = mn.weight_map(mentor, loss=torch.linspace(0, 5, 7), loss_diff=torch.linspace(-2, 2, 4), progress=50)
    assert m.shape == (4, 7) and ((m > 0) & (m < 1)).all()
    one = mn.weight_map(mentor, loss=torch.linspace(0, 5, 7), loss_diff=torch.linspace(-2, 2, 4), progress=50, label=1)
    assert one.shape == (4, 7)


def test_weight_rise_is_zero_for_a_curriculum_and_measures_a_band() -> None:
    """weight_rise: how far v climbs as the loss grows; 0 for a weight that never rises with the loss (self-paced),
    the band's height above the low losses for a mentor that prefers losses near l_pt to lower ones."""

    class Fixed(mn.MentorNet):
        def __init__(self, fn) -> None:
            super().__init__(num_classes=2, label_dim=2, epoch_dim=5, hidden=4, epoch_embedding_trainable=False)
            self.fn = fn

        def forward(self, loss, loss_diff, label, progress):
            return self.fn(loss, loss_diff)

    loss = torch.linspace(0.0, 4.0, 81)
    self_paced = Fixed(lambda loss, diff: (diff < 0).float())
    assert mn.weight_rise(self_paced, loss=loss, l_pt=2.0) == 0.0
    band = Fixed(lambda loss, diff: 0.15 + 0.15 * (diff.abs() < 0.2).float())  # 0.3 near l_pt, 0.15 elsewhere
    assert mn.weight_rise(band, loss=loss, l_pt=2.0) == pytest.approx(0.15)
    assert mn.weight_rise(band, loss=loss.flip(0), l_pt=2.0) == pytest.approx(0.15)  # the losses' order is its own
