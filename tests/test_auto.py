"""Settings from the noise estimate (labelnoise.auto, issue 20): each rule against the papers' tables, the settling
of exactly the ``auto`` params a run uses, the stage edge without an estimate, and what the settled values drive:
the label posterior under the estimated channel, and the trusted examples' weight 1 in SPADE."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from labelnoise import auto
from labelnoise.config import from_dict, merge, read_yaml
from labelnoise.correction import noisy_label_posterior, one_hot
from labelnoise.mentornet import auto_percentile
from labelnoise.methods.spade import SpadeTask
from labelnoise.noise import NoisyLabels
from labelnoise.views import make_train_view, subset_view, with_trusted
from tests.helpers import split_student
from tests.test_datasets import _prepared

REPO = Path(__file__).resolve().parent.parent


def default_config(**sections):
    return from_dict(merge(read_yaml(REPO / "params.yaml"), split_student(sections) if sections else {}))


def test_the_percentile_rule_is_the_official_dd_table() -> None:
    # official MentorNet DD scripts: p 0.8 / 0.6 / 0.5 at 20 / 40 / 80 % noise
    assert [auto_percentile(r) for r in (0.2, 0.4, 0.8)] == pytest.approx([0.8, 0.6, 0.5])
    assert auto_percentile(0.0) == 0.8 and auto_percentile(0.95) == 0.5 and auto_percentile(0.3) == pytest.approx(0.7)


def test_mentormix_settings_are_the_official_ones_at_the_nearest_level() -> None:
    def settled(key: str, rate: float) -> object:
        return auto.RULES[key].value(auto.NoiseEstimate(rate=rate, transition=np.eye(2), use="confusion"), None)

    alpha, second = "student.mentormix.mixup_alpha", "student.mentormix.second_reweight"
    assert [settled(alpha, r) for r in (0.1, 0.2, 0.45, 0.55, 0.62, 0.75, 0.95)] == [2, 2, 8, 8, 8, 4, 4]
    assert [settled(second, r) for r in (0.2, 0.4, 0.49, 0.6, 0.8)] == [False, False, False, True, True]


def test_every_auto_rule_lives_with_the_code_whose_param_it_settles() -> None:
    owners = {"mentor": "labelnoise.mentornet", "student": "labelnoise.methods.", "correction": "labelnoise.correction"}
    for key, r in auto.RULES.items():
        assert r.value.__module__.startswith(owners[key.split(".")[0]]), key


def test_settle_replaces_exactly_the_auto_params_it_is_given() -> None:
    cfg = default_config()
    keys = auto.auto_keys(cfg, ("mentor", "student", "correction"))
    assert set(keys) == set(auto.RULES)  # the defaults: every rule's param is auto
    assert auto.auto_keys(cfg, ("correction",)) == ["correction.noisy_label_weight", "correction.semi_threshold",
                                                    "correction.teacher"]
    estimate = auto.NoiseEstimate(rate=0.8, transition=np.full((10, 10), 0.1), use="confusion")
    settled, chosen = auto.settle(cfg, estimate, ["mentor.percentile", "student.mentormix.second_reweight"])
    assert settled.mentor.percentile == 0.5 and settled.student.mentormix.second_reweight is True
    assert settled.student.mentormix.mixup_alpha == "auto"  # not asked for: left alone
    assert set(chosen) == {"mentor.percentile", "student.mentormix.second_reweight"}
    fixed = default_config(mentor={"percentile": 0.7})
    assert "mentor.percentile" not in auto.auto_keys(fixed, ("mentor",))  # a number is the user's


def test_a_stage_with_auto_params_and_no_estimate_says_which_and_what_to_do(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from stages import STAGE_PARAMS

    monkeypatch.chdir(tmp_path)
    cfg = default_config()
    with pytest.raises(FileNotFoundError,
                       match=r"correction.noisy_label_weight, correction.semi_threshold, correction.teacher = auto "
                             r".* estimate_noise"):
        auto.settle_stage(cfg, STAGE_PARAMS["correct_labels"], "reports/noise_estimate.json")
    same, chosen, estimate = auto.settle_stage(cfg, STAGE_PARAMS["train_student"], "reports/noise_estimate.json",
                                               used=lambda key: False)  # e.g. ce: no mentor
    assert same is cfg and chosen == {} and estimate is None


def test_label_correction_ignores_the_given_labels_where_the_channel_does_not_explain_them() -> None:
    cfg = default_config()
    keys = ["correction.noisy_label_weight", "correction.teacher"]
    t = np.full((10, 10), 0.1)
    fits = auto.NoiseEstimate(rate=0.4, transition=t, use="confusion", n_trusted=500, class_conditional=True)
    settled, chosen = auto.settle(cfg, fits, keys)
    assert settled.correction.noisy_label_weight == "auto" and settled.correction.teacher == "ensemble"
    misfit = auto.NoiseEstimate(rate=0.05, transition=t, use="confusion", n_trusted=500, class_conditional=False)
    settled, chosen = auto.settle(cfg, misfit, keys)
    assert settled.correction.noisy_label_weight == 0.0 and settled.correction.teacher == "trusted"
    assert chosen["correction.noisy_label_weight"].startswith("0: the given labels ignored")
    no_trusted = auto.NoiseEstimate(rate=0.4, transition=t, use="confident_joint")
    assert auto.settle(cfg, no_trusted, keys)[0].correction.teacher == "student"
    joint = default_config(correction={"epochs": 4})  # phase 1 starts from the student
    assert auto.settle(joint, fits, keys)[0].correction.teacher == "student"
    report = {"rate": 0.05, "transition": t.tolist(), "use": "confusion", "n_trusted": 500,
              "fit": {"distance": 0.18, "class_conditional": False}}
    assert auto.NoiseEstimate.from_report(report).class_conditional is False
    assert auto.NoiseEstimate.from_report({**report, "fit": None}).class_conditional is True  # no check: no doubt


def test_a_stage_settles_only_the_auto_params_under_its_own_entries(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from labelnoise.io import save_json
    from stages import STAGE_PARAMS

    monkeypatch.chdir(tmp_path)
    save_json("estimate.json", {"rate": 0.8, "transition": np.eye(10).tolist(), "use": "confusion", "n_trusted": 50})
    # correct_labels reads `trusted` (its trusted teacher's budget), not student.mentormix
    _, chosen, _ = auto.settle_stage(default_config(), STAGE_PARAMS["correct_labels"], "estimate.json")
    assert set(chosen) == {"correction.noisy_label_weight", "correction.semi_threshold", "correction.teacher"}


def test_the_label_posterior_is_bayes_under_the_channel() -> None:
    g = torch.Generator().manual_seed(0)
    s = torch.softmax(torch.randn(50, 4, generator=g), dim=1)  # (N, C) the network's averaged prediction
    noisy = torch.randint(0, 4, (50,), generator=g)
    t = torch.distributions.Dirichlet(torch.ones(4, 4)).sample()  # a row-stochastic channel
    post = noisy_label_posterior(s, noisy, weight=0.0, transition=t)
    expected = s * t[:, noisy].T
    torch.testing.assert_close(post, expected / expected.sum(dim=1, keepdim=True))
    # a number w is the symmetric channel w·I + (1 − w)/C
    w = 0.3
    sym = w * torch.eye(4) + (1 - w) / 4
    torch.testing.assert_close(noisy_label_posterior(s, noisy, weight=w),
                               noisy_label_posterior(s, noisy, weight=0.0, transition=sym))
    # a channel that never changes labels gives back the noisy labels
    torch.testing.assert_close(noisy_label_posterior(s, noisy, weight=0.0, transition=torch.eye(4)),
                               one_hot(noisy, 4))


class HalfMentor(nn.Module):
    def forward(self, loss, loss_diff, label, progress):  # (B,) each → v = 0.5 for everyone
        return torch.full_like(loss, 0.5)


def test_spade_weighs_the_trusted_examples_one() -> None:
    cfg = default_config(mentor={"percentile": 0.6},
                         student={"method": "spade", "burn_in": 0.0, "precision": "fp32", "channels_last": "off"})
    task = SpadeTask(HalfMentor(), cfg=cfg.student.spade, recipe=cfg.train, mentor_cfg=cfg.mentor, total_steps=10,
                     steps_per_epoch=5, device=torch.device("cpu"), seed=0, num_classes=3, n_noisy=6)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 3, (8,))
    out = task(model, x, y, step=5, idx=torch.tensor([0, 7, 2, 6, 5, 1, 3, 4]))
    assert out["weight"].tolist() == [0.5, 1.0, 0.5, 1.0, 0.5, 0.5, 0.5, 0.5]  # positions 6, 7 are trusted


def test_with_trusted_appends_once_and_subsets_keep_them_last() -> None:
    p = _prepared()
    view = make_train_view(p, NoisyLabels(p.labels[p.train_idx], np.zeros(len(p.train_idx), dtype=bool)))
    both = with_trusted(view)
    n, m = view.x_train.shape[0], view.x_clean.shape[0]
    assert both.n_noisy == n and both.trusted_in_train == m and with_trusted(both) is both
    assert torch.equal(both.y_train[n:], view.y_clean)
    part = subset_view(both, np.array([0, 2, n, n + m - 1]))
    assert part.n_noisy == 2 and part.trusted_in_train == 2
    with pytest.raises(ValueError, match="ascending"):
        subset_view(both, np.array([2, 0]))
