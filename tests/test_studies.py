"""Study files (studies/*.yaml) and their reports: points, matching runs to sweeps, the comparison and
Rolnick et al. views, built from synthetic MLflow-like runs whose metrics follow known rules."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli import app
from labelnoise.config import flatten, load_config
from labelnoise.studies import clean_needed, find_study, load_study, study_points, sweep_runs, write_report
from labelnoise.tracking import differing_params

REPO = Path(__file__).resolve().parent.parent
PARAMS = REPO / "params.yaml"


def canonical(overrides: list[str]) -> str:
    return repr(sorted(flatten(load_config(PARAMS, overrides).to_dict()).items()))


def fake_runs(name: str, variant: str, acc: Callable[[dict[str, str]], float]) -> list[dict[str, Any]]:
    """One finished 'run' per point of the shipped study, params as MLflow logs them, newest first."""
    spec = load_study(REPO / "studies" / f"{name}.yaml")
    runs = []
    for i, point in enumerate(study_points(spec, variant, canonical)):
        params = {k: str(v) for k, v in flatten(load_config(PARAMS, [f"base.study={name}", *point]).to_dict()).items()}
        runs.append({"run_id": f"{i:032x}", "start": 60_000 * i, "end": 60_000 * i + 50_000, "params": params,
                     "metrics": {"test_acc": acc(params), "detection_auroc": 0.9, "corrected_test_acc": 0.95},
                     "tags": {"dvc_exp_name": f"{name}-{i + 1:03d}"}})
    return runs[::-1]


def report(name: str, runs: list[dict[str, Any]], out: Path, variant: str = "small") -> str:
    spec = load_study(REPO / "studies" / f"{name}.yaml")
    swept = [k for k in differing_params(runs) if k != "base.study"]
    written = write_report(runs, study=name, swept=swept, out_dir=out, spec=spec, variant=variant,
                           defaults=flatten(load_config(PARAMS).to_dict()))
    assert all(p.is_file() and p.stat().st_size > 0 for p in written)
    assert all(p.suffix == ".png" for p in written[1:]) and written[0] == out / f"{name}.md"
    return written[0].read_text()


def test_shipped_studies_give_valid_distinct_points() -> None:
    for name, count in (("comparison", 29), ("massive_noise", 14), ("trusted", 50), ("memorisation", 27),
                        ("cifar10n", 25)):
        spec = load_study(REPO / "studies" / f"{name}.yaml")
        for variant in spec["variants"]:
            points = study_points(spec, variant, canonical)
            assert len(points) == count
            assert len({canonical(p) for p in points}) == count  # shared points of two sweeps run once
    # without the params, points differing only in a default written out stay apart
    massive = load_study(REPO / "studies" / "massive_noise.yaml")
    assert len(study_points(massive, "small")) > 14
    assert find_study("massive_noise", REPO / "studies")[1] == "small"
    assert find_study("comparison-full", REPO / "studies")[1] == "full"
    assert find_study("adhoc", REPO / "studies") is None


def test_comparison_report_tables_and_verdicts(tmp_path: Path) -> None:
    rates = {"0.2": 0.9, "0.4": 0.85, "0.8": 0.6, "0.45": 0.8}
    bonus = {"ce": 0.0, "cleanlab": 0.01, "spade": 0.02, "mentormix": 0.03, "elr": 0.0, "dividemix": 0.005}

    def acc(p: dict[str, str]) -> float:
        if p["noise.kind"] == "none":
            return 0.93
        uses_pd = p["mentor.kind"] == "pd" and p["student.method"] in ("spade", "mentormix")  # the others: unused
        return rates[p["noise.rate"]] + bonus[p["student.method"]] - 0.015 * uses_pd

    text = report("comparison", fake_runs("comparison", "small", acc), tmp_path)
    assert "| method | symmetric 20 % | symmetric 40 % | symmetric 80 % | pair 45 % |" in text
    assert "| CE | 90.00 % | 85.00 % | 60.00 % | 80.00 % |" in text
    assert "| SPADE-PD | 90.50 % | 85.50 % | 60.50 % | 80.50 % |" in text
    assert "| SPADE-DD + correction | 95.00 % | 95.00 % | 95.00 % | 95.00 % |" in text
    assert "| Oracle (CE, clean labels) | 93.00 % | 93.00 % | 93.00 % | 93.00 % |" in text
    assert "- symmetric 80 %: our best, SPADE-DD + correction, 95.00 % against Cleanlab 61.00 %: ahead by 34.00" \
           in text
    assert "| Cleanlab | 0.900 |" in text  # detection AUROC table (CE and the oracle have none)
    assert "| DivideMix | 90.50 % | 85.50 % | 60.50 % | 80.50 % |" in text
    assert "29 points from 29 finished pipeline runs" in text and "`data.train_limit=8000`" in text
    assert (tmp_path / "comparison" / "methods.png").is_file()


def test_trusted_report_gives_the_estimate_per_level_and_each_baseline(tmp_path: Path) -> None:
    realised = {"0.2": 0.2, "0.4": 0.4, "0.8": 0.8, "0.45": 0.45}
    bonus = {"ce": 0.0, "clean_only": 0.02, "ce_then_finetune": 0.01, "glc": 0.03, "cleanlab": 0.01, "spade": 0.04,
             "mentormix": 0.02, "elr": 0.0, "dividemix": 0.01}
    runs = fake_runs("trusted", "small", lambda p: 0.9 - float(p["noise.rate"]) / 4 + bonus[p["student.method"]])
    for r in runs:  # the estimate is off by +0.01 at symmetric noise, −0.02 at pair and instance noise
        error = 0.01 if r["params"]["noise.kind"] == "symmetric" else -0.02
        r["metrics"] |= {"estimated_rate": realised[r["params"]["noise.rate"]] + error, "estimated_rate_error": error}
    text = report("trusted", runs, tmp_path)
    assert "| method | symmetric 20 % | symmetric 40 % | symmetric 80 % | instance 40 % | pair 45 % |" in text
    assert "| Clean only | 87.00 % | 82.00 % | 72.00 % | 82.00 % | 80.75 % |" in text
    assert "| symmetric 80 % | 0.810 | +0.010 |" in text and "| pair 45 % | 0.430 | -0.020 |" in text
    for peer in ("Clean only", "CE", "Cleanlab", "GLC", "ELR", "DivideMix"):
        assert f"Our best method against the baseline {peer}:" in text
    assert "- symmetric 40 %: our best, SPADE-DD + correction, 95.00 % against Clean only 82.00 %: ahead by 13.00" \
           in text
    assert "50 points from 50 finished pipeline runs" in text


def test_cifar10n_report_names_each_annotation_and_the_ceiling(tmp_path: Path) -> None:
    wrong = {"worse": 0.4, "aggre": 0.09, "random1": 0.17}

    def acc(p: dict[str, str]) -> float:
        if p["noise.kind"] == "none":
            return 0.86
        return 0.86 - wrong[Path(p["noise.given.file"]).stem] / 4 + (0.02 if p["student.method"] == "elr" else 0.0)

    text = report("cifar10n", fake_runs("cifar10n", "small", acc), tmp_path)
    assert "| method | given aggre | given random1 | given worse |" in text
    assert "| CE | 83.75 % | 81.75 % | 76.00 % |" in text and "| ELR | 85.75 % | 83.75 % | 78.00 % |" in text
    assert "| Oracle (CE, clean labels) | 86.00 % | 86.00 % | 86.00 % |" in text
    assert "- given worse: our best, SPADE-DD + correction, 95.00 % against ELR 78.00 %: ahead by 17.00" in text


def test_massive_report_checks_each_finding_on_its_sweep(tmp_path: Path) -> None:
    def acc(p: dict[str, str]) -> float:
        if p["noise.kind"] == "structured":
            return 0.9 - 0.2 * float(p["noise.structured.delta"])  # falls with delta: holds
        alpha, n = float(p["noise.massive.alpha"]), int(p["noise.massive.n_clean"])
        value = 0.9 - alpha * 0.3 / n  # more clean examples: a smaller drop
        value += 0.02 * (p["noise.massive.source"] != "train")  # other source hurts less: holds
        value -= 0.01 * (int(p["train.batch_size"]) == 512)  # larger batches do NOT help
        return value - 0.05 * (float(p["train.lr"]) == 0.02)  # smaller lr does NOT help

    runs = fake_runs("massive_noise", "small", acc)
    for r in runs:  # the same optimiser steps in every run (train.epoch_size), a count in the tables
        r["metrics"]["train_steps"] = 1290.0
    spec = load_study(REPO / "studies" / "massive_noise.yaml")
    defaults = flatten(load_config(PARAMS).to_dict())
    by_name = {s["name"]: sweep_runs(runs, spec, "small", s, defaults) for s in spec["sweeps"]}
    assert {k: len(v) for k, v in by_name.items()} == {"alpha": 5, "clean": 6, "delta": 3, "batch_lr": 4}
    text = report("massive_noise", runs, tmp_path)
    assert "**Accuracy stays high as α grows, given enough clean examples** — holds" in text
    assert "with 100 clean examples 90.00 % → 75.00 % (-15.00 points)" in text
    assert "with 1000 clean examples 90.00 % → 88.50 % (-1.50 points)" in text
    assert "**Noise from another source hurts less than same-dataset noise** — holds (2 of 2 α values)" in text
    assert "**Structured noise hurts more as δ grows** — holds (accuracy falls at 2 of 2 steps)" in text
    assert "**Larger batches help under noise** — does not hold (0 of 2)" in text
    assert "**Smaller learning rates help under noise** — does not hold (0 of 2)" in text
    assert "| 0 | 100 |" in text  # alpha 0: the smallest size already reaches the target
    assert "| 0.0 | train | 0.9000 | 1290 |" in text  # the alpha sweep's table shows each run's steps
    for png in ("alpha", "clean", "delta", "batch_lr", "clean_needed"):
        assert (tmp_path / "massive_noise" / f"{png}.png").is_file()


def test_memorisation_report_reads_the_curves_and_checks_each_claim(tmp_path: Path) -> None:
    """CE's curve peaks at epoch 10 and falls 20 points at 80 %, 4 at 40 %; DD > PD > CE everywhere; MentorMix
    beats both at symmetric noise only; joint optimization recovers labels at 80 % only."""
    final = {"ce": 0.5, "clean_only": 0.6, "glc": 0.62, "spade": 0.55, "mentormix": 0.7, "elr": 0.52,
             "dividemix": 0.6}
    runs = fake_runs("memorisation", "small", lambda p: 0.0)
    for r in runs:
        p, m = r["params"], r["metrics"]
        rate, method = float(p["noise.rate"]), p["student.method"]
        last = final[method] + 0.02 * (p["mentor.kind"] == "dd" and method == "spade") - rate / 10
        if method == "mentormix" and p["noise.kind"] == "pair":
            last = 0.3
        drop = (0.2 if rate == 0.8 else 0.04) if method == "ce" else 0.01
        m |= {"test_acc": last, "final_train_acc_noisy": 0.9 if method == "ce" else 0.4, "noisy_label_acc": 1 - rate,
              "recovered_label_acc": 1 - rate + (0.3 if rate == 0.8 else -0.05), "corrected_test_acc": 0.66}
        r["curves"] = {"test_acc": [(e, last + drop * (e == 10)) for e in range(1, 41)],
                       "train_acc_noisy": [(e, e / 40) for e in range(1, 41)]}
    text = report("memorisation", runs, tmp_path)
    assert "## symmetric 80 %" in text and "## pair 45 %" in text
    assert "| CE | 62.00 % (10) | 42.00 % | -20.00 | 90.00 % | — |" in text
    assert "| CE + joint optimization | — | 66.00 % | — | — | 50.00 % (given: 20.00 %) |" in text
    assert "**CE memorises the noisy labels** (final test accuracy ≥ 5 points below its own peak) — partly holds " \
           "(1 of 3 levels)" in text
    assert "**MentorNet DD ≥ MentorNet PD ≥ CE** — holds (3 of 3 levels)" in text
    assert "**MentorMix ≥ MentorNet (the better of PD and DD)** — partly holds (2 of 3 levels)" in text
    assert "**ELR beats CE by at least 3 points** — does not hold (0 of 3 levels)" in text
    assert "**DivideMix beats CE by at least 3 points** — holds (3 of 3 levels)" in text
    assert "**Label correction recovers labels** (more train labels right after it than before) — partly holds " \
           "(1 of 3 levels): symmetric 40 %: 60.00 % → 55.00 %" in text
    for png in ("curves_symmetric40", "curves_symmetric80", "curves_pair45"):
        assert (tmp_path / "memorisation" / f"{png}.png").is_file()


def test_clean_needed_interpolates_on_log_size() -> None:
    runs = [{"params": {"noise.massive.alpha": str(a), "noise.massive.n_clean": str(n)}, "metrics": {"test_acc": acc}}
            for a, n, acc in ((10, 100, 0.6), (10, 1000, 0.9), (50, 100, 0.5), (50, 1000, 0.7), (0, 100, 0.85))]
    needed = clean_needed(runs, 0.75)
    assert needed[0.0] == pytest.approx(100.0)
    assert needed[10.0] == pytest.approx(10 ** 2.5)  # halfway between 0.6 and 0.9 on log10 n: 2 → 3
    assert needed[50.0] is None


@pytest.mark.parametrize(("text", "says"), [
    ("view: comparison\n", "non-empty list `sweeps`"),
    ("sweeps: [{name: a, grid: noise.rate=0.2}]\nview: pie\n", "view 'pie'"),
    ("sweeps: [{name: a, grid: noise.rate=0.2}, {name: a, grid: noise.rate=0.4}]\n", "given twice"),
    ("sweeps: [{name: a, grid: rate=0.2}]\n", "not section.key=value"),
    ("sweeps: [{name: a}]\n", "a `grid` or a list of `grids`"),
    ("sweeps: [{name: a, grid: noise.rate=0.2}]\nvariants: {full: ''}\n", "needs a `small` entry"),
    ("sweeps: [\n", "study file"),
])
def test_bad_study_files_are_one_clear_error(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match="study file") as e:
        load_study(path)
    assert says in str(e.value)


def test_study_command_refuses_unknown_names_and_variants(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    unknown = runner.invoke(app, ["study", "nope"])
    assert unknown.exit_code == 2
    assert "unknown study 'nope' (known: cifar10n, comparison, massive_noise, memorisation, trusted)" in unknown.output
    variant = runner.invoke(app, ["study", "comparison", "--variant", "huge"])
    assert variant.exit_code == 2 and "has no variant 'huge' (known: small, full)" in variant.output
    assert "queued" not in unknown.output + variant.output
    assert list(tmp_path.iterdir()) == []


def test_study_without_dvc_on_path_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    monkeypatch.setenv("PATH", str(tmp_path))  # no dvc here
    result = CliRunner().invoke(app, ["study", "comparison"])
    assert result.exit_code == 2
    assert "dvc is not on PATH" in result.output and "nothing queued" in result.output
    assert "Traceback" not in result.output and "queued comparison" not in result.output
