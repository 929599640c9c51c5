"""Stage `evaluate`: test accuracy of the student and of the label-corrected model, noise summary, noise detection,
the label-issues table and the figures → reports/ (the measures: :mod:`labelnoise.evaluation`).

Reports three test numbers, never choosing anything on test data: the student's final model (`test_acc`), the
student checkpoint the training stage selected by clean-subset accuracy (`test_acc_best_clean`), and the network
stage correct_labels retrained on the corrected labels (PATHS.final_model, `corrected_test_acc`, predicted here
exactly like the student; its label recovery `label_acc_before` / `recovered_label_acc` is copied from
PATHS.correction_report). The corruption mask and the true train labels are read here only (the evaluation path).
What the student was (its method and params, the mentor's kind) comes from its record, the noise's kind from
PATHS.noise_report: the stage reads no param but its own.

PATHS.label_issues (CSV, labelnoise.label_issues): one row per train example, the most suspicious label first: the
given label, the one label correction suggests (else the student) and its probability, the method's score, flagged
when they differ; plots/label_issues.png shows the most suspicious images. Needs no truth; where the mask exists,
`label_issues_precision` / `_recall` measure the flags against it. PATHS.model_card (Markdown): what the final
model is, its data, its metrics and what they mean, its known limits; it is also the description of the final
model's registered version in MLflow.

The table of every method on this setting, across runs, is `python cli.py compare --methods` (it reads the store).
"""

from __future__ import annotations

from pathlib import Path

from labelnoise import evaluation
from labelnoise.config import Config
from labelnoise.datasets import load_prepared
from labelnoise.engine import load_weights
from labelnoise.io import load_json, read_npz, read_torch, save_json, write_atomic
from labelnoise.label_issues import write_csv
from labelnoise.models import load_model
from labelnoise.noise import load_noisy
from labelnoise.runtime import resolve_device
from stages.common import PATHS, registered_name, require, setup, stage_run


def _optional(path: Path) -> dict:
    """A report a stage run on its own may lack (then its part of the evaluation is left out)."""
    return load_json(path) if Path(path).is_file() else {}


def run(cfg: Config) -> dict[str, float]:
    """Evaluate the final and best-clean student and the corrected model on test; write metrics, plots, issues."""
    require(PATHS.prepared, PATHS.noisy, PATHS.student_model, PATHS.student_best, PATHS.curves,
            PATHS.student_weights, PATHS.final_model, PATHS.correction_report)
    setup(cfg)
    device, e = resolve_device(cfg.base.device), cfg.evaluate
    prepared, noisy = load_prepared(PATHS.prepared), load_noisy(PATHS.noisy)
    records = {name: read_torch(path, remedy="re-run the stage that wrote it (dvc repro)") for name, path in
               zip(evaluation.MODELS, (PATHS.student_model, PATHS.student_best, PATHS.final_model), strict=True)}
    models = {name: (load_model(path, device), records[name]) for name, path in
              zip(evaluation.MODELS, (PATHS.student_model, PATHS.student_best, PATHS.final_model), strict=True)}
    weights = load_weights(PATHS.student_weights)
    student = evaluation.Student.from_record(records["final"], method=str(weights["method"] or ""))
    soft = (read_npz(PATHS.corrected, remedy="run the correct_labels stage", keys=("soft",))["soft"]
            if Path(PATHS.corrected).is_file() else None)
    estimate = _optional(PATHS.noise_estimate) or None
    curves = evaluation.read_curves(PATHS.curves)  # read before anything is written
    ev = evaluation.evaluate(prepared, noisy, models=models, student=student, weights=weights, soft_labels=soft,
                             correction=load_json(PATHS.correction_report), estimate=estimate,
                             noise=_optional(PATHS.noise_report), batch_size=e.batch_size,
                             threshold=e.detection_threshold, device=device)

    with stage_run("evaluate", cfg) as run_:  # the run opens first: an unusable store leaves no files behind
        save_json(PATHS.metrics, ev.report)
        write_csv(PATHS.label_issues, ev.issues, classes=ev.classes, suggested_by=ev.suggested_by,
                  dataset_index=ev.train_images,
                  paths=None if prepared.paths is None else prepared.paths[ev.train_images])
        card = evaluation.model_card(ev, prepared=prepared, student=student, final=records["corrected"])
        write_atomic(PATHS.model_card, lambda p: p.write_text(card))
        run_.describe_model(registered_name(cfg), PATHS.final_model, card)  # the card travels with the model
        figures = evaluation.figures(ev, Path(PATHS.plots_dir), prepared=prepared, noisy=noisy, curves=curves,
                                     weights=weights, student=student, threshold=e.detection_threshold)
        logged = ev.logged
        run_.set_tags({"method": student.method})
        run_.log_metrics({key: logged[key] for key in evaluation.HEADLINE if key in logged}, on_parent=True)
        run_.log_metrics({key: v for key, v in logged.items() if key not in evaluation.HEADLINE})
        for path in (PATHS.metrics, PATHS.label_issues, PATHS.model_card, *figures):
            run_.log_artifact(path)  # at the artifact root, beside metrics.json
    return logged
