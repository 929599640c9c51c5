"""The Python entry points: the pipeline's library calls for arrays a user already has, with no DVC or MLflow.

    import labelnoise
    issues = labelnoise.find_label_issues(labels, pred_probs, trusted=(idx, true_labels))
    issues[issues.flagged].head()          # the labels to fix first
    labelnoise.predict("models/final.pt", ["cat.jpg", "dog.png"])     # a trained model's classes for new images
    labelnoise.export("models/final.pt", "model.onnx")                # for use without this project

:func:`find_label_issues` takes out-of-sample predicted probabilities from the user's own model (any modality), as
cleanlab's does, and ranks them the way the pipeline's label correction relabels: the class posterior of each label
under the estimated noise (:mod:`labelnoise.correction.posterior`); a person's checked labels (``trusted``) are
known, and can estimate the noise instead.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from labelnoise.label_issues import COLUMNS, checked_labels, rank_label_issues, table_rows


def find_label_issues(labels: Sequence[int] | np.ndarray, pred_probs: np.ndarray | None = None, *, trusted: Any = None,
                      classes: Sequence[str] | None = None,
                      estimate: Literal["confident_joint", "paired"] = "confident_joint",
                      images: Any = None, params: dict[str, Any] | None = None) -> Any:
    """The label-issues table of ``labels`` (n,) int in [0, K), most suspicious first, as a pandas DataFrame with
    the columns of the pipeline's ``reports/label_issues.csv`` (``index`` and ``dataset_index`` are the position in
    ``labels``, ``path`` is empty; ``flagged`` a bool: the suggested label differs from the given one).

    With ``images`` instead of ``pred_probs`` (uint8 images or image files, as :func:`labelnoise.fit` takes them,
    with its ``params``): the table :func:`labelnoise.fit` makes, the pipeline trained on them.

    ``pred_probs`` (n, K): out-of-sample predicted probabilities (e.g. cross-validated) of a model trained on the
    given labels, p(ỹ | x). ``trusted``: (indices (m,), true labels (m,)) of examples whose label a person checked,
    or None. ``classes``: K names (default ``"0"``, ``"1"``, ...).

    The noise estimate T (K, K), T[i, j] = P(given j | true i): ``estimate="confident_joint"`` confident learning's
    from ``labels`` and ``pred_probs``; ``"paired"`` the trusted examples' given labels against their true ones
    (assumes nothing of how the noise arises, but needs many trusted examples per class: it is counts). Each
    label's distribution is the posterior of the true class given the image and the given label,
    q ∝ p(y | x) · T[:, given], with p(y | x) = ``pred_probs`` · T⁻¹ (clipped); a trusted example's is its true
    label. The table ranks by q(given). ``DataFrame.attrs["noise_estimate"]`` holds the estimator, the rate, T.

        >>> import numpy as np, labelnoise
        >>> probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.95, 0.05], [0.1, 0.9]])
        >>> table = labelnoise.find_label_issues([0, 1, 1, 1], probs, classes=["cat", "dog"])
        >>> table.loc[table.flagged, ["index", "given", "suggested"]].values.tolist()
        [[2, 'dog', 'cat']]
    """
    if images is not None:
        if pred_probs is not None:
            raise ValueError("give pred_probs (your model's) or images (the pipeline trains on them), not both")
        from labelnoise.fitting import fit

        return fit(images, labels, trusted=trusted, classes=classes, params=params).label_issues
    if pred_probs is None:
        raise ValueError("give pred_probs (out-of-sample probabilities of your model) or images")

    import pandas as pd
    import torch

    from labelnoise.correction.posterior import noisy_label_posterior
    from labelnoise.noise_estimate import (
        clean_probs,
        confident_joint_transition,
        noise_rate,
        paired_transition,
        prior_from_noisy,
    )

    probs = np.asarray(pred_probs, dtype=np.float64)
    given = np.asarray(labels)
    if probs.ndim != 2 or given.shape != (probs.shape[0],):
        raise ValueError(f"pred_probs must be (n, K) for n labels: got {probs.shape} for labels of shape "
                         f"{given.shape}")
    n, k = probs.shape
    if not np.issubdtype(given.dtype, np.integer) or (n and (given.min() < 0 or given.max() >= k)):
        raise ValueError(f"labels must be integers in [0, {k}) (pred_probs has {k} columns)")
    if not np.isfinite(probs).all() or (probs < 0).any() or not np.allclose(probs.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError("pred_probs: every row must be probabilities summing to 1")
    names = [str(c) for c in (classes if classes is not None else range(k))]
    if len(names) != k:
        raise ValueError(f"classes: {len(names)} names for {k} columns of pred_probs")
    if estimate not in ("confident_joint", "paired"):
        raise ValueError(f"estimate: confident_joint or paired, got {estimate!r}")
    given = given.astype(np.int64)
    checked = checked_labels(trusted, n, k)
    if estimate == "paired" and (checked is None or not checked[0].size):
        raise ValueError("estimate='paired' counts the trusted examples' given labels: give trusted=(indices, labels)")

    if estimate == "paired":
        transition = paired_transition(given[checked[0]], checked[1], k)
        prior = prior_from_noisy(np.bincount(given, minlength=k) / n, transition)
    else:
        transition, prior = confident_joint_transition(given, probs)
    q = noisy_label_posterior(torch.from_numpy(clean_probs(probs, transition)), torch.from_numpy(given), weight="auto",
                              transition=torch.from_numpy(transition)).double().numpy()  # (n, K)
    if checked is not None:  # a checked label is known
        q[checked[0]] = np.eye(k)[checked[1]]
    issues = rank_label_issues(given, q)
    rows = table_rows(issues, classes=names, suggested_by=f"posterior under the {estimate} estimate")
    table = pd.DataFrame(list(rows), columns=list(COLUMNS))
    table.attrs["noise_estimate"] = {"use": estimate, "rate": noise_rate(transition, prior), "transition": transition}
    return table


def _read_model(model: str | Path, tracking_uri: str | None = None) -> tuple[dict[str, Any], int, int, list[str]]:
    """A model file of the pipeline, or the one an MLflow model of the pipeline wraps (``models:/…``, ``runs:/…``,
    from the store ``tracking_uri``; None: MLflow's default): (its record, input channels, input size, the K class
    names; a model saved without class names names them by index)."""
    import tempfile

    from labelnoise.io import read_torch
    from labelnoise.models import MODEL_RECORD_KEYS
    from labelnoise.tracking import MLFLOW_URIS, fetch_model_file

    if str(model).startswith(MLFLOW_URIS):
        with tempfile.TemporaryDirectory() as tmp:
            return _read_model(fetch_model_file(str(model), tracking_uri, Path(tmp)))
    record = read_torch(model, remedy="give a model file the pipeline wrote (models/final.pt)", keys=MODEL_RECORD_KEYS)
    kwargs = record["model_kwargs"]
    classes = [str(c) for c in record.get("classes") or range(int(kwargs["num_classes"]))]
    return record, int(kwargs["in_channels"]), int(kwargs["image_size"]), classes


def predict(model: str | Path, images: Sequence[str | Path] | np.ndarray, *, top_k: int = 3, batch_size: int = 256,
            device: str = "cpu", tracking_uri: str | None = None) -> Any:
    """The classes a trained model (a model file of the pipeline: ``models/final.pt``, ``models/student.pt``; or a
    registered one, ``models:/labelnoise-<dataset>@champion``, from the MLflow store ``tracking_uri``) gives
    ``images``: a list of image files (any size and mode: each is converted as the pipeline converted its training
    images, to the model's channels and size) or a uint8 array of images of any size ((N, H, W), (N, H, W, C) or
    (N, C, H, W), converted the same way). A pandas
    DataFrame, one row per image in the given order: ``path`` (empty for an array), ``predicted`` (the class name),
    ``probability`` (its softmax probability) and ``top_k`` (the ``top_k`` likeliest classes, ``"cat 0.912; dog
    0.051"``). A model saved without class names names them by index.

        >>> labelnoise.predict("models/final.pt", ["cat.jpg", "dog.png"])  # doctest: +SKIP
    """
    import pandas as pd
    import torch

    from labelnoise.datasets.folder import convert_images, load_images
    from labelnoise.engine import predict_logits
    from labelnoise.models import model_from_record

    record, channels, size, classes = _read_model(model, tracking_uri)
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    if isinstance(images, np.ndarray):
        x, paths = convert_images(images, size=size, channels=channels), [""] * len(images)
    else:
        paths = [str(p) for p in images]
        x = load_images(paths, size=size, channels=channels)
    net = model_from_record(record, device)
    probs = torch.softmax(predict_logits(net, torch.from_numpy(np.ascontiguousarray(x)), batch_size=batch_size,
                                         device=device), dim=1).numpy()  # (N, K)
    best = np.argsort(-probs, axis=1, kind="stable")[:, : min(top_k, len(classes))]  # (N, k)
    return pd.DataFrame({
        "path": paths,
        "predicted": [classes[row[0]] for row in best],
        "probability": [float(probs[i, row[0]]) for i, row in enumerate(best)],
        "top_k": ["; ".join(f"{classes[c]} {probs[i, c]:.3f}" for c in row) for i, row in enumerate(best)],
    })


def export(model: str | Path, out: str | Path, *, format: Literal["onnx", "torchscript"] = "onnx") -> Path:
    """Write a trained model (a model file of the pipeline) for use without this project: ``onnx`` (torch's ONNX
    exporter; input ``images`` uint8 (N, C, H, W), output ``logits`` (N, K), any batch size; the class names, the
    channels and the size in the model's metadata) or ``torchscript`` (a traced module, the same input and output;
    the class names as its extra file ``labelnoise.json``). The model normalises its input itself: feed the images
    as :func:`predict` converts them. Written atomically; returns ``out``.

        >>> labelnoise.export("models/final.pt", "model.onnx")  # doctest: +SKIP
    """
    import json

    import torch

    from labelnoise.io import atomic_path
    from labelnoise.models import model_from_record

    if format not in ("onnx", "torchscript"):
        raise ValueError(f"format: onnx or torchscript, got {format!r}")
    record, channels, size, classes = _read_model(model)
    meta = {"classes": classes,
            "channels": channels, "image_size": size, "model": str(record["model_name"]), "input": "uint8 (N, C, H, W)"}
    net = model_from_record(record, "cpu")
    example = torch.zeros((2, channels, size, size), dtype=torch.uint8)
    with atomic_path(out) as tmp:
        if format == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the input check traces as a constant
                traced = torch.jit.trace(net, example)
            torch.jit.save(traced, str(tmp), _extra_files={"labelnoise.json": json.dumps(meta)})
        else:
            import onnx

            torch.onnx.export(net, (example,), str(tmp), dynamo=True, input_names=["images"], output_names=["logits"],
                              dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
            graph = onnx.load(str(tmp))
            for key, value in meta.items():
                graph.metadata_props.add(key=key, value=json.dumps(value))
            onnx.save(graph, str(tmp))
    return Path(out)
