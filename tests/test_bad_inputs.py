"""The bad-input matrix: each row is one mistake a user can make, run through the CLI on a finished tiny
pipeline. Every row must give one clear line on stderr (``error: ...`` naming the problem), a non-zero exit,
and write nothing: every file of the workspace is byte-for-byte as before (the MLflow store may record
the failed run; it is not a stage output)."""

from __future__ import annotations

import dataclasses
import gzip
import shutil
import socket
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from cli import app
from labelnoise import tracking
from labelnoise.datasets import load_prepared, save_prepared
from tests.helpers import nan_from, new_store, tiny_workspace, write_digits

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()
STORE_FILES = ("mlflow.db", "mlflow.db-journal", "mlartifacts")


@dataclass(frozen=True)
class Row:
    name: str
    args: list[str]  # the CLI call
    code: int  # expected exit status
    says: str  # the error line contains this
    setup: Callable[[Path], None] | None = None  # damages the workspace before the call
    env: dict[str, str] = field(default_factory=dict)  # extra environment (MLflow store)
    patch: Callable[[pytest.MonkeyPatch], None] | None = None  # changes the code under test (an injected fault)


def _edit_params(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def setup(work: Path) -> None:
        raw = yaml.safe_load((work / "params.yaml").read_text())
        change(raw)
        (work / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return setup


def _write(rel: str, data: bytes) -> Callable[[Path], None]:
    def setup(work: Path) -> None:
        (work / rel).write_bytes(data)
    return setup


def _truncate(rel: str) -> Callable[[Path], None]:
    def setup(work: Path) -> None:
        data = (work / rel).read_bytes()
        (work / rel).write_bytes(data[: len(data) // 2])
    return setup


def _remove(rel: str) -> Callable[[Path], None]:
    return lambda work: (work / rel).unlink()


def _mirror(kind: str) -> Callable[[Path], None]:
    """An MNIST mirror folder whose archives are truncated, or whole gzip files of the wrong content."""
    def setup(work: Path) -> None:
        folder = work / "mirror"
        folder.mkdir()
        for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                     "t10k-labels-idx1-ubyte"):
            data = gzip.compress(b"\x00\x00\x08\x01" + bytes(1000), mtime=0)
            (folder / f"{stem}.gz").write_bytes(data[:20] if kind == "truncated" else data)
    return setup


def _prepared_with(transform: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
                   ) -> Callable[[Path], None]:
    """Rewrite data/prepared.npz with (images, labels) transformed (a different dataset under the same name)."""
    def setup(work: Path) -> None:
        p = load_prepared(work / "data/prepared.npz")
        images, labels = transform(p.images, p.labels)
        save_prepared(work / "data/prepared.npz", dataclasses.replace(p, images=images, labels=labels))
    return setup


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _student_nan_from(forward: int) -> Callable[[pytest.MonkeyPatch], None]:
    """The student's output turns NaN from its ``forward``-th training forward: a divergence at a known step on
    every CPU (a huge learning rate diverges at an epoch that depends on the CPU's floating point)."""
    def patch(mp: pytest.MonkeyPatch) -> None:
        import labelnoise.steps.student as step

        create = step.create_model
        mp.setattr(step, "create_model", lambda *a, **kw: nan_from(create(*a, **kw), forward))
    return patch


MIRROR = ["-S", "data.dataset=mnist", "-S", "data.download=false", "-S", "data.mirrors.mnist=[mirror]"]
# your own images: 300 digits as PNG files under own/ (tests.helpers.write_digits), read as 8x8 grayscale
FOLDER = ["-S", "data.dataset=folder", "-S", "data.image_size=8", "-S", "data.channels=1", "-S", "data.trusted_size=0",
          "-S", "data.test_size=50"]


def _own(layout: str, *, corrupt: tuple[int, ...] = (), then: Callable[[Path], None] | None = None
         ) -> Callable[[Path], None]:
    """Digits written as a user's image folder or manifest under work/own, then changed by ``then``."""
    def setup(work: Path) -> None:
        write_digits(work / "own", layout=layout, n=300, corrupt=corrupt)
        if then is not None:
            then(work / "own")
    return setup


def _unknown_class_row(own: Path) -> None:
    manifest = own / "manifest.csv"
    lines = manifest.read_text().splitlines()
    test_row = next(i for i, line in enumerate(lines) if line.endswith(",test"))
    lines[test_row] = lines[test_row].split(",")[0] + ",eleven,test"
    manifest.write_text("\n".join(lines) + "\n")


def _manifest_row(row: int, change: Callable[[list[str]], list[str]]) -> Callable[[Path], None]:
    """Change the cells (path, label, split) of the manifest's ``row`` (the header is row 1)."""
    def then(own: Path) -> None:
        lines = (own / "manifest.csv").read_text().splitlines()
        lines[row - 1] = ",".join(change(lines[row - 1].split(",")))
        (own / "manifest.csv").write_text("\n".join(lines) + "\n")
    return then


def _only_class(own: Path) -> None:
    for folder in own.iterdir():
        if folder.name != "seven":
            shutil.rmtree(folder)


def _bomb(own: Path) -> None:
    """The first image of class one becomes a PNG whose header claims 30000 x 30000 pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    first = sorted((own / "one").iterdir())[0]
    first.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0))
                      + chunk(b"IEND", b""))


def _full_disk(mp: pytest.MonkeyPatch) -> None:
    """torch.save fails as it does on a full disk (its zip writer's own message)."""
    def full(*args: object, **kwargs: object) -> None:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
    mp.setattr(torch, "save", full)


_HELD: list[sqlite3.Connection] = []  # stores held locked by the rows that need it (each row's own copy)


def _lock_store(work: Path) -> None:
    """Another process (here: a connection) holds the row's SQLite store in an exclusive transaction."""
    con = sqlite3.connect(work / "mlflow.db", isolation_level=None)
    con.execute("BEGIN EXCLUSIVE")
    _HELD.append(con)


def _full_store(work: Path) -> None:
    """The row's SQLite store refuses every new metric as a full disk does (a trigger: SQLite's own error)."""
    with sqlite3.connect(work / "mlflow.db") as con:
        con.execute("CREATE TRIGGER full BEFORE INSERT ON metrics BEGIN SELECT RAISE(ABORT, 'database or disk is "
                    "full'); END")


def _pt_file(work: Path) -> None:
    n = len(load_prepared(work / "data/prepared.npz").labels)
    torch.save({"worse_label": np.zeros(n, dtype=np.int64)}, work / "given.pt")

ROWS = [
    # ---- params
    Row("unknown key on the command line", ["train-student", "-S", "student.learning_rate=0.1"], 2,
        "student.learning_rate: unknown parameter"),
    Row("unknown key in params.yaml", ["inject-noise"], 2, "noise.sigma: unknown parameter",
        setup=_edit_params(lambda p: p["noise"].update(sigma=0.1))),
    Row("noise key of the former layout on the command line", ["inject-noise", "-S", "noise.delta=0.5"], 2,
        "noise.delta: renamed noise.structured.delta"),
    Row("noise key of the former layout in params.yaml", ["inject-noise"], 2,
        "noise.reference_epochs: renamed noise.instance.epochs",
        setup=_edit_params(lambda p: p["noise"].update(reference_epochs=8))),
    Row("former noise.transition, a matrix where its block is now", ["inject-noise", "-S", "noise.transition=[[1]]"],
        2, "noise.transition: renamed noise.transition.matrix"),
    Row("former noise.file on the command line", ["inject-noise", "-S", "noise.kind=given", "-S",
                                                  "noise.file=given.npy"], 2, "noise.file: renamed noise.given.file"),
    Row("wrong type (int)", ["download", "-S", "data.trusted_size=abc"], 2, "data.trusted_size: must be an integer"),
    Row("wrong type (bool)", ["train-student", "-S", "train.nesterov=maybe"], 2,
        "train.nesterov: must be true or false"),
    Row("noise rate below 0", ["inject-noise", "-S", "noise.rate=-0.1"], 2, "noise.rate: must be >= 0.0"),
    Row("noise rate above 1", ["inject-noise", "-S", "noise.rate=1.5"], 2, "noise.rate: must be <= 1.0"),
    Row("rate the class map cannot reach", ["inject-noise", "-S", "noise.kind=asymmetric", "-S",
                                             "noise.asymmetric.class_map={7: 1, 9: 4}"], 1, "cannot be reached",
        setup=_prepared_with(lambda x, y: (x, np.where(y >= 5, y - 5, y)))),  # classes 5..9 never occur
    Row("transition matrix not row-stochastic", ["inject-noise", "-S", "noise.kind=transition", "-S",
                                                  f"noise.transition.matrix={[[0.5] * 10] * 10}"], 2,
        "noise.transition.matrix[0]: row must be non-negative and sum to 1"),
    Row("transition matrix not square", ["inject-noise", "-S", "noise.kind=transition", "-S",
                                          "noise.transition.matrix=[[1.0, 0.0]]"], 2,
        "noise.transition.matrix: must be a square K x K matrix"),
    Row("transition matrix of the wrong size", ["inject-noise", "-S", "noise.kind=transition", "-S",
                                                 "noise.transition.matrix=[[1.0, 0.0], [0.0, 1.0]]"], 1,
        "noise.transition.matrix: must be a 10 x 10 matrix"),
    Row("unknown dataset", ["download", "-S", "data.dataset=imagenet"], 2, "data.dataset: must be one of"),
    Row("unknown model", ["train-student", "-S", "train.model=vgg16"], 2, "train.model: must be one of"),
    Row("unknown method", ["train-student", "-S", "student.method=coteaching"], 2, "student.method: must be one of"),
    Row("unknown noise model", ["inject-noise", "-S", "noise.kind=gaussian"], 2, "noise.kind: must be one of"),
    Row("batch size out of range", ["train-student", "-S", "train.batch_size=0"], 2,
        "train.batch_size: must be >= 1"),
    Row("epochs out of range", ["train-student", "-S", "train.epochs=-3"], 2, "train.epochs: must be >= 1"),
    Row("unknown preset", ["preset", "huge"], 2, "unknown preset 'huge'"),
    Row("invalid YAML value on the command line (list)", ["train-student", "-S", "train.milestones=[0.3"], 2,
        "train.milestones: '[0.3' is not a valid YAML value"),
    Row("invalid YAML value on the command line (scalar)", ["inject-noise", "-S", "noise.rate=: :"], 2,
        "noise.rate: ': :' is not a valid YAML value"),
    Row("sweep value with unbalanced brackets", ["sweep", "s1", "train.milestones=[0.3,0.6"], 2,
        "train.milestones has unbalanced brackets"),
    Row("preset name that is a path", ["preset", "../../../../tmp/x"], 2, "preset '../../../../tmp/x': a name"),
    Row("study name that is a path", ["study", "../x"], 2, "study name '../x': a name, not a path"),
    Row("experiment name that is a path", ["inject-noise", "-S", "base.experiment=../../x"], 2,
        "base.experiment: '../../x': a name, not a path"),
    Row("report --out an existing file", ["report", "s1", "--out", "params.yaml"], 2, "--out params.yaml is a file"),
    Row("preset --out an existing folder", ["preset", "tiny", "--out", "reports"], 2, "--out reports is a folder"),
    Row("invalid YAML in params.yaml", ["inject-noise"], 2,
        "not valid YAML (expected ',' or ']', but got '<stream end>' at line",
        setup=lambda work: (work / "params.yaml").write_text((work / "params.yaml").read_text()
                                                             + "extra: [1\n")),
    # ---- data
    Row("massive noise larger than the train split", ["inject-noise", "-S", "noise.kind=massive", "-S",
                                                      "noise.massive.alpha=50", "-S", "noise.massive.n_clean=1000"], 1,
        "lower noise.massive.alpha or noise.massive.n_clean"),
    Row("given-labels file of the wrong length", ["inject-noise", "-S", "noise.kind=given", "-S",
                                                  "noise.given.file=given.npy"], 1, "given.npy holds 10 labels",
        setup=lambda work: np.save(work / "given.npy", np.arange(10))),
    Row("given-labels file that would run code", ["inject-noise", "-S", "noise.kind=given", "-S",
                                                  "noise.given.file=given.pkl", "-S", "noise.given.key=y"], 1,
        "refused posix.system", setup=_write("given.pkl", b"cposix\nsystem\n(S'true'\ntR.")),
    Row("given-labels file with a label out of range", ["inject-noise", "-S", "noise.kind=given", "-S",
                                                        "noise.given.file=given.npy"], 1, "label 10 is outside [0, 10)",
        setup=lambda work: np.save(work / "given.npy",
                                   np.full(len(load_prepared(work / "data/prepared.npz").labels), 10))),
    Row("given-labels file without the key", ["inject-noise", "-S", "noise.kind=given", "-S",
                                              "noise.given.file=given.pt", "-S", "noise.given.key=aggre_label"], 1,
        "noise.given.key: 'aggre_label' is not in", setup=_pt_file),
    Row("missing image folder", ["download", *FOLDER, "-S", "data.path=own"], 1, "own does not exist"),
    Row("empty class folder", ["download", *FOLDER, "-S", "data.path=own"], 1, "class folder",
        setup=_own("tree", then=lambda own: (own / "ten").mkdir())),
    Row("unreadable image", ["download", *FOLDER, "-S", "data.path=own"], 1,
        "cannot be read as an image", setup=_own("tree", corrupt=(7,))),
    Row("manifest with an unknown class", ["download", *FOLDER, "-S", "data.path=own/manifest.csv"], 1,
        "has the unknown class 'eleven'", setup=_own("manifest", then=_unknown_class_row)),
    Row("manifest row outside its folder", ["download", *FOLDER, "-S", "data.path=own/manifest.csv"], 1,
        "row 3 (../../../../../../../../etc/passwd) is outside",
        setup=_own("manifest", then=_manifest_row(3, lambda c: ["../../../../../../../../etc/passwd", *c[1:]]))),
    Row("manifest with the same image in train and test", ["download", *FOLDER, "-S", "data.path=own/manifest.csv"],
        1, "row 2 (img/0000.png) and row 6 (img/0000.png) are the same image, in train and test",
        setup=_own("manifest", then=_manifest_row(6, lambda c: ["img/0000.png", *c[1:]]))),  # row 6: a test row
    Row("image tree of one class", ["download", *FOLDER, "-S", "data.path=own"], 1,
        "has 1 class (seven); a classifier needs at least 2", setup=_own("tree", then=_only_class)),
    Row("decompression bomb image", ["download", *FOLDER, "-S", "data.path=own", "-S", "data.skip_bad_images=false"],
        1, "cannot be read as an image (Image size (900000000 pixels) exceeds limit", setup=_own("tree", then=_bomb)),
    Row("clean file with a header row only", ["download", *FOLDER, "-S", "data.path=own", "-S",
                                              "data.trusted_file=own/clean.csv"], 1,
        "has a header row but no rows of labels",
        setup=_own("split_tree", then=lambda own: (own / "clean.csv").write_text("\ufeffindex,label\n"))),
    Row("label-issues table that is not text", ["label-issues"], 1,
        "reports/label_issues.csv is not a label-issues table (not UTF-8 text",
        setup=_write("reports/label_issues.csv", bytes(range(256)) * 16)),
    Row("clean file overlapping the test split", ["download", *FOLDER, "-S", "data.path=own", "-S",
                                                  "data.trusted_file=own/clean.csv"], 1,
        "data.trusted_file: index 299 is the test split",
        setup=_own("split_tree", then=lambda own: (own / "clean.csv").write_text("index,label\n3,zero\n299,one\n"))),
    Row("clean subset drawn from untrusted labels", ["download", "-S", "data.truth=false"], 2,
        "data.trusted_size: with data.truth: false"),
    Row("trusted_size larger than the data", ["download", "-S", "data.trusted_size=100000"], 1,
        "data.trusted_size (100000)"),
    Row("stage run before its inputs exist", ["train-student"], 1, "data/noisy.npz does not exist",
        setup=_remove("data/noisy.npz")),
    Row("truncated data archive", ["download", *MIRROR], 1, "mnist: no source delivered verified data",
        setup=_mirror("truncated")),
    Row("archive checksum mismatch", ["download", *MIRROR], 1, "mnist: no source delivered verified data",
        setup=_mirror("wrong content")),
    Row("corrupt stage input (truncated npz)", ["train-student"], 1, "data/noisy.npz is corrupt or unreadable",
        setup=_truncate("data/noisy.npz")),
    Row("image tensor of the wrong shape for the model", ["evaluate"], 1, "cnn was built for images (B, 1, 8, 8)",
        setup=_prepared_with(lambda x, y: (np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))), y))),
    Row("random bytes in an npz input", ["train-student"], 1,
        "data/noisy.npz is corrupt or unreadable (ValueError: not an npz archive)",
        setup=_write("data/noisy.npz", bytes(range(256)) * 64)),
    Row("student model file of another kind", ["correct-labels"], 1,
        "models/student.pt is corrupt or unreadable (KeyError: 'no model_kwargs, model_name, state_dict",
        setup=lambda work: torch.save({"weights": torch.ones(2)}, work / "models/student.pt")),
    Row("invalid JSON in a report a stage reads", ["evaluate"], 1,
        "reports/correction.json is corrupt or unreadable (JSONDecodeError", setup=_write("reports/correction.json",
                                                                                      b"{not json")),
    Row("disk full while saving a checkpoint", ["train-student", "-S", "student.method=ce"], 1,
        "models/checkpoints/train_student.pt could not be written (torch: [enforce fail", patch=_full_disk),
    Row("params of another workspace (-p elsewhere)", ["inject-noise", "-p", str(REPO / "params.yaml")], 2,
        "is another workspace's params"),
    Row("dd mentor data with almost no corrupted label", ["pretrain-mentor", "-S", "mentor.kind=dd", "-S",
                                                          "mentor.dd_noise_kind=symmetric", "-S",
                                                          "mentor.dd_noise_rate=0.01"], 1,
        "has 0 corrupted and 200 correct labels: it needs at least 10 of each"),
    # ---- tracking
    Row("MLflow file store (a folder)", ["inject-noise"], 1, "is a folder (MLflow's file store",
        env={"MLFLOW_TRACKING_URI": "file:///nonexistent-labelnoise/mlruns"}),
    Row("store URI with a password", ["inject-noise"], 1, "postgresql://bob:***@127.0.0.1",
        env={"MLFLOW_TRACKING_URI": f"postgresql://bob:hunter2@127.0.0.1:{_closed_port()}/mlflow"}),
    Row("unwritable MLflow store", ["inject-noise"], 1, "MLflow store sqlite:////proc/labelnoise.db is not writable",
        env={"MLFLOW_TRACKING_URI": "sqlite:////proc/labelnoise.db"}),
    Row("MLflow store in a missing folder", ["inject-noise"], 1, "is in a folder that does not exist",
        env={"MLFLOW_TRACKING_URI": "sqlite:////nonexistent/folder/mlflow.db"}),
    Row("MLflow store full", ["inject-noise"], 1,
        "could not be written (logging metrics): database or disk is full", setup=_full_store),
    Row("MLflow store locked by another process", ["inject-noise"], 1,
        "is locked by another process (still after 1 s): end the process that holds it", setup=_lock_store,
        patch=lambda mp: mp.setattr(tracking, "STORE_PATIENCE_S", 1.0)),
    Row("unreachable MLflow server", ["train-student"], 1, "is not usable",
        env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{_closed_port()}"}),
    # ---- training
    Row("NaN / infinite loss", ["train-student", "-S", "student.method=ce"], 1,
        "non-finite loss at epoch 1, step 3; no checkpoint saved", patch=_student_nan_from(4)),
    Row("corrupt student checkpoint", ["train-student"], 1,
        "models/checkpoints/train_student.pt is corrupt or unreadable",
        setup=_write("models/checkpoints/train_student.pt", b"not a checkpoint")),
    Row("corrupt correction checkpoint", ["correct-labels"], 1,
        "models/checkpoints/correct_labels.pt is corrupt or unreadable",
        setup=_truncate("models/checkpoints/correct_labels.pt")),
    Row("corrupt mentor", ["train-student"], 1, "models/mentor.pt is corrupt or unreadable",
        setup=_truncate("models/mentor.pt")),
]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A workspace where the whole tiny pipeline has run (one thread), so every stage has its inputs.

    Each stage's checkpoint is kept as a finished one, as after a real run."""
    root = tiny_workspace(tmp_path_factory.mktemp("finished"), ("download", "inject-noise", "estimate-noise",
                                                                "pretrain-mentor", "train-student", "correct-labels",
                                                                "evaluate"))
    yield root


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] not in STORE_FILES}


def test_the_matrix_has_at_least_twenty_rows() -> None:
    assert len(ROWS) >= 20 and len({r.name for r in ROWS}) == len(ROWS)


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_bad_input_is_one_line_nonzero_exit_nothing_written(row: Row, finished: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    shutil.copytree(finished, work)
    if row.setup is not None:
        row.setup(work)
    before = _snapshot(work)
    monkeypatch.chdir(work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", new_store(work))
    for key, value in row.env.items():
        monkeypatch.setenv(key, value)
    if row.patch is not None:
        row.patch(monkeypatch)
    previous = torch.get_num_threads()
    try:
        result = runner.invoke(app, row.args)
    finally:
        torch.set_num_threads(previous)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == row.code, result.output[-2000:]
    assert len(errors) == 1 and row.says in errors[0], result.output[-2000:]
    assert "hunter2" not in result.output and "allow_pickle" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback
    assert _snapshot(work) == before  # nothing written, nothing half-written, nothing lost
