"""The evaluate stage's figures, and the stage end to end on a tiny synthetic set."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
import yaml

from labelnoise import evaluation, plots
from labelnoise.config import Config, from_dict, merge, read_yaml
from tests.helpers import split_student

REPO = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_real_png(path: Path, *, min_height: int = 200, min_width: int = 300) -> None:
    """A PNG file that decodes to a picture with content (not a blank canvas)."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    img = mpimg.imread(path)  # (H, W, 3 or 4) floats in [0, 1]
    assert img.ndim == 3 and img.shape[0] >= min_height and img.shape[1] >= min_width
    assert img[..., :3].std() > 0.05  # drawn lines, bars and text, not one colour
    assert path.stat().st_size > 5_000


def _curves(epochs: int = 4) -> dict[str, np.ndarray]:
    e = np.arange(1, epochs + 1, dtype=float)
    return {
        "epoch": e,
        "train_loss": 2.0 / e,
        "train_acc_noisy": 0.3 + 0.05 * e,
        "clean_acc": 0.5 + 0.1 * e,
        "test_acc": 0.48 + 0.1 * e,
        "lr": 0.1 * np.cos(e / epochs),
    }


# ----------------------------------------------------------------------------- figures
def test_plot_curves_writes_png(tmp_path: Path) -> None:
    out = plots.plot_curves(_curves(), tmp_path / "sub" / "curves.png", title="digits · symmetric · ce", best_epoch=3)
    assert out == tmp_path / "sub" / "curves.png"
    assert_real_png(out)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["curves.png"]  # no temp file left behind


def test_plot_curves_without_lr_and_missing_x(tmp_path: Path) -> None:
    curves = {k: v for k, v in _curves().items() if k != "lr"}
    assert_real_png(plots.plot_curves(curves, tmp_path / "c.png", title="no lr"))
    with pytest.raises(ValueError, match="epoch"):
        plots.plot_curves({"train_loss": np.ones(3)}, tmp_path / "bad.png", title="x")
    assert not (tmp_path / "bad.png").exists()


def test_plot_per_class_writes_png(tmp_path: Path) -> None:
    labels = ["T-shirt/top", "Trouser", "Pullover"]
    values = {"final": np.array([0.9, 0.5, np.nan]), "best clean": np.array([0.8, 0.7, 0.6])}
    assert_real_png(plots.plot_per_class(values, tmp_path / "per_class.png", labels=labels, title="per class"))
    with pytest.raises(ValueError, match="shape"):
        plots.plot_per_class({"final": np.ones(2)}, tmp_path / "bad.png", labels=labels, title="x")


# ----------------------------------------------------------------------------- stage
K, C, H = 3, 1, 8
CLASSES = ["zero", "one", "two"]
CORRECTION_REPORT = {"label_acc_before": 0.75, "recovered_label_acc": 0.875}  # noisy / corrected train label accuracy


def _config(tmp_path: Path, extra: dict[str, Any] | None = None) -> Config:
    overlay = {
        "base": {"device": "cpu", "threads": 1, "tracking_uri": "sqlite:///mlflow.db", "experiment": "test-eval"},
        "data": {"dataset": "digits", "mirrors": {}, "download": False},
        "noise": {"kind": "symmetric", "rate": 0.25},
        "student": {"method": "ce"},
        "evaluate": {"batch_size": 7},  # not a divisor of n_test: the last batch is partial
    }
    return from_dict(merge(merge(read_yaml(REPO / "params.yaml"), overlay), extra or {}))


def _write_inputs(cfg: Config) -> dict[str, np.ndarray]:
    """Prepared data, noisy labels, two student checkpoints, training curves, the label-corrected model and the
    correction report, at the stage's PATHS."""
    from labelnoise.datasets import Prepared, save_prepared
    from labelnoise.io import save_json, save_torch
    from labelnoise.models import create_model, model_record
    from labelnoise.noise import NoisyLabels, save_noisy
    from stages.common import PATHS

    rng = np.random.default_rng(0)
    n = 72
    labels = np.arange(n, dtype=np.int64) % K
    # Class-dependent brightness plus noise, so a model's predictions are not all one class.
    images = (rng.integers(0, 60, (n, C, H, H)) + 80 * labels[:, None, None, None]).astype(np.uint8)
    perm = rng.permutation(n)
    train_idx, clean_idx, test_idx = np.sort(perm[:36]), np.sort(perm[36:45]), np.sort(perm[45:])
    save_prepared(
        PATHS.prepared,
        Prepared(
            images=images,
            labels=labels,
            train_idx=train_idx,
            clean_idx=clean_idx,
            val_idx=np.array([], dtype=np.int64),
            test_idx=test_idx,
            classes=CLASSES,
            dataset="digits",
        ),
    )

    true_train = labels[train_idx]
    mask = np.zeros(train_idx.size, dtype=bool)
    mask[:9] = True  # 25% flipped
    noisy = np.where(mask, (true_train + 1) % K, true_train)
    save_noisy(PATHS.noisy, NoisyLabels(labels=noisy, mask=mask))

    kwargs = {"num_classes": K, "in_channels": C, "image_size": H}
    for path, seed, epoch, clean_acc in (
        (PATHS.student_model, 1, 4, 0.6),
        (PATHS.student_best, 2, 2, 0.8),
        (PATHS.final_model, 3, 3, 0.7),
    ):
        torch.manual_seed(seed)
        model = create_model("cnn", **kwargs)
        if path == PATHS.final_model:  # a few full-batch steps, so it predicts unlike the untrained students
            opt = torch.optim.Adam(model.parameters(), lr=0.01)
            x, y = torch.from_numpy(images[train_idx]), torch.from_numpy(labels[train_idx])
            for _ in range(10):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
            model.eval()
        save_torch(
            path,
            model_record(
                model, model_name="cnn", model_kwargs=kwargs, epoch=epoch, clean_acc=clean_acc, config=cfg.to_dict(),
                classes=[str(c) for c in range(kwargs["num_classes"])],
            ),
        )

    # ce: per-example losses with unit weights at two recorded epochs
    from labelnoise.engine import save_weights

    loss = rng.random((2, train_idx.size)).astype(np.float32)
    save_weights(
        PATHS.student_weights,
        {
            "epochs": np.array([2, 4]),
            "loss": loss,
            "loss_diff": np.full_like(loss, np.nan),
            "weight": np.ones_like(loss),
        },
        method="ce",
    )

    save_json(PATHS.correction_report, {**CORRECTION_REPORT, "final_model": {"test_acc": 0.1}})
    save_json(PATHS.noise_report, {"kind": cfg.noise.kind, "realised_rate": 0.25})

    curves = _curves()
    Path(PATHS.curves).parent.mkdir(parents=True, exist_ok=True)
    with open(PATHS.curves, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(curves)
        w.writerows(zip(*curves.values(), strict=True))
    return {"images": images, "labels": labels, "test_idx": test_idx}


@pytest.fixture()
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    for var in ("DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME", "LABELNOISE_PIPELINE_ID"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def _independent_acc(path: Path, images: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    from labelnoise.models import load_model

    model = load_model(path, "cpu")
    with torch.no_grad():
        pred = model(torch.from_numpy(images)).argmax(dim=1).numpy()
    return float((pred == labels).mean()), pred


def _methods_rows(cfg: Config) -> tuple[str, dict[str, dict[str, str]]]:
    """The methods table of ``cfg``'s setting, as `compare --methods` builds it from the store: its first line (the
    setting) and its rows: method → column header → cell."""
    return _table_rows(_methods_text(cfg))


def _methods_text(cfg: Config) -> str:
    from labelnoise import studies, tracking
    from labelnoise.config import flatten

    flat = flatten(cfg.to_dict())
    uri = tracking.resolve_tracking_uri(cfg.base.tracking_uri)
    rows = studies.method_rows(tracking.matching_pipelines(uri, cfg.base.experiment, studies.setting_params(flat)))
    return studies.methods_table(rows, setting=studies.setting_line(flat, cfg.base.experiment))


def _table_rows(text: str) -> tuple[str, dict[str, dict[str, str]]]:
    lines = text.splitlines()
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines if line.startswith("|")]
    header, body = cells[0], cells[2:]  # cells[1]: the |---| line
    assert all(len(row) == len(header) for row in body)
    return lines[0], {row[0]: dict(zip(header, row, strict=True)) for row in body}


def _pct(cell: str) -> float:
    assert cell.endswith("%"), cell
    return float(cell[:-1]) / 100


def test_evaluate_end_to_end(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    from stages import evaluate
    from stages.common import PATHS

    cfg = _config(in_tmp)
    data = _write_inputs(cfg)
    x_test, y_test = data["images"][data["test_idx"]], data["labels"][data["test_idx"]]
    per_class_series: list[dict[str, np.ndarray]] = []
    draw = plots.plot_per_class
    monkeypatch.setattr(
        plots, "plot_per_class", lambda values, *a, **kw: per_class_series.append(values) or draw(values, *a, **kw)
    )

    logged = evaluate.run(cfg)

    # ---- metrics.json: numbers recomputed independently of labelnoise.metrics / training
    report = json.loads(Path(PATHS.metrics).read_text())
    acc_final, pred_final = _independent_acc(PATHS.student_model, x_test, y_test)
    acc_best, _ = _independent_acc(PATHS.student_best, x_test, y_test)
    acc_corrected, pred_corrected = _independent_acc(PATHS.final_model, x_test, y_test)
    assert acc_corrected not in (acc_final, acc_best)  # the check below can tell the models apart
    assert report["test_acc"] == pytest.approx(acc_final)
    assert report["test_acc_best_clean"] == pytest.approx(acc_best)
    assert report["best_epoch"] == 2 and report["final_epoch"] == 4
    assert report["clean_acc_best"] == pytest.approx(0.8)
    assert report["noise_realised_rate"] == pytest.approx(0.25)
    assert report["noisy_label_acc"] == pytest.approx(1 - report["noise_realised_rate"])
    assert report["n_test"] == y_test.size and report["n_corrupted"] == 9
    assert list(report["per_class"]) == CLASSES
    for k, name in enumerate(CLASSES):
        assert report["per_class"][name] == pytest.approx(float((pred_final[y_test == k] == k).mean()))
    # the label-corrected model, predicted like the student; label recovery copied from the correction report
    assert report["corrected_test_acc"] == pytest.approx(acc_corrected)
    per_class_corrected = [float((pred_corrected[y_test == k] == k).mean()) for k in range(K)]
    assert list(report["per_class_corrected"]) == CLASSES
    assert list(report["per_class_corrected"].values()) == pytest.approx(per_class_corrected)
    assert report["corrected_test_acc_class_mean"] == pytest.approx(np.mean(per_class_corrected))
    assert report["label_acc_before"] == CORRECTION_REPORT["label_acc_before"]
    assert report["recovered_label_acc"] == CORRECTION_REPORT["recovered_label_acc"]
    assert logged["corrected_test_acc"] == report["corrected_test_acc"]
    (series,) = per_class_series  # plots/per_class.png: student final, student best-clean, corrected
    assert len(series) == 3 and list(series.values())[2] == pytest.approx(per_class_corrected)
    assert "corrected" in list(series)[2]
    assert logged["test_acc"] == report["test_acc"]
    assert report["method"] == "ce"  # ce: weights are all 1, detection does not apply
    assert all(report[k] is None for k in evaluation.DETECTION)
    assert not any(k.startswith("detection_") for k in logged)

    # ---- figures
    for name in ("confusion.png", "curves.png", "per_class.png", "label_issues.png"):
        assert_real_png(Path(PATHS.plots_dir) / name)

    # ---- the model card: the final model's network, classes, data and measured accuracy, as the report has them
    card = Path(PATHS.model_card).read_text()
    assert card.startswith("# Model card: models/final.pt") and ", ".join(CLASSES) in card
    assert f"| test accuracy | {report['corrected_test_acc']:.2%} |" in card
    assert f"{report['label_issues_flagged']:.0f}" in card and "## Known limits" in card

    # ---- label issues: no corrected labels here, so the student suggests; every train label once; the flags
    # measured against the mask
    from labelnoise.label_issues import read_csv

    rows = read_csv(PATHS.label_issues)
    assert sorted(int(r["index"]) for r in rows) == list(range(36)) and {r["suggested_by"] for r in rows} == {
        "the student"}
    assert [float(r["p_given"]) for r in rows] == sorted(float(r["p_given"]) for r in rows)
    assert all(r["score"] == "" for r in rows)  # ce scores no label
    assert report["label_issues_flagged"] == sum(r["flagged"] == "yes" for r in rows)

    # ---- MLflow: the child run `evaluate` has metrics and artifacts; the parent has the headline
    client = MlflowClient(tracking_uri=f"sqlite:///{in_tmp}/mlflow.db")
    exp = client.get_experiment_by_name("test-eval")
    (child,) = client.search_runs([exp.experiment_id], filter_string="tags.`mlflow.runName` = 'evaluate'")
    assert child.info.status == "FINISHED"
    m = child.data.metrics
    assert m["test_acc"] == pytest.approx(report["test_acc"])
    assert m["test_acc_best_clean"] == pytest.approx(report["test_acc_best_clean"])
    assert m["best_epoch"] == 2
    assert {f"test_acc_class/{c}" for c in CLASSES} <= set(m)
    assert child.data.params["evaluate.batch_size"] == "7"
    artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
    assert artifacts == {"metrics.json", "label_issues.csv", "model_card.md", "confusion.png", "curves.png",
                         "per_class.png", "label_issues.png"}
    parent = client.get_run(child.data.tags["mlflow.parentRunId"])
    assert parent.data.metrics["test_acc"] == pytest.approx(report["test_acc"])
    assert parent.data.metrics["test_acc_best_clean"] == pytest.approx(report["test_acc_best_clean"])
    assert parent.data.metrics["corrected_test_acc"] == pytest.approx(acc_corrected)
    assert parent.data.metrics["recovered_label_acc"] == pytest.approx(CORRECTION_REPORT["recovered_label_acc"])

    # ---- the methods table (compare --methods), from the store: this run's method and its correction row, the
    # other methods empty
    setting, rows = _methods_rows(cfg)
    for part in ("digits", "symmetric 25 %", "cnn", f"{cfg.train.epochs} epochs"):
        assert part in setting
    assert list(rows) == [
        "CE",
        "CE + correction",
        "Clean only",
        "Clean only + correction",
        "CE + fine-tune",
        "CE + fine-tune + correction",
        "GLC",
        "GLC + correction",
        "Cleanlab",
        "Cleanlab + correction",
        "SPADE-PD",
        "SPADE-PD + correction",
        "SPADE-DD",
        "SPADE-DD + correction",
        "MentorMix-PD",
        "MentorMix-PD + correction",
        "MentorMix-DD",
        "MentorMix-DD + correction",
        "ELR",
        "ELR + correction",
        "DivideMix",
        "DivideMix + correction",
    ]
    ce, ce_corr = rows["CE"], rows["CE + correction"]
    assert _pct(ce["test accuracy"]) == pytest.approx(acc_final, abs=5e-5)
    assert _pct(ce_corr["test accuracy"]) == pytest.approx(acc_corrected, abs=5e-5)
    recovered = CORRECTION_REPORT["recovered_label_acc"]
    assert _pct(ce_corr["recovered-label accuracy"]) == pytest.approx(recovered, abs=5e-5)
    assert ce["noise-detection AUROC"] == "—" and ce["recovered-label accuracy"] == "—"
    assert ce["run"] == ce_corr["run"] == f"`{parent.info.run_id[:8]}`"
    for name in list(rows)[2:]:
        assert rows[name]["test accuracy"] == "—" and rows[name]["run"] == "no finished run"


def test_evaluate_missing_input_writes_nothing(in_tmp: Path) -> None:
    from stages import evaluate
    from stages.common import PATHS

    with pytest.raises(FileNotFoundError, match="prepared"):
        evaluate.run(_config(in_tmp))
    assert not Path(PATHS.metrics).exists() and not Path(PATHS.plots_dir).exists()
    assert not (in_tmp / "mlflow.db").exists()

    cfg = _config(in_tmp)
    _write_inputs(cfg)
    for missing in (PATHS.final_model, PATHS.correction_report):
        Path(missing).rename(in_tmp / "aside")
        with pytest.raises(FileNotFoundError, match=str(missing)):
            evaluate.run(cfg)
        (in_tmp / "aside").rename(missing)
    assert not Path(PATHS.metrics).exists()
    assert not (in_tmp / "mlflow.db").exists()


def test_evaluate_unusable_store_writes_nothing(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from labelnoise.tracking import TrackingError
    from stages import evaluate
    from stages.common import PATHS

    cfg = _config(in_tmp)
    _write_inputs(cfg)
    (in_tmp / "a_file").write_text("not a folder")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{in_tmp}/a_file/mlflow.db")  # cannot be created
    with pytest.raises(TrackingError):
        evaluate.run(cfg)
    assert not Path(PATHS.metrics).exists() and not Path(PATHS.plots_dir).exists()


def test_read_curves_round_trip(tmp_path: Path) -> None:
    from labelnoise.evaluation import read_curves

    path = tmp_path / "c.csv"
    path.write_text("epoch,train_loss,test_acc\n1,2.0,0.5\n2,1.5,\n")
    curves = read_curves(path)
    np.testing.assert_array_equal(curves["epoch"], [1, 2])
    assert curves["test_acc"][0] == 0.5 and np.isnan(curves["test_acc"][1])


def test_evaluate_spade_detection_and_weight_figure(in_tmp: Path) -> None:
    from mlflow.tracking import MlflowClient
    from sklearn.metrics import roc_auc_score

    from labelnoise.engine import save_weights
    from labelnoise.noise import load_noisy
    from stages import evaluate
    from stages.common import PATHS

    cfg = _config(in_tmp)
    _write_inputs(cfg)
    mask = load_noisy(PATHS.noisy).mask  # (36,), 9 corrupted
    n = mask.size
    rng = np.random.default_rng(1)
    epochs = np.array([1, 3, 5, 8])
    loss = rng.random((4, n)).astype(np.float32) + 2.0 * mask  # corrupted: higher loss
    weight = np.where(mask, 0.2, 0.8)[None].repeat(4, 0).astype(np.float32)
    last = weight[-1]
    last[mask.nonzero()[0][:2]] = 0.9  # two corrupted examples the mentor trusts
    last[(~mask).nonzero()[0][:3]] = 0.1  # three clean ones it rejects
    last[(~mask).nonzero()[0][3]] = np.nan  # one not seen in the last epoch: ignored
    save_weights(
        PATHS.student_weights,
        {"epochs": epochs, "loss": loss, "loss_diff": loss - 1.0, "weight": weight},
        method="spade",
    )

    logged = evaluate.run(cfg)

    report = json.loads(Path(PATHS.metrics).read_text())
    seen = np.isfinite(last)
    assert report["method"] == "spade" and report["detection_epoch"] == 8
    assert report["detection_auroc"] == pytest.approx(roc_auc_score(mask[seen], -last[seen]))
    flagged = seen & (last < 0.5)
    assert report["detection_precision"] == pytest.approx((flagged & mask).sum() / flagged.sum())  # 7 / 10
    assert report["detection_recall"] == pytest.approx((flagged & mask).sum() / mask.sum())  # 7 / 9
    assert report["weight_mean_corrupted"] == pytest.approx(float(last[mask].mean()))
    assert report["weight_mean_clean"] == pytest.approx(float(np.nanmean(last[~mask])))
    assert logged["detection_auroc"] == pytest.approx(report["detection_auroc"])
    assert_real_png(Path(PATHS.plots_dir) / "weights.png")

    client = MlflowClient(tracking_uri=f"sqlite:///{in_tmp}/mlflow.db")
    exp = client.get_experiment_by_name("test-eval")
    (child,) = client.search_runs([exp.experiment_id], filter_string="tags.`mlflow.runName` = 'evaluate'")
    assert child.data.tags["method"] == "spade"
    assert "weights.png" in {a.path for a in client.list_artifacts(child.info.run_id)}
    parent = client.get_run(child.data.tags["mlflow.parentRunId"])
    assert parent.data.metrics["detection_auroc"] == pytest.approx(report["detection_auroc"])


def test_plot_weight_vs_loss_checks_shapes(tmp_path: Path) -> None:
    loss, weight = np.ones((2, 5)), np.ones((2, 5))
    with pytest.raises(ValueError, match="do not match"):
        plots.plot_weight_vs_loss(loss, weight, np.zeros(4, bool), tmp_path / "w.png", epochs=[1, 2], title="x")
    out = plots.plot_weight_vs_loss(
        loss,
        weight,
        np.array([0, 1, 0, 1, 0], bool),
        tmp_path / "w.png",
        epochs=[1, 2],
        title="x",
        threshold=0.5,
        notes=["burn-in", ""],
    )
    assert out.read_bytes()[:8] == PNG_SIGNATURE


# ----------------------------------------------------------------------------- methods table
def _fake_pipeline(
    client: Any, exp_id: str, cfg: Config, metrics: dict[str, float], *, start: int, status: str = "FINISHED"
) -> str:
    """A pipeline parent run as the store holds it: kind tag, every param flattened with dots, headline metrics."""
    from mlflow.entities import Metric, Param

    from labelnoise.config import flatten
    from labelnoise.tracking import KIND_TAG

    run_id = client.create_run(exp_id, start_time=start, run_name="pipeline", tags={KIND_TAG: "pipeline"}).info.run_id
    params = [Param(k, str(v)) for k, v in flatten(cfg.to_dict()).items()]
    client.log_batch(run_id, metrics=[Metric(k, v, start, 0) for k, v in metrics.items()], params=params)
    if status != "RUNNING":
        client.set_terminated(run_id, status, end_time=start + 1000)
    return run_id


def test_methods_table_takes_other_methods_from_the_store(in_tmp: Path) -> None:
    from mlflow.tracking import MlflowClient

    from labelnoise.engine import save_weights
    from stages import evaluate
    from stages.common import PATHS

    cfg = _config(in_tmp)  # ce
    _write_inputs(cfg)
    client = MlflowClient(tracking_uri=f"sqlite:///{in_tmp}/mlflow.db")

    # ---- a real earlier execution of SPADE-PD on the same setting (its params as stage_run logs them)
    spade_pd = {"student": {"method": "spade"}, "mentor": {"kind": "pd"}}
    ce_weights = Path(PATHS.student_weights).read_bytes()
    n = 36
    rng = np.random.default_rng(2)
    weight = rng.random((2, n)).astype(np.float32)
    save_weights(
        PATHS.student_weights,
        {
            "epochs": np.array([2, 4]),
            "loss": rng.random((2, n)).astype(np.float32),
            "loss_diff": np.zeros((2, n), np.float32),
            "weight": weight,
        },
        method="spade",
    )
    evaluate.run(_config(in_tmp, spade_pd))
    pd_report = json.loads(Path(PATHS.metrics).read_text())
    exp_id = client.get_experiment_by_name("test-eval").experiment_id
    (pd_run,) = client.search_runs([exp_id], "tags.`labelnoise.kind` = 'pipeline'")
    Path(PATHS.student_weights).write_bytes(ce_weights)

    # ---- SPADE-DD runs: only the oldest one has this setting, is finished and has evaluate's numbers
    spade_dd = {"student": {"method": "spade"}, "mentor": {"kind": "dd"}}
    now = pd_run.info.start_time
    dd_numbers = {"test_acc": 0.41, "detection_auroc": 0.612, "corrected_test_acc": 0.51, "recovered_label_acc": 0.81}
    dd_id = _fake_pipeline(client, exp_id, _config(in_tmp, spade_dd), dd_numbers, start=now - 60_000)
    other_rate = merge(spade_dd, {"noise": {"rate": 0.4}})
    other_epochs = merge(spade_dd, split_student({"student": {"epochs": cfg.train.epochs + 1}}))
    for extra, status, start in (
        (other_rate, "FINISHED", -50_000),
        (other_epochs, "FINISHED", -40_000),
        (spade_dd, "RUNNING", -30_000),
        (spade_dd, "FAILED", -20_000),
    ):
        _fake_pipeline(
            client,
            exp_id,
            _config(in_tmp, extra),
            {"test_acc": 0.99, "corrected_test_acc": 0.99},
            start=now + start,
            status=status,
        )
    _fake_pipeline(client, exp_id, _config(in_tmp, spade_dd), {}, start=now - 10_000)  # a lone stage: no numbers
    # a MentorMix-DD execution of the same setting gets its own row (MentorMix-PD has none)
    mix_dd = {"student": {"method": "mentormix"}, "mentor": {"kind": "dd"}}
    mix_id = _fake_pipeline(client, exp_id, _config(in_tmp, mix_dd), {"test_acc": 0.43, "detection_auroc": 0.7},
                            start=now - 55_000)
    # an older CE execution of the same setting: this run's own numbers win
    _fake_pipeline(client, exp_id, cfg, {"test_acc": 0.99, "corrected_test_acc": 0.99}, start=now - 5_000)

    evaluate.run(cfg)

    report = json.loads(Path(PATHS.metrics).read_text())
    table = _methods_text(cfg)
    assert "99.00%" not in table  # no run of another setting, unfinished, or superseded
    _, rows = _table_rows(table)
    assert _pct(rows["CE"]["test accuracy"]) == pytest.approx(report["test_acc"], abs=5e-5)
    (this,) = client.search_runs([exp_id], "tags.`mlflow.runName` = 'evaluate'", order_by=[
        "attributes.start_time DESC"], max_results=1)
    assert rows["CE"]["run"] == f"`{this.data.tags['mlflow.parentRunId'][:8]}`"  # the newest CE run: this one

    pd, pd_corr = rows["SPADE-PD"], rows["SPADE-PD + correction"]
    assert pd["run"] == pd_corr["run"] == f"`{pd_run.info.run_id[:8]}`"
    assert _pct(pd["test accuracy"]) == pytest.approx(pd_report["test_acc"], abs=5e-5)
    assert float(pd["noise-detection AUROC"]) == pytest.approx(pd_report["detection_auroc"], abs=5e-4)
    assert _pct(pd_corr["test accuracy"]) == pytest.approx(pd_report["corrected_test_acc"], abs=5e-5)
    recovered = CORRECTION_REPORT["recovered_label_acc"]
    assert _pct(pd_corr["recovered-label accuracy"]) == pytest.approx(recovered, abs=5e-5)

    dd, dd_corr = rows["SPADE-DD"], rows["SPADE-DD + correction"]
    assert dd["run"] == f"`{dd_id[:8]}`" and re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", dd["date"])
    assert (dd["test accuracy"], dd["noise-detection AUROC"], dd["recovered-label accuracy"]) == (
        "41.00%",
        "0.612",
        "—",
    )
    assert (dd_corr["test accuracy"], dd_corr["recovered-label accuracy"]) == ("51.00%", "81.00%")
    mix = rows["MentorMix-DD"]
    assert (mix["run"], mix["test accuracy"], mix["noise-detection AUROC"]) == (f"`{mix_id[:8]}`", "43.00%", "0.700")
    assert rows["MentorMix-PD"]["run"] == "no finished run"

    # the CLI writes the same table
    (in_tmp / "params.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    from typer.testing import CliRunner

    from cli import app

    written = CliRunner().invoke(app, ["compare", "--methods", "--out", "reports/methods.md"])
    assert written.exit_code == 0, written.output
    assert Path("reports/methods.md").read_text() == table


def test_correction_summary_and_method_variant() -> None:
    from labelnoise.evaluation import correction_summary
    from labelnoise.methods import display_name as method_variant

    assert correction_summary({"label_acc_before": 0.6, "recovered_label_acc": 0.8, "label_recovery": {}}) == {
        "label_acc_before": 0.6,
        "recovered_label_acc": 0.8,
    }
    missing = correction_summary({"label_acc_before": None})
    assert all(np.isnan(v) for v in missing.values()) and list(missing) == ["label_acc_before", "recovered_label_acc"]
    assert [method_variant("ce", "dd"), method_variant("spade", "pd"), method_variant("spade", "dd"),
            method_variant("mentormix", "pd"), method_variant("mentormix", "dd")] == [
        "CE",
        "SPADE-PD",
        "SPADE-DD",
        "MentorMix-PD",
        "MentorMix-DD",
    ]


def test_matching_pipelines_pages_newest_first(in_tmp: Path) -> None:
    from mlflow.tracking import MlflowClient

    from labelnoise import tracking
    from labelnoise.config import flatten
    from labelnoise.studies import setting_params

    cfg = _config(in_tmp)
    client = MlflowClient(tracking_uri=f"sqlite:///{in_tmp}/mlflow.db")
    exp_id = client.create_experiment("pages")
    other = _config(in_tmp, {"data": {"split_seed": 7}})
    made = [
        _fake_pipeline(client, exp_id, c, {"test_acc": 0.5}, start=1000 * (i + 1))
        for i, c in enumerate([cfg, other] * 3)
    ]
    uri = f"sqlite:///{in_tmp}/mlflow.db"
    found = tracking.matching_pipelines(uri, "pages", setting_params(flatten(cfg.to_dict())), exclude={made[2]},
                                        page_size=2)
    assert [r["run_id"] for r in found] == [made[4], made[0]]  # newest first, across pages; made[2] excluded
    assert list(tracking.matching_pipelines(uri, "no such experiment", {})) == []
