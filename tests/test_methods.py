"""The method registry: every method's facts, the table names, refusals, and a throw-away method that trains through
the engine from its registry entry alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labelnoise import engine
from labelnoise.methods import (
    Method,
    MethodContext,
    display_name,
    get_method,
    label_scores,
    method_names,
    register,
    table_names,
    unregister,
)
from tests.test_spade import config, new_mentor, new_model, noisy_view

pytestmark = pytest.mark.usefixtures("one_thread")


def test_shipped_methods_and_their_facts() -> None:
    # table order: baselines first (the trusted-data ones right after CE)
    assert method_names() == ["ce", "clean_only", "ce_then_finetune", "glc", "cleanlab", "spade", "mentormix", "elr",
                              "dividemix"]
    facts = {m: (get_method(m).uses_mentor, get_method(m).scores_labels) for m in method_names()}
    assert facts == {"ce": (False, False), "clean_only": (False, False), "ce_then_finetune": (False, False),
                     "glc": (False, True), "cleanlab": (False, True), "spade": (True, True), "mentormix": (True, True),
                     "elr": (False, True), "dividemix": (False, True)}
    assert table_names() == ["CE", "Clean only", "CE + fine-tune", "GLC", "Cleanlab", "SPADE-PD", "SPADE-DD",
                             "MentorMix-PD", "MentorMix-DD", "ELR", "DivideMix"]
    assert display_name("spade", "dd") == "SPADE-DD" and display_name("ce", "dd") == "CE"
    assert display_name("retired", "dd") == "retired"  # a run of a method no longer registered keeps its name


def test_label_scores_are_the_last_epochs_scores_of_a_method_that_scores_labels() -> None:
    weights = {"epochs": np.array([1, 2]), "weight": np.array([[0.1, 0.9, np.nan], [0.2, 0.8, 0.5]])}
    np.testing.assert_array_equal(label_scores("spade", weights), [0.2, 0.8, 0.5])
    assert label_scores("ce", weights) is None  # ce scores no label (its weights are all ones)
    assert label_scores("retired", weights) is None  # a method no longer registered
    assert label_scores("cleanlab", {"epochs": np.array([]), "weight": np.zeros((0, 3))}) is None  # nothing recorded


def test_unknown_method_and_bad_registrations_are_refused() -> None:
    known = "ce, clean_only, ce_then_finetune, glc, cleanlab, spade, mentormix, elr, dividemix"
    with pytest.raises(ValueError, match=rf"unknown method 'coteaching' \(known: {known}\)"):
        get_method("coteaching")
    with pytest.raises(ValueError, match="registered twice"):
        register(Method(name="ce", display="CE again", summary="", task=lambda ctx: engine.Task()))
    with pytest.raises(ValueError, match="exactly one of task and train"):
        register(Method(name="neither", display="N", summary=""))


def _context(method: str, **student: object) -> MethodContext:
    cfg = config({"method": method, "epochs": 2, **student})
    data, _, _ = noisy_view(rate=0.3)
    return MethodContext(name=method, params=get_method(method).settings(cfg.student), recipe=cfg.train, data=data,
                         model=new_model(), new_model=new_model, seed=0, device=torch.device("cpu"),
                         mentor=new_mentor(cfg), mentor_cfg=cfg.mentor, log=lambda line: None)


@pytest.mark.parametrize("name", ["ce", "spade", "mentormix", "elr"])
def test_each_task_method_builds_an_engine_task(name: str) -> None:
    settled = {"mentormix": {"mixup_alpha": 2.0, "second_reweight": False},  # auto: stage-settled
               "elr": {"beta": 0.7, "lam": 3.0}}.get(name, {})
    task = get_method(name).task(_context(name, **settled))
    assert isinstance(task, engine.Task) and task.weighted == (name != "ce")


def test_a_mentor_method_without_a_mentor_says_what_to_run() -> None:
    ctx = _context("spade")
    ctx.mentor = None
    with pytest.raises(ValueError, match="needs a mentor .run stage pretrain_mentor first"):
        get_method("spade").run(ctx)


class GeneralizedCE(engine.Task):
    """A throw-away method (generalized cross-entropy, Zhang & Sabuncu 2018): (1 - p_y^q) / q."""

    def __call__(self, model, xb, yb, *, step, idx=None):
        logits = model(xb).float()
        p = F.softmax(logits, dim=1).gather(1, yb[:, None]).squeeze(1).clamp_min(1e-7)
        per_example = (1 - p**0.7) / 0.7
        return {"loss": per_example.mean(), "logits": logits, "per_example": per_example.detach()}


def test_a_registered_method_trains_through_the_engine_from_its_entry_alone() -> None:
    register(Method(name="gce_test", display="GCE", summary="generalized cross-entropy",
                    task=lambda ctx: GeneralizedCE()))
    try:
        ctx = _context("ce")
        result = get_method("gce_test").run(ctx)
        assert len(result.fit.history) == 2 and result.fit.history[-1]["clean_acc"] > 1 / 3
        assert "gce_test" in method_names() and "GCE" in table_names()
    finally:
        unregister("gce_test")
    assert "gce_test" not in method_names()
