"""``labelnoise.fit``: the pipeline on images and labels a user already has in Python, with no DVC and no MLflow.

    import labelnoise
    result = labelnoise.fit(images, labels, trusted=(checked_idx, checked_labels), test=(x_test, y_test))
    result.label_issues.head()             # the labels to fix first
    result.save("model.pt")                # labelnoise.predict("model.pt", files) / labelnoise export

It runs the pipeline's steps (:mod:`labelnoise.steps`: the noise estimate, the mentor where the method uses one,
the student, label correction) with the pipeline's defaults (its ``params.yaml``) and ``auto`` settings, on the
same engine; the given labels are the noisy ones and only ``trusted`` and ``test`` hold true labels (as
``data.truth: false`` does in the pipeline).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from labelnoise.engine import log_to_stderr

DEFAULTS = Path(__file__).resolve().parent / "params.yaml"  # the pipeline's params.yaml, shipped with the package


@dataclass
class Fitted:
    """What :func:`fit` returns. ``model``: the network retrained on the corrected labels (the pipeline's
    ``models/final.pt``); ``student``: the network the method trained on the given labels; ``classes``: the K
    names; ``corrected_labels`` (n,) int64 and ``soft_labels`` (n, K) for every given image (a trusted image's is
    its true label); ``label_issues``: a pandas DataFrame with the columns of ``reports/label_issues.csv``, most
    suspicious first (``index``: the position in the images given); ``noise_estimate``: the estimate's report
    (``use``, ``rate``, ``transition``); ``metrics``: accuracies on ``test`` (NaN without it), the student's
    training summary and label correction's; ``config``: the params it ran with, ``auto`` values settled."""

    model: Any
    student: Any
    classes: list[str]
    corrected_labels: np.ndarray
    soft_labels: np.ndarray
    label_issues: Any
    noise_estimate: dict[str, Any]
    metrics: dict[str, float]
    config: Any
    record: dict[str, Any]

    def save(self, path: str | Path) -> Path:
        """Write :attr:`model` as a model file of the pipeline (its classes, input and how it was trained), which
        :func:`labelnoise.predict`, :func:`labelnoise.export` and ``labelnoise predict`` read. Returns ``path``."""
        from labelnoise.io import save_torch

        save_torch(path, self.record)
        return Path(path)


def _as_images(images: Any, *, size: int, channels: int) -> np.ndarray:
    """uint8 (N, C, H, W) from a uint8 array (N, H, W), (N, H, W, C) or (N, C, H, W) with C 1 or 3, or from image
    files (each converted as the pipeline converts a folder's images: ``size``, ``channels``)."""
    from labelnoise.datasets.folder import load_images, to_nchw

    if isinstance(images, np.ndarray):
        return to_nchw(images)
    if not len(images):
        raise ValueError("images: none given")
    return load_images(images, size=size, channels=channels)


def _as_labels(labels: Any, n: int, classes: list[str] | None, what: str) -> tuple[np.ndarray, list[str]]:
    """int64 (n,) and the class names: integers in [0, K) (names ``classes`` or "0".."K-1"), or class names
    (``classes`` their order, else sorted)."""
    y = np.asarray(labels)
    if y.shape != (n,):
        raise ValueError(f"{what}: {y.shape[0] if y.ndim else 0} labels for {n} images")
    if y.dtype.kind in "US" or y.dtype == object:
        names = list(classes) if classes is not None else sorted({str(v) for v in y})
        lookup = {c: i for i, c in enumerate(names)}
        unknown = sorted({str(v) for v in y} - lookup.keys())
        if unknown:
            raise ValueError(f"{what}: {unknown[0]!r} is not one of the classes {names}")
        return np.array([lookup[str(v)] for v in y], dtype=np.int64), names
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{what}: integers or class names, got {y.dtype}")
    k = len(classes) if classes is not None else (int(y.max()) + 1 if y.size else 0)
    if y.size and (y.min() < 0 or y.max() >= k):
        raise ValueError(f"{what}: labels must lie in [0, {k})")
    return y.astype(np.int64), [str(c) for c in (classes if classes is not None else range(k))]


def config(method: str = "auto", params: dict[str, Any] | None = None, *, trusted: bool = True) -> Any:
    """The params :func:`fit` runs with: the pipeline's defaults, ``student.method`` (``auto``: the default
    method; without a trusted subset its data-driven mentor becomes the predefined one, which needs no clean
    data), then ``params`` merged on ({"section.key": value} or {section: {key: value}})."""
    from labelnoise.config import from_dict, merge, read_yaml

    overlay: dict[str, Any] = {}
    for key, value in (params or {}).items():
        *path, last = key.split(".")
        inner = overlay
        for name in path:
            inner = inner.setdefault(name, {})
        inner[last] = merge(inner[last], value) if isinstance(inner.get(last), dict) else value
    raw = read_yaml(DEFAULTS)
    if method != "auto":
        raw = merge(raw, {"student": {"method": method}})
    if not trusted and raw["mentor"]["kind"] == "dd" and "kind" not in overlay.get("mentor", {}):
        raw = merge(raw, {"mentor": {"kind": "pd"}})
    return from_dict(merge(raw, overlay))


def fit(images: np.ndarray | Sequence[str | Path], labels: Sequence[Any] | np.ndarray, *,
        trusted: tuple[Any, Any] | None = None, test: tuple[Any, Any] | None = None, method: str = "auto",
        classes: Sequence[str] | None = None, params: dict[str, Any] | None = None,
        workdir: str | Path | None = None, log: Callable[[str], None] = log_to_stderr) -> Fitted:
    """Train on ``labels`` (n,), which may be wrong, and find the wrong ones: the pipeline's steps in a row.

    ``images``: a uint8 array (n, H, W), (n, H, W, C) or (n, C, H, W), or n image files (converted to
    ``data.image_size`` and ``data.channels``). ``labels``: integers in [0, K) or class names. ``trusted``:
    (indices, true labels) of images whose label a person checked (they train the mentor, estimate the noise and
    are never relabelled), or None. ``test``: (images, true labels) to report accuracies on, or None.
    ``method``: a ``student.method`` (``auto``: the pipeline's default). ``classes``: the K names in label order.
    ``workdir``: where the resume checkpoints go (a rerun there resumes; default: a temporary folder).
    ``params``: the params.yaml values to change, by dotted key or by section: ``{"train.epochs": 4}`` or
    ``{"train": {"epochs": 4}}``. ``log``: progress lines. As a stage does, it seeds torch (``base.seed``,
    ``base.deterministic``) and sets its threads (``base.threads``) in this process.

        import labelnoise
        from sklearn.datasets import load_digits
        d = load_digits()
        x = (d.images * 255 / 16).round().astype("uint8")
        y = d.target.copy(); y[::5] = (y[::5] + 1) % 10                  # every fifth label wrong
        r = labelnoise.fit(x[:1500], y[:1500], trusted=(range(200), d.target[:200]),
                           test=(x[1500:], d.target[1500:]), params={"train.epochs": 4})
        r.label_issues[r.label_issues.flagged].head()                    # the labels to fix first

    (README "From Python" has this run's figures; tests/test_fitting.py runs it with a smaller budget.)
    """
    from labelnoise import runtime
    from labelnoise.auto import NoiseEstimate, settle_stage
    from labelnoise.datasets import Prepared
    from labelnoise.label_issues import checked_labels
    from labelnoise.methods import get_method
    from labelnoise.noise import NoisyLabels
    from labelnoise.steps import correct as correct_step
    from labelnoise.steps import estimate as estimate_step
    from labelnoise.steps import mentor as mentor_step
    from labelnoise.steps import student as student_step
    from labelnoise.views import make_train_view

    given = None if classes is None else [str(c) for c in classes]
    cfg = config(method, params, trusted=trusted is not None)
    size, channels = cfg.data.image_size, cfg.data.channels
    x = _as_images(images, size=size, channels=channels)
    y, names = _as_labels(labels, len(x), given, "labels")
    k = len(names)
    checked = checked_labels(trusted, len(x), k)
    if checked is None:
        checked = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    order = np.argsort(checked[0])  # the trusted subset in the images' order, as the pipeline's clean split is
    checked = (checked[0][order], checked[1][order])
    x_test = y_test = None
    if test is not None:
        x_test = _as_images(test[0], size=size, channels=channels)
        y_test, _ = _as_labels(test[1], len(x_test), names, "test labels")
        if x_test.shape[1:] != x.shape[1:]:
            raise ValueError(f"test images are {x_test.shape[1:]}, the images {x.shape[1:]}: give them one shape")

    n, m = len(x), 0 if x_test is None else len(x_test)
    is_trusted = np.zeros(n, dtype=bool)
    is_trusted[checked[0]] = True
    truth = y.copy()
    truth[checked[0]] = checked[1]
    prepared = Prepared(images=x if x_test is None else np.concatenate([x, x_test]),
                        labels=truth if y_test is None else np.concatenate([truth, y_test]),
                        train_idx=np.flatnonzero(~is_trusted).astype(np.int64), clean_idx=checked[0],
                        val_idx=np.zeros(0, dtype=np.int64), test_idx=np.arange(n, n + m, dtype=np.int64),
                        classes=names, dataset="folder", known=np.concatenate([is_trusted, np.ones(m, dtype=bool)]))
    noisy = NoisyLabels(labels=y[prepared.train_idx], mask=np.zeros(len(prepared.train_idx), dtype=bool),
                        trusted=y[checked[0]])
    view = make_train_view(prepared, noisy)
    runtime.set_threads(cfg.base.threads)
    method_ = get_method(cfg.student.method)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(workdir) if workdir is not None else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        runtime.seed_everything(cfg.base.seed, deterministic=cfg.base.deterministic)
        report, predicted = estimate_step.estimate_noise(cfg, view, checkpoint_path=folder / "estimate_noise.pt",
                                                         log=log)
        estimate = NoiseEstimate.from_report(report)

        def settled(section: str, used: Callable[[str], bool]) -> Any:  # the auto params of a step, settled
            return settle_stage(cfg, [section], estimate, used=used)

        mentor = None
        if method_.uses_mentor:
            mcfg, _, _ = settled("mentor", mentor_step.mentor_uses(cfg))
            runtime.seed_everything(mcfg.base.seed, deterministic=mcfg.base.deterministic)
            pre = mentor_step.pretrain_mentor(mcfg, prepared, estimate=estimate, given=noisy.trusted, log=log)
            mentor = (pre.mentor, pre.config or mcfg.mentor, pre.dd_transition)
        scfg, _, _ = settled("student", lambda key: key.startswith(f"student.{cfg.student.method}."))
        runtime.seed_everything(scfg.base.seed, deterministic=scfg.base.deterministic)
        train_view, kwargs, model = student_step.student_network(scfg, view)
        trained = student_step.train_student(scfg, train_view, model, kwargs, mentor=mentor,
                                      checkpoint_path=folder / "train_student.pt", log=log)
        ccfg, _, _ = settled("correction", lambda key: not key.startswith("correction.semi_")
                             or cfg.correction.retrain_loss == "semi")
        runtime.seed_everything(ccfg.base.seed, deterministic=ccfg.base.deterministic)
        probs = predicted if predicted.get("train") is not None and predicted["train"].size else None
        result = correct_step.correct_labels(ccfg, view, trained.fit.model, scfg.train.model, kwargs, estimate=estimate,
                                      weights={k: v[:, : len(noisy.labels)] if v.ndim == 2 else v
                                               for k, v in trained.weights.items()},
                                      trusted_probs=probs, checkpoint_path=folder / "correct_labels.pt", log=log)
    return _fitted(result, trained, prepared, noisy, ccfg, names, kwargs, method_, report)


def _fitted(result: Any, trained: Any, prepared: Any, noisy: Any, cfg: Any, names: list[str],
            kwargs: dict[str, Any], method: Any, estimate: dict[str, Any]) -> Fitted:
    """The outputs of :func:`fit`'s steps, for the images as the user gave them."""
    import dataclasses

    import pandas as pd
    import torch

    from labelnoise import metrics as m
    from labelnoise.engine import predict_logits
    from labelnoise.label_issues import COLUMNS, rank_label_issues, table_rows
    from labelnoise.methods import label_scores
    from labelnoise.models import model_record
    from labelnoise.runtime import resolve_device

    n, train = len(prepared.train_idx) + len(prepared.clean_idx), prepared.train_idx
    k = len(names)
    soft = np.zeros((n, k), dtype=np.float32)
    soft[train] = result.soft
    soft[prepared.clean_idx] = np.eye(k, dtype=np.float32)[prepared.labels[prepared.clean_idx]]
    score = label_scores(method.name, trained.weights)
    issues = rank_label_issues(noisy.labels, result.soft, score=None if score is None else score[: len(train)])
    table = pd.DataFrame(list(table_rows(issues, classes=names, suggested_by="label correction",
                                         dataset_index=train)), columns=list(COLUMNS))
    table["index"] = table["dataset_index"]  # positions in the images given
    last = result.final.history[-1]
    record = model_record(result.final.model, model_name=cfg.train.model, model_kwargs=kwargs,
                          epoch=int(last["epoch"]), clean_acc=last["clean_acc"], classes=names,
                          config={"correction": dataclasses.asdict(cfg.correction),
                                  "train": dataclasses.asdict(cfg.train), "seed": cfg.base.seed})
    summary = {**trained.summary(), "label_issues_flagged": float(issues.flagged.sum())}
    if prepared.test_idx.size:
        x_test, y_test = torch.from_numpy(prepared.images[prepared.test_idx]), prepared.labels[prepared.test_idx]
        device = resolve_device(cfg.base.device)
        for name, net in (("test_acc", trained.fit.model), ("corrected_test_acc", result.final.model)):
            summary[name] = m.accuracy(y_test, predict_logits(net, x_test, batch_size=cfg.evaluate.batch_size,
                                                              device=device).argmax(dim=1).numpy())
    else:
        summary |= {"test_acc": float("nan"), "corrected_test_acc": float("nan")}
    return Fitted(model=result.final.model, student=trained.fit.model, classes=names,
                  corrected_labels=soft.argmax(axis=1).astype(np.int64), soft_labels=soft, label_issues=table,
                  noise_estimate=estimate, metrics=summary, config=cfg, record=record)
