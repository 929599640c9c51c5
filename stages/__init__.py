"""The pipeline's stages, one module each (`stages/<stage>.py`, DVC stage `<stage>`, CLI command `<stage-with-dashes>`),
and the one map of the params each reads. Importing this package loads nothing else of the project."""

import functools
from dataclasses import dataclass
from pathlib import Path


def project_root() -> Path:
    """The project the stages run in: this checkout (``stages/`` beside ``dvc.yaml``), or, for the installed
    ``labelnoise`` command, the working folder (a clone of the project, where its ``dvc.yaml`` is)."""
    here = Path(__file__).resolve().parent.parent
    return here if (here / "dvc.yaml").is_file() else Path.cwd()

# The training recipe's keys each use of it reads (a use overrides the others: see its own params).
_RECIPE = ("model", "pretrained", "epochs", "batch_size", "epoch_size", "eval_batch_size", "lr", "momentum", "nesterov",
           "weight_decay", "schedule", "milestones", "lr_gamma", "warmup_epochs", "onecycle_pct_start", "augment",
           "crop_padding", "precision", "channels_last", "label_smoothing")


def _train_but(*overridden: str) -> tuple[str, ...]:
    return tuple(f"train.{k}" for k in _RECIPE if k not in overridden)


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline: DVC stage ``name`` = module ``stages/<name>.py`` = CLI command ``name`` with
    dashes = MLflow child run ``name``. dvc.yaml follows this record (tests/test_stage_params.py checks it): its
    ``params`` are ``params`` (so DVC re-runs exactly the stages a change concerns; the stage's MLflow run logs them
    and the stage is handed a config holding only them), its outs / metrics / plots are the dvc.yaml ``vars``
    named in ``outputs``."""

    name: str
    summary: str  # the CLI help's first sentence
    params: tuple[str, ...] = ()  # whole sections or single keys it reads
    outputs: tuple[str, ...] = ()  # names of dvc.yaml vars: every path the stage writes
    torchrun: bool = False  # may run as several processes (it trains networks)
    tracked: bool = True  # an MLflow child run; False: bookkeeping for DVC (reads no params, computes nothing)
    resumable: bool = False  # keeps resume checkpoints (models/checkpoints/<name>*): a stopped run goes on from them


STAGES: tuple[Stage, ...] = (
    Stage("own_files", "list the files of data/own (path, size, time; nothing read) for the stages that read them.",
          outputs=("own_files",), tracked=False),
    Stage("download", "fetch and verify the dataset, cut train / clean / val / test.", ("data",),
          ("prepared", "data_report")),
    # open_set, massive from another source: another dataset's images (data.root, mirrors); instance: the reference
    # classifier trains with the recipe (noise.instance overrides its network, epochs, lr, batch size, precision)
    Stage("inject_noise", "corrupt the train labels with a named noise model; record which changed.",
          ("data", "noise", "base.device", "base.deterministic",
           *_train_but("model", "pretrained", "epochs", "lr", "batch_size", "precision")),
          ("noisy", "noise_plot", "noise_report")),
    # folds of the recipe's network, estimate.epochs each; the misfit check's with the trusted budget
    Stage("estimate_noise", "estimate the noise rate and transition matrix from the noisy labels and the trusted "
          "subset.", ("base.seed", "base.device", "base.deterministic", "estimate", "trusted",
                      *_train_but("epochs")),
          ("noise_estimate_plot", "noise_estimate", "trusted_probs"), resumable=True),
    # dd: the recording student trains with the recipe for mentor.dd_epochs epochs; student.method: whether the
    # student uses a mentor at all (if not, a record of no mentor, whatever the mentor params)
    Stage("pretrain_mentor", "fit the MentorNet to a predefined curriculum (pd) or the clean subset (dd), for a "
          "method that uses one.", ("base.seed", "base.device", "base.deterministic", "student.method", "mentor",
                                    *_train_but("epochs")),
          ("mentor_model", "mentor_plots", "mentor_report"), torchrun=True),
    Stage("train_student", "train the student on the noisy labels with `student.method` (resumes from its "
          "checkpoint).", ("base.seed", "base.device", "base.deterministic", "train", "trusted", "student"),
          ("student_model", "student_best", "student_weights", "curves"), torchrun=True, resumable=True),
    # both phases: the recipe with correction's own lr, schedule and epochs; the network is the student's. The
    # trusted teacher (correction.teacher): the recipe with the trusted budget's epochs and augmentation
    Stage("correct_labels", "correct the train labels, then train the final network on them.",
          ("base.seed", "base.device", "base.deterministic", "base.model_alias", "correction", "trusted",
           *_train_but("model", "pretrained", "epochs")),
          ("corrected", "final_model", "correction_plots", "correction_report"), torchrun=True, resumable=True),
    Stage("evaluate", "test accuracy, per-class accuracy, noise detection, plots, metrics.json.",
          ("base.device", "evaluate"), ("plots_dir", "label_issues", "model_card", "metrics")),
)
_BY_NAME = {s.name: s for s in STAGES}
TRACKED = tuple(s.name for s in STAGES if s.tracked)  # the stages proper, in pipeline order


def get_stage(name: str) -> Stage:
    return _BY_NAME[name]


# What each tracked stage reads of the params (the records' ``params``, by name).
STAGE_PARAMS: dict[str, tuple[str, ...]] = {s.name: s.params for s in STAGES if s.tracked}


def stage_params_help(stage: str) -> str:
    """The params a stage reads, for its CLI help: sections, and single keys grouped by section."""
    sections = [k for k in STAGE_PARAMS[stage] if "." not in k]
    keys: dict[str, list[str]] = {}
    for k in STAGE_PARAMS[stage]:
        if "." in k:
            keys.setdefault(k.split(".")[0], []).append(k.split(".", 1)[1])
    parts = [f"`{s}`" for s in sections] + [f"`{s}.{{{', '.join(v)}}}`" for s, v in keys.items()]
    return "params " + ", ".join(parts)


# ----------------------------------------------------------------------------- output paths (dvc.yaml vars)
DVC_FILE = project_root() / "dvc.yaml"


def _load_paths(dvc_file: str | Path = "dvc.yaml") -> dict[str, Path]:
    """Output paths as declared once in dvc.yaml's ``vars`` (relative to the working directory); the file is
    parsed again only when it changed."""
    stat = Path(dvc_file).stat()
    return dict(_parse_paths(str(dvc_file), stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=4)
def _parse_paths(dvc_file: str, mtime_ns: int, size: int) -> dict[str, Path]:
    import yaml

    spec = yaml.load(Path(dvc_file).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506
    paths: dict[str, Path] = {}
    for block in spec.get("vars", []):
        paths.update({k: Path(v) for k, v in block.items()})
    return paths


def stage_outputs(stage: str, dvc_file: str | Path = DVC_FILE) -> list[Path]:
    """Every path stage ``stage`` writes (its record's ``outputs``: dvc.yaml vars, resolved there)."""
    paths = _load_paths(dvc_file)
    return [paths[var] for var in get_stage(stage).outputs]


class _Paths:
    """Lazy view of dvc.yaml's vars, so importing a stage never touches the disk."""

    def __getattr__(self, name: str) -> Path:
        paths = _load_paths(DVC_FILE)
        if name not in paths:
            raise AttributeError(name)
        return paths[name]


PATHS = _Paths()
