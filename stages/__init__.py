"""The pipeline's stages, one module each (`stages/<stage>.py`, DVC stage `<stage>`, CLI command `<stage-with-dashes>`),
and the one map of the params each reads. Importing this package loads nothing else of the project."""

# The training recipe's keys each use of it reads (a use overrides the others: see its own params).
_RECIPE = ("model", "pretrained", "epochs", "batch_size", "epoch_size", "eval_batch_size", "lr", "momentum", "nesterov",
           "weight_decay", "schedule", "milestones", "gamma", "warmup_epochs", "onecycle_pct_start", "augment",
           "crop_padding", "precision", "channels_last", "label_smoothing")


def _train_but(*overridden: str) -> tuple[str, ...]:
    return tuple(f"train.{k}" for k in _RECIPE if k not in overridden)


# What each stage reads of the params: whole sections or single keys. dvc.yaml's `params` (so DVC re-runs exactly
# the stages a change concerns), the params of the stage's MLflow child run and the CLI help follow this one map;
# tests/test_stage_params.py checks dvc.yaml against it.
STAGE_PARAMS: dict[str, tuple[str, ...]] = {
    "download": ("data",),
    # open_set, massive from another source: another dataset's images (data.root, mirrors); instance: the reference
    # classifier trains with the recipe (noise.instance overrides its network, epochs, lr, batch size, precision)
    "inject_noise": ("data", "noise", "base.device", "base.deterministic",
                     *_train_but("model", "pretrained", "epochs", "lr", "batch_size", "precision")),
    # folds of the recipe's network, estimate.epochs each; the misfit check's with student.clean_only's budget
    "estimate_noise": ("base.seed", "base.device", "base.deterministic", "estimate", "student.clean_only",
                       *_train_but("epochs")),
    # dd: the recording student trains with the recipe for mentor.dd_epochs epochs
    "pretrain_mentor": ("base.seed", "base.device", "base.deterministic", "mentor", *_train_but("epochs")),
    "train_student": ("base.seed", "base.device", "base.deterministic", "mentor", "train", "student"),
    # both phases: the recipe with correction's own lr, schedule and epochs; the network is the student's. The
    # trusted teacher (correction.teacher): the recipe with student.clean_only's epochs and augmentation
    "correct_labels": ("base.seed", "base.device", "base.deterministic", "base.model_alias", "correction",
                       "student.clean_only", *_train_but("model", "pretrained", "epochs")),
    "evaluate": ("base.device", "evaluate"),
}


# DVC stages that compute nothing and read no params (a CLI command each, no MLflow run): own_files lists data/own
# for the stages that read it, so that DVC never opens a file of it.
BOOKKEEPING = ("own_files",)


def stage_params_help(stage: str) -> str:
    """The params a stage reads, for its CLI help: sections, and single keys grouped by section."""
    sections = [k for k in STAGE_PARAMS[stage] if "." not in k]
    keys: dict[str, list[str]] = {}
    for k in STAGE_PARAMS[stage]:
        if "." in k:
            keys.setdefault(k.split(".")[0], []).append(k.split(".", 1)[1])
    parts = [f"`{s}`" for s in sections] + [f"`{s}.{{{', '.join(v)}}}`" for s, v in keys.items()]
    return "params " + ", ".join(parts)
