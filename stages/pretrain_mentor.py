"""Stage `pretrain_mentor`: learn the MentorNet that stage `train_student` uses (methods spade and mentormix), with
:mod:`labelnoise.mentornet.pretrain`: ``mentor.kind: pd`` fits it to a predefined curriculum, ``dd`` learns it from
the trusted clean subset (never the train pool's labels).

A student whose method uses no mentor (``student.method``: the registry says so) gets a record of no mentor instead:
nothing is trained, no MLflow run is opened, and the record's bytes do not depend on the mentor params, so a change
to them leaves that student's stage up to date. The mentor's record carries its settled params (the ``auto`` ones
from the noise estimate) and the channel its DD copy was corrupted with: the student reads no mentor param itself.

Inputs: PATHS.prepared (DD: the clean subset's images and labels; PD: the class count), PATHS.noisy (DD with
``dd_noise_kind: auto``: the noise source's own labels of the trusted examples, where it has them),
PATHS.noise_estimate (the ``auto`` params). Outputs: PATHS.mentor_model, PATHS.mentor_report (JSON), PNGs in the
folder PATHS.mentor_plots.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from labelnoise import distributed, runtime
from labelnoise import mentornet as mn
from labelnoise.auto import settle_stage
from labelnoise.config import Config
from labelnoise.datasets import load_prepared
from labelnoise.io import keep_only, save_json
from labelnoise.mentornet.pretrain import check
from labelnoise.methods import get_method
from labelnoise.noise import load_noisy
from labelnoise.steps import mentor as step
from stages.common import PATHS, STAGE_PARAMS, require, setup, stage_run

# Report entries logged as MLflow metrics (the rest of the report are settings and counts).
METRICS = ("mae_train", "mae_holdout", "auroc", "auroc_loss", "auroc_last_epoch", "auroc_loss_last_epoch",
           "fit_auroc", "weight_rise", "dd_realised_rate", "fit_loss_first", "fit_loss_last", "n_rows", "time_s")


def run(cfg: Config) -> dict[str, Any]:
    """Fit the mentor of params ``mentor``; write PATHS.mentor_model, PATHS.mentor_report, PATHS.mentor_plots."""
    require(PATHS.prepared)
    folder = Path(PATHS.mentor_plots)
    if not get_method(cfg.student.method).uses_mentor:
        mn.save_no_mentor(PATHS.mentor_model)
        save_json(PATHS.mentor_report, {"kind": None, "note": mn.NO_MENTOR})
        folder.mkdir(parents=True, exist_ok=True)
        keep_only(folder, [])  # the folder is this stage's: no mentor, no figure
        return {}
    prepared = load_prepared(PATHS.prepared)
    check(cfg.mentor, prepared)  # bad params fail here: no run opened, nothing written
    # every auto mentor param the student will use; a PD mentor has no corrupted copy
    cfg, chosen, estimate = settle_stage(cfg, STAGE_PARAMS["pretrain_mentor"], PATHS.noise_estimate,
                                         used=step.mentor_uses(cfg))
    setup(cfg)
    t0 = time.perf_counter()
    given = load_noisy(PATHS.noisy).trusted if cfg.mentor.kind == "dd" and cfg.mentor.dd_noise_kind == "auto" else None
    result = step.pretrain_mentor(cfg, prepared, estimate=estimate, given=given)
    report = {"dataset": prepared.dataset, **result.report, "auto": chosen,
              "device": str(runtime.resolve_device(cfg.base.device)), "time_s": round(time.perf_counter() - t0, 2)}
    if not distributed.is_main():  # torchrun: rank 0 writes the outputs
        return {}

    with stage_run("pretrain_mentor", cfg) as tracked:
        tracked.set_tags({"mentor": cfg.mentor.kind, **({"mentor_fallback": "symmetric copy"}
                                                         if "fallback_from" in report else {})})
        mn.save_mentor(PATHS.mentor_model, result.mentor, cfg=result.config or cfg.mentor,
                       num_classes=result.num_classes,
                       info={k: v for k, v in report.items() if k not in ("per_epoch", "time_s")},  # same bytes
                       dd_transition=result.dd_transition)
        written = [result.plot(folder)]
        keep_only(folder, written)  # a figure of the other kind goes
        save_json(PATHS.mentor_report, report)
        for row in report.get("per_epoch", []):
            tracked.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
        metrics = {k: float(report[k]) for k in METRICS if k in report and math.isfinite(report[k])}
        tracked.log_metrics(metrics)
        tracked.log_artifact(PATHS.mentor_report)
        for png in written:
            tracked.log_artifact(png, "mentor")
    return metrics
