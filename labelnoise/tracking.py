"""MLflow tracking: the only module that imports mlflow.

One pipeline execution is one parent run; each stage that ran is a child run. DVC runs every
stage as its own process, so the stages of one `dvc repro` / `dvc exp run` find their common
parent through a *pipeline key*: the id of the DVC process that started them (or
``LABELNOISE_PIPELINE_ID`` when set). A stage called directly from the CLI is an execution of
its own. A stage that DVC skips never starts, so it leaves no run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import socket
import subprocess
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labelnoise.io import one_line, repo_root

# MLflow 3 opens an experiment in its GenAI view unless this tag names a model-training experiment.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
KEY_TAG = "labelnoise.pipeline_key"
KIND_TAG = "labelnoise.kind"  # "pipeline" or "stage"


class TrackingError(RuntimeError):
    """The MLflow store cannot be reached or written (one clear line)."""


# MLflow's SQL store logs every database error with its traceback (about 40 lines) before raising it; the raised
# error is what this module reports, in one line (a full disk, a read-only file)
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def shown(text: str) -> str:
    """``text`` (a store URI, or a message that quotes one) with every password in a URI replaced by ***."""
    return re.sub(r"(://[^/@:\s]+:)[^@\s]*@", r"\1***@", text)


def _unusable(uri: str, e: BaseException) -> TrackingError:
    """The one line for a store MLflow refuses: its reason (passwords hidden); for a folder (MLflow's file
    store, which MLflow 3 refuses unless told) the two ways out."""
    if "MLFLOW_ALLOW_FILE_STORE" in str(e):
        return TrackingError(f"MLflow store {shown(uri)} is a folder (MLflow's file store, which MLflow refuses "
                             "by default): use a database such as sqlite:///mlflow.db (base.tracking_uri's default), "
                             "or set MLFLOW_ALLOW_FILE_STORE=true to use the folder anyway")
    reason = shown(str(e).splitlines()[0][:300]) if str(e) else ""
    return TrackingError(f"MLflow store {shown(uri)} is not usable: {type(e).__name__}: {reason}")


def _sqlite_file(uri: str) -> str | None:
    """The file of a ``sqlite:///PATH`` store as written in the URI; None for other stores and ``:memory:``."""
    if uri.startswith("sqlite:///") and uri != "sqlite:///:memory:":
        return uri[len("sqlite:///"):]
    return None


def missing_store(uri: str) -> str | None:
    """The file or folder of a local store (``sqlite:///PATH``, ``file:PATH``) when it does not exist (reading it
    would create an empty one), else None."""
    path = _sqlite_file(uri) or (uri.removeprefix("file://").removeprefix("file:") if uri.startswith("file:") else None)
    return path if path is not None and not Path(path).exists() else None


def resolve_tracking_uri(uri: str, root: Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` overrides ``uri``; a relative sqlite or file store resolves against ``root``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or uri
    root = root or repo_root()
    path = _sqlite_file(uri)
    if path is not None and not path.startswith("/"):
        return f"sqlite:///{(root / path).resolve()}"
    if "://" not in uri:  # a plain folder: MLflow's file store
        return str((root / uri).resolve())
    return uri


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _proc_stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of a Linux process, from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    return int(fields[1]), fields[19]


def pipeline_key() -> str | None:
    """Identify the pipeline execution this stage belongs to (None: a standalone stage run)."""
    if key := os.environ.get("LABELNOISE_PIPELINE_ID"):
        return key
    if "DVC_STAGE" not in os.environ:
        return None
    # Walk up to the DVC process (DVC runs `$SHELL -c cmd`, the shell may or may not exec).
    pid = os.getppid()
    for _ in range(5):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            break
        stat = _proc_stat(pid)
        if stat is None:
            break
        if "dvc" in Path(cmdline.split(" ")[0]).name or " dvc " in f" {cmdline} " or "/dvc " in cmdline:
            return f"{socket.gethostname()}:{pid}:{stat[1]}"
        pid = stat[0]
    return f"{socket.gethostname()}:{os.getppid()}:{os.environ.get('DVC_EXP_NAME', '')}"


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


@dataclass(frozen=True)
class Execution:
    """A pipeline execution as the stages describe it (this module knows no config): the store, the parent run's
    name, the tags of the parent and its stage runs (what ran: dataset, noise, method, model, study), and every
    param, flattened with dots (the parent run's params)."""

    tracking_uri: str  # base.tracking_uri (MLFLOW_TRACKING_URI overrides it)
    experiment: str
    name: str
    tags: dict[str, str]
    params: dict[str, Any]


def run_tags(execution: Execution, root: Path) -> dict[str, str]:
    """Tags shared by the parent and its stage runs."""
    tags = {"git_commit": git_commit(root), **execution.tags}
    if name := os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = name
    tags |= {"mlflow.source.type": "LOCAL", "mlflow.source.name": "cli.py",  # the UI's Source column
             "mlflow.source.git.commit": tags["git_commit"]}
    return tags


def _log_params(client: Any, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, logged_param(v)) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


# How long a stage waits for a SQLite store another process holds locked (its writes retried) before it fails.
STORE_PATIENCE_S = 300.0


def _locked(e: BaseException) -> bool:
    return "database is locked" in str(e)


def _store_reason(e: BaseException) -> str:
    """What the database said (SQLAlchemy wraps it in lines of advice), else the error's first line."""
    said = re.search(r"\((?:sqlite3|psycopg2?|pymysql)[.\w]*\) ([^\n]+)", str(e))
    text = said.group(1) if said else (str(e).splitlines() or [type(e).__name__])[0]
    return shown(text.strip()[:300])


def _patient(uri: str, what: str, call: Callable[[], Any], patience: float | None = None) -> Any:
    """``call()``, retried while the store is locked by another process, for ``patience`` seconds (default
    STORE_PATIENCE_S); then TrackingError in one line naming the remedy."""
    patience = STORE_PATIENCE_S if patience is None else patience
    deadline = time.monotonic() + patience
    while True:
        try:
            return call()
        except Exception as e:
            if not _locked(e):
                raise TrackingError(f"MLflow store {shown(uri)} could not be written ({what}): {_store_reason(e)}"
                                    ) from e
            if time.monotonic() >= deadline:
                raise TrackingError(
                    f"MLflow store {shown(uri)} stayed locked by another process for {patience:g} s ({what}): end the "
                    "process that holds it (`fuser` on the file names it) and run the stage again (its finished "
                    "training is reused)") from None
            time.sleep(min(1.0, max(deadline - time.monotonic(), 0.0)))


@dataclass
class StageRun:
    """Handle for logging inside one stage's child run. Metrics the store cannot take now (another process holds
    a SQLite store locked) wait in ``pending`` and go with the next call; :func:`stage_run` writes the rest at the
    end, waiting up to STORE_PATIENCE_S for the store: a busy store never stops the training."""

    client: Any
    run_id: str
    parent_id: str
    uri: str = ""
    pending: list[tuple[str, list[Any]]] = field(default_factory=list)  # (run id, metrics) not yet written
    retry_at: float = 0.0  # after a failed write, buffered writes wait until then (MLflow itself waits 20 s)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None, *, on_parent: bool = False) -> None:
        """Log ``metrics`` (at ``step``); an undefined value (None, NaN: e.g. no clean subset) is left out."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items() if v is not None and math.isfinite(v)]
        self.pending += [(run_id, batch) for run_id in ((self.run_id, self.parent_id) if on_parent
                                                         else (self.run_id,))]
        self.flush(patience=0.0)

    def flush(self, patience: float | None = None) -> None:
        """Write the pending metrics, in order; a locked store is waited for ``patience`` seconds (0: one try,
        the rest stays pending, and the next try waits 30 s)."""
        if patience == 0.0 and time.monotonic() < self.retry_at:
            return
        while self.pending:
            run_id, batch = self.pending[0]
            try:
                _patient(self.uri, "logging metrics",
                         lambda run_id=run_id, batch=batch: self.client.log_batch(run_id, metrics=batch), patience)
            except TrackingError:
                if patience == 0.0:
                    self.retry_at = time.monotonic() + 30.0
                    return
                raise
            self.pending.pop(0)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Log the file ``path``; an output the stage has written but not yet committed (see
        :func:`labelnoise.io.all_or_nothing`) is logged under its final name."""
        import shutil
        import tempfile

        from labelnoise.io import readable

        source = readable(path)
        if source == Path(path):
            _patient(self.uri, "logging an artifact", lambda: self.client.log_artifact(self.run_id, str(path),
                                                                                        artifact_path))
            return
        with tempfile.TemporaryDirectory() as tmp:
            named = Path(tmp) / Path(path).name
            shutil.copyfile(source, named)
            _patient(self.uri, "logging an artifact", lambda: self.client.log_artifact(self.run_id, str(named),
                                                                                        artifact_path))

    def set_tags(self, tags: dict[str, str], *, on_parent: bool = False) -> None:
        for run_id in (self.run_id, self.parent_id) if on_parent else (self.run_id,):
            for k, v in tags.items():
                _patient(self.uri, "setting tags", lambda run_id=run_id, k=k, v=v: self.client.set_tag(run_id, k,
                                                                                                      str(v)))


    def log_datasets(self, files: Mapping[str, str | Path], *, context: str = "training") -> None:
        """Log the files ``files`` ({name: path}) as the run's (and its parent's) dataset inputs: the UI's
        Dataset column and lineage. Each one's digest is the file's md5, the value dvc.lock records for it."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        from labelnoise.io import readable

        inputs = []
        for name, path in files.items():
            digest = hashlib.md5(readable(path).read_bytes()).hexdigest()
            source = json.dumps({"uri": Path(path).as_posix(), "project": str(repo_root())})
            inputs.append(DatasetInput(Dataset(name=name, digest=digest, source_type="local", source=source),
                                       tags=[InputTag("mlflow.data.context", context)]))
        for run_id in (self.run_id, self.parent_id):
            _patient(self.uri, "logging datasets", lambda run_id=run_id: self.client.log_inputs(run_id, inputs))

    def log_model(self, model_file: str | Path, *, registered: str, tags: Mapping[str, str], alias: str = "",
                  score: str = "test_acc", comparable: str = "test_split") -> str:
        """Log the model file ``model_file`` (a model record the stage wrote) as this run's MLflow model, the
        pyfunc :class:`labelnoise.serving.ImageClassifier` (image files or uint8 images of any size in, class names
        and probabilities out; the project's ``labelnoise`` package with it, so ``mlflow.pyfunc.load_model`` needs
        no checkout), register it as a new version of ``registered`` with ``tags``, and point ``alias`` (if any) at
        it only where it beats the version that alias names (:func:`beats`: by the tag ``score``, among versions
        with equal tag ``comparable``); MLflow's own ``models:/NAME/latest`` names the newest version. Returns the
        version."""
        import tempfile

        import mlflow.pyfunc
        import torch

        from labelnoise.io import readable

        data = readable(model_file).read_bytes()  # a stage's output is still under its temporary name
        md5 = hashlib.md5(data).hexdigest()  # which file a version is (describe_model)
        # the model from its code (labelnoise/serving.py sets it), not a pickled object; no progress bar on stderr
        with tempfile.TemporaryDirectory() as tmp, env_defaults({"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}):
            named = Path(tmp) / Path(model_file).name  # the artifact is named as the output is
            named.write_bytes(data)
            mlflow.pyfunc.save_model(Path(tmp) / "model", python_model=str(Path(__file__).parent / "serving.py"),
                                     artifacts={"model": str(named)},
                                     code_paths=[str(Path(__file__).parent)],
                                     pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy", "pandas",
                                                       "pillow"])
            _patient(self.uri, "logging a model",
                     lambda: self.client.log_artifacts(self.run_id, str(Path(tmp) / "model"), "model"))

        def register() -> str:
            try:
                self.client.create_registered_model(registered, description="labelnoise models of one dataset: "
                                                    "uint8 images (B, C, H, W) -> logits (B, K)")
            except Exception as e:
                if "already exists" not in str(e).lower():
                    raise
            version = self.client.create_model_version(registered, source=f"runs:/{self.run_id}/model",
                                                       run_id=self.run_id, tags={**tags, "model_md5": md5})
            if alias and beats(dict(tags), _alias_tags(self.client, registered, alias), score, comparable):
                self.client.set_registered_model_alias(registered, alias, version.version)
            return str(version.version)

        return _patient(self.uri, "registering a model", register)


    def describe_model(self, registered: str, model_file: str | Path, text: str) -> int:
        """Set ``text`` (a model card) as the description of the versions of ``registered`` that are the file
        ``model_file`` (by its md5, which :meth:`log_model` tags them with). Returns how many."""
        from labelnoise.io import readable

        md5 = hashlib.md5(readable(model_file).read_bytes()).hexdigest()

        def describe() -> int:
            versions = self.client.search_model_versions(f"name = '{registered}' and tags.model_md5 = '{md5}'")
            for v in versions:
                self.client.update_model_version(registered, v.version, description=text)
            return len(versions)

        return _patient(self.uri, "describing a model", describe)


MLFLOW_URIS = ("models:/", "runs:/")  # a registered model version (models:/NAME@ALIAS, models:/NAME/3) or a run's


def fetch_model_file(model_uri: str, tracking_uri: str | None, folder: Path) -> Path:
    """The model file an MLflow model of the pipeline wraps (:meth:`StageRun.log_model`), downloaded from the
    store ``tracking_uri`` (None: MLflow's default) into ``folder``. A model MLflow cannot find, or one without a
    model file, is one line."""
    import mlflow.artifacts

    try:
        with env_defaults({"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}):
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(folder),
                                                             tracking_uri=tracking_uri))
    except Exception as e:  # noqa: BLE001 - MLflow's errors for a model it cannot find are of many kinds
        raise FileNotFoundError(f"{model_uri}: no such MLflow model in the store {shown(tracking_uri or '')} "
                                f"({one_line(e)[:200]})") from None
    files = sorted(local.glob("artifacts/*.pt"))
    if not files:
        raise ValueError(f"{model_uri} is not a model the pipeline logged (no model file in its artifacts)")
    return files[0]


def _alias_tags(client: Any, registered: str, alias: str) -> dict[str, str] | None:
    """The tags of the version ``alias`` names (None: it names none yet)."""
    try:
        return dict(client.get_model_version_by_alias(registered, alias).tags)
    except Exception as e:  # MLflow: RESOURCE_DOES_NOT_EXIST for an alias not set
        if "not found" in str(e).lower() or "does not exist" in str(e).lower() or "RESOURCE_DOES_NOT_EXIST" in str(e):
            return None
        raise


def beats(new: Mapping[str, str], holder: Mapping[str, str] | None, score: str, comparable: str) -> bool:
    """Whether a new version (its tags ``new``) takes an alias from the version holding it (``holder``): when
    there is none, or when the holder has no ``score`` to compare; else only with the same ``comparable`` tag (the
    same test split) and a strictly higher ``score`` (a tie keeps the holder). Another test split: not comparable,
    the holder keeps it."""
    if holder is None or score not in holder or comparable not in holder:
        return True
    if holder[comparable] != new.get(comparable):
        return False
    return float(new.get(score, "-inf")) > float(holder[score])


class NullRun:
    """A StageRun that records nothing: the ranks other than 0 under torchrun."""

    def log_metrics(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log_datasets(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log_model(self, *args: Any, **kwargs: Any) -> str:
        return ""

    def log_artifact(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_tags(self, *args: Any, **kwargs: Any) -> None:
        pass


def _experiment_id(client: Any, name: str, root: Path) -> str:
    """The experiment ``name``, created if new, and marked as model training (an existing one too)."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        # Artifacts live beside the store at the repo root, not in a `dvc exp` temp copy.
        location = (root / "mlartifacts" / name).resolve().as_uri()
        try:
            client.create_experiment(name, artifact_location=location, tags=dict([EXPERIMENT_KIND]))
        except Exception:  # created concurrently by another worker
            pass
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise TrackingError(f"experiment {name!r} could not be created")
    if exp.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
        client.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
    return exp.experiment_id


def _find_or_create_parent(client: Any, exp_id: str, key: str | None, execution: Execution,
                           tags: dict[str, str]) -> str:
    if key is not None:
        found = client.search_runs([exp_id], filter_string=f"tags.`{KEY_TAG}` = '{key}'", max_results=1)
        if found:
            run_id = found[0].info.run_id
            client.update_run(run_id, status="RUNNING")
            return run_id
    name = " · ".join([execution.name, *([exp] if (exp := os.environ.get("DVC_EXP_NAME")) else [])])
    parent = client.create_run(exp_id, run_name=name,
                               tags={**tags, KIND_TAG: "pipeline", KEY_TAG: key or f"standalone:{time.time_ns()}"})
    _log_params(client, parent.info.run_id, execution.params)
    return parent.info.run_id


# A store check must fail in seconds, not after MLflow's default HTTP retries (7, with back-off).
_CHECK_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def check_store(tracking_uri: str, experiment: str) -> str:
    """Raise ``TrackingError`` (one line) unless the MLflow store can be reached and written; returns its URI.

    Stages call this before any work, so an unusable store never costs a training run. A SQLite store
    needs its folder writable (journal files) and the file, if present; any store must answer the
    experiment lookup (and create the experiment when it is new).
    """
    root = repo_root()
    uri = resolve_tracking_uri(tracking_uri, root)
    db = Path(path) if (path := _sqlite_file(uri)) is not None else None
    if db is not None:  # a SQLite file, checked directly: MLflow retries for minutes
        import sqlite3

        if not db.parent.is_dir():
            raise TrackingError(f"MLflow store {shown(uri)} is in a folder that does not exist: "
                                "fix base.tracking_uri or MLFLOW_TRACKING_URI")
        try:
            con = sqlite3.connect(db, timeout=STORE_PATIENCE_S)
            try:
                con.execute("BEGIN IMMEDIATE")  # takes the write lock: fails unless the file can be written
                con.rollback()
            finally:
                con.close()
        except sqlite3.Error as e:
            if _locked(e):
                raise TrackingError(f"MLflow store {shown(uri)} is locked by another process (still after "
                                    f"{STORE_PATIENCE_S:g} s): end the process that holds it (`fuser` on the file "
                                    "names it), then run again") from None
            raise TrackingError(f"MLflow store {shown(uri)} is not writable ({e}): "
                                "fix base.tracking_uri or MLFLOW_TRACKING_URI") from None
    try:
        with no_http_retries(), _setup_lock(db):  # MLflow creates a new store's tables without a lock of its own
            _experiment_id(_client(uri), experiment, root)
    except Exception as e:  # noqa: BLE001 - any store failure becomes one line
        raise _unusable(uri, e) from None
    return uri


@contextmanager
def env_defaults(values: dict[str, str]) -> Iterator[None]:
    """Inside: the environment variables ``values`` where the user set none (theirs are kept), removed after."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update({k: v for k, v in values.items() if saved[k] is None})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)


def no_http_retries() -> Any:
    """Inside: a tracking server that does not answer fails in seconds (unless the user set MLflow's own
    variables), not after MLflow's default HTTP retries with back-off (minutes)."""
    return env_defaults(_CHECK_HTTP_ENV)


@contextmanager
def _setup_lock(db: Path | None) -> Iterator[None]:
    """Hold an exclusive flock on a SQLite store's file ``db`` (None: no file, no lock), so that processes
    starting at once (two DVC queue workers on a fresh store) create its tables and the experiment one after
    the other: unlocked, the second fails with "table ... already exists". flock does not touch SQLite's own
    fcntl locks."""
    if db is None:
        yield
        return
    import fcntl

    with open(db, "rb") as f:  # check_store's connect made the file
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def stage_run(stage: str, execution: Execution, *, params: Mapping[str, Any]) -> Iterator[StageRun]:
    """Open the child run for ``stage`` under ``execution``'s parent run, with the stage's own ``params`` (flat).

    The child ends FINISHED, KILLED on Ctrl-C, or FAILED if the block raises; the parent is marked finished after
    each stage. Store problems surface here, before any work starts, as ``TrackingError``.
    """
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    from labelnoise.distributed import is_main

    if not is_main():  # torchrun: rank 0 alone records the stage
        yield NullRun()
        return
    root = repo_root()
    uri = resolve_tracking_uri(execution.tracking_uri, root)
    tags = run_tags(execution, root)
    try:
        client = _client(uri)
        exp_id = _experiment_id(client, execution.experiment, root)
        parent_id = _find_or_create_parent(client, exp_id, pipeline_key(), execution, tags)
        child = client.create_run(exp_id, run_name=stage,
                                  tags={**tags, KIND_TAG: "stage", MLFLOW_PARENT_RUN_ID: parent_id})
        _log_params(client, child.info.run_id, dict(params))
    except Exception as e:  # noqa: BLE001 - any store failure becomes one line
        raise _unusable(uri, e) from None
    run = StageRun(client, child.info.run_id, parent_id, uri)
    status = "FAILED"
    try:
        yield run
        run.flush()
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        for run_id in (run.run_id, parent_id):
            _patient(uri, "ending the run", lambda run_id=run_id: client.set_terminated(run_id, status))


# ----------------------------------------------------------------------------- comparison
def last_pipelines(uri: str, experiment: str, n: int) -> list[dict[str, Any]]:
    """The last ``n`` pipeline executions: {'run_id', 'start', 'params', 'metrics', 'tags'}, newest first."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{KIND_TAG}` = 'pipeline'",
                              order_by=["attributes.start_time DESC"], max_results=n)
    return [{"run_id": r.info.run_id, "name": r.info.run_name, "start": r.info.start_time, "status": r.info.status,
             "params": dict(r.data.params), "metrics": dict(r.data.metrics), "tags": dict(r.data.tags)} for r in runs]


def study_runs(uri: str, experiment: str, study: str, curves: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The finished pipeline executions tagged ``study`` (newest first), as :func:`last_pipelines` gives them,
    plus 'end' (ms) and the DVC experiment name in 'tags'. ``curves``: per-epoch metrics of the execution's
    train_student stage to add as 'curves' {metric: [(epoch, value), ...]} (empty where the stage has none)."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    quoted = study.replace("'", "\\'")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=50_000,
                              filter_string=f"tags.`{KIND_TAG}` = 'pipeline' and tags.study = '{quoted}' "
                                            "and attributes.status = 'FINISHED'")
    found = [{"run_id": r.info.run_id, "start": r.info.start_time, "end": r.info.end_time, "status": r.info.status,
              "params": dict(r.data.params), "metrics": dict(r.data.metrics), "tags": dict(r.data.tags)}
             for r in runs]
    if curves:  # one query for every finished train_student stage; the newest of each execution is its own
        latest: dict[str, str] = {}
        for r in client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=50_000,
                                    filter_string=f"tags.`{KIND_TAG}` = 'stage' and attributes.run_name = "
                                                  "'train_student' and attributes.status = 'FINISHED'"):
            latest.setdefault(r.data.tags.get("mlflow.parentRunId", ""), r.info.run_id)
        for run in found:
            stage = latest.get(run["run_id"])
            run["curves"] = {key: sorted((m.step, m.value) for m in client.get_metric_history(stage, key))
                             for key in curves} if stage else {}
    return found


def differing_params(runs: list[dict[str, Any]]) -> list[str]:
    """Param keys whose values are not the same in all ``runs``."""
    keys = sorted({k for r in runs for k in r["params"]})
    return [k for k in keys if len({r["params"].get(k) for r in runs}) > 1]


def logged_param(value: Any) -> str:
    """A param value as :func:`_log_params` stores it (MLflow keeps params as strings)."""
    return str(value)[:6000]


def matching_pipelines(
    uri: str,
    experiment: str,
    params: Mapping[str, Any],
    *,
    status: str = "FINISHED",
    exclude: Collection[str] = (),
    page_size: int = 200,
) -> Iterator[dict[str, Any]]:
    """Pipeline executions (parent runs) with ``status`` whose logged params equal ``params``, newest first.

    Values are compared as logged (:func:`logged_param`, params flattened with dots as by
    :func:`labelnoise.config.flatten`); a run without one of the keys does not match. ``exclude``: run ids
    to skip (the execution asking). Yields {'run_id', 'start', 'end', 'status', 'params', 'metrics', 'tags'}
    (times in ms); pages of ``page_size`` runs are fetched as the caller consumes them, so stop early.
    """
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return
    wanted = {k: logged_param(v) for k, v in params.items()}
    query = f"tags.`{KIND_TAG}` = 'pipeline' and attributes.status = '{status}'"
    token = None
    while True:
        page = client.search_runs(
            [exp.experiment_id],
            filter_string=query,
            max_results=page_size,
            order_by=["attributes.start_time DESC"],
            page_token=token,
        )
        for r in page:
            logged = r.data.params
            if r.info.run_id in exclude or any(logged.get(k) != v for k, v in wanted.items()):
                continue
            yield {
                "run_id": r.info.run_id,
                "start": r.info.start_time,
                "end": r.info.end_time,
                "status": r.info.status,
                "params": dict(logged),
                "metrics": dict(r.data.metrics),
                "tags": dict(r.data.tags),
            }
        token = page.token
        if not token:
            return
