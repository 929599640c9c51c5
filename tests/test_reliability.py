"""Crash safety on the tiny preset, in real processes: SIGKILL at random points then resume ends with the
same model and numbers as an uninterrupted run (train_student and correct_labels); Ctrl-C or SIGTERM saves a
checkpoint and exits 130 / 143; a failing stage changes none of its outputs; a corrupt checkpoint is refused."""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli import app
from labelnoise import io
from labelnoise.scaffold import clean_env
from tests.helpers import new_store, terminal_signals

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()

STUDENT_CKPT = "models/checkpoints/train_student.pt"
CORRECTION_CKPT = "models/checkpoints/correct_labels.pt"
# what each stage writes (its dvc.yaml outputs that hold numbers), compared between runs
STUDENT_OUTPUTS = ["models/student.pt", "models/student_best.pt", "models/student_weights.npz",
                   "reports/curves/train_student.csv"]
CORRECTION_OUTPUTS = ["models/final.pt", "data/corrected.npz"]


def _env(workdir: Path) -> dict[str, str]:
    return clean_env() | {"MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}"}


def _cli(workdir: Path, *args: str) -> None:
    """One stage in this process (set-up only: fast, no interpreter start)."""
    cwd = os.getcwd()
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    os.chdir(workdir)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    try:
        result = runner.invoke(app, list(args))
    finally:
        os.chdir(cwd)
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The tiny preset (one thread, more epochs so kills land mid-training) up to a trained student."""
    root = tmp_path_factory.mktemp("prepared")
    _cli(root, "preset", "tiny", "--params", str(REPO / "params.yaml"), "--out", str(root / "params.yaml"))
    overrides = ["-S", "base.threads=1", "-S", "train.epochs=10", "-S", "correction.epochs=5",
                 "-S", "correction.teacher=student", "-S", "correction.retrain_epochs=6"]
    (root / "overrides").write_text("\n".join(overrides))
    previous = torch.get_num_threads()
    for stage in ("download", "inject-noise", "estimate-noise", "pretrain-mentor", "train-student"):
        _cli(root, stage, *overrides)
    torch.set_num_threads(previous)
    yield root


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    shutil.rmtree(dst / "models" / "checkpoints", ignore_errors=True)
    return dst


def _command(workdir: Path, stage: str) -> list[str]:
    return [sys.executable, str(REPO / "cli.py"), stage, *(workdir / "overrides").read_text().split("\n")]


def _run(workdir: Path, stage: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(_command(workdir, stage), cwd=workdir, env=_env(workdir), capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _finished(checkpoint: Path) -> bool:
    return checkpoint.exists() and bool(torch.load(checkpoint, map_location="cpu", weights_only=True)["finished"])


def _interrupt(workdir: Path, stage: str, checkpoint: Path, *, after: int, fraction: float,
               sig: int) -> tuple[int | None, str]:
    """Start ``stage`` (SIGINT and SIGTERM live, as from a terminal); after the ``after``-th checkpoint this run
    writes (any of the stage's checkpoint files), wait ``fraction`` of the time between its last two checkpoints
    (so the signal lands inside an epoch), freeze it (SIGSTOP), and send ``sig`` unless ``checkpoint`` (the
    stage's last) is already a finished run's.

    Where the signal lands is measured in the run's own epochs, not in seconds, so a faster or slower CPU moves
    it nowhere. Returns (exit code, stderr); the code is None when training had finished (the run then ends
    normally, its outputs written)."""
    def mtimes() -> dict[Path, int]:
        return {p: p.stat().st_mtime_ns for p in checkpoint.parent.glob(f"{checkpoint.stem}*{checkpoint.suffix}")}

    seen = mtimes() if checkpoint.parent.exists() else {}
    proc = subprocess.Popen(_command(workdir, stage), cwd=workdir, env=_env(workdir), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, preexec_fn=terminal_signals)
    writes: list[float] = []  # when each new checkpoint of this run was first seen
    while proc.poll() is None and len(writes) < max(after, 2):
        now = mtimes() if checkpoint.parent.exists() else {}
        if now != seen:
            writes += [time.monotonic()] * sum(1 for p, t in now.items() if seen.get(p) != t)
            seen = now
        time.sleep(0.002)
    if proc.poll() is None:
        time.sleep(fraction * max(writes[-1] - writes[-2], 0.0))
        proc.send_signal(signal.SIGSTOP)
        if not _finished(checkpoint):  # not finished: nothing of this run's outputs is written yet
            proc.send_signal(sig)
            proc.send_signal(signal.SIGCONT)
            _, err = proc.communicate(timeout=300)
            return proc.returncode, err
        proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return None, err


@pytest.fixture(scope="module")
def uninterrupted(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, list[str]], dict]:
    """``uninterrupted(stage, outputs)``: the digests of ``outputs`` after ``stage`` ran without interruption
    on a copy of ``prepared`` (run once per stage, shared by the tests that compare against it)."""
    done: dict[str, dict[str, str]] = {}

    def get(stage: str, outputs: list[str]) -> dict[str, str]:
        if stage not in done:
            straight = _copy(prepared, tmp_path_factory.mktemp("straight") / "work")
            _run(straight, stage)
            done[stage] = {rel: _digest(straight / rel) for rel in STUDENT_OUTPUTS + CORRECTION_OUTPUTS
                           if (straight / rel).exists()}
        return {rel: done[stage][rel] for rel in outputs}

    return get


def _digest(path: Path) -> str:
    """A digest of what a file holds: tensors / arrays by value (not by container bytes), else the bytes."""
    h = hashlib.sha256()
    if path.suffix == ".pt":
        record = torch.load(path, map_location="cpu", weights_only=True)
        for key, value in sorted(record["state_dict"].items()):
            h.update(key.encode() + value.numpy().tobytes())
        h.update(repr({k: v for k, v in record.items() if k not in ("state_dict", "config")}).encode())
    elif path.suffix == ".npz":
        with np.load(path) as z:
            for key in sorted(z.files):
                h.update(key.encode() + z[key].tobytes())
    else:
        h.update(path.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize(("stage", "checkpoint", "outputs"), [
    ("train-student", STUDENT_CKPT, STUDENT_OUTPUTS),
    ("correct-labels", CORRECTION_CKPT, CORRECTION_OUTPUTS),
])
def test_sigkill_at_random_points_then_resume_equals_uninterrupted(
        prepared: Path, uninterrupted: Callable[[str, list[str]], dict], tmp_path: Path, stage: str, checkpoint: str,
        outputs: list[str]) -> None:
    expected = uninterrupted(stage, outputs)

    killed = _copy(prepared, tmp_path / "killed")
    for rel in outputs:  # the outputs of the previous stage run must not be mistaken for this one's
        (killed / rel).unlink(missing_ok=True)
    rng = random.Random(7)
    for _ in range(2):  # each kill 2-3 checkpoints into the (resumed) run, at a random point of an epoch
        code, _ = _interrupt(killed, stage, killed / checkpoint, after=rng.choice([2, 3]),
                             fraction=rng.uniform(0.1, 0.9), sig=signal.SIGKILL)
        assert code == -signal.SIGKILL, "the run finished before the kill: make the tiny run longer"
        assert not any((killed / rel).exists() for rel in outputs)  # killed: no output written, none half-written
    log = _run(killed, stage).stderr
    assert "resuming from" in log
    assert {rel: _digest(killed / rel) for rel in outputs} == expected
    leftovers = [p.name for p in killed.rglob(".*.tmp*")]
    assert leftovers == [], leftovers  # temporaries of killed writes are cleaned up by the next write


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_saves_a_checkpoint_exits_128_plus_signal_and_resumes_exactly(
        prepared: Path, uninterrupted: Callable[[str, list[str]], dict], tmp_path: Path, sig: int) -> None:
    """SIGTERM (kill, timeout, schedulers, container stops) acts as Ctrl-C: checkpoint, one line, exit 128 + the
    signal's number, the MLflow runs marked KILLED (not left RUNNING); the rerun resumes to the same numbers."""
    import sqlite3

    expected = uninterrupted("train-student", STUDENT_OUTPUTS)

    work = _copy(prepared, tmp_path / "interrupted")
    ckpt = work / STUDENT_CKPT
    code, err = _interrupt(work, "train-student", ckpt, after=2, fraction=0.5, sig=sig)
    assert code == 128 + sig, err[-2000:]
    name = signal.Signals(sig).name
    last = err.strip().splitlines()[-1]  # where the fit stopped and the checkpoint that resumes it
    # aimed inside an epoch, the signal may still land in the epoch's evaluation on a loaded machine (an epoch
    # faster than the one before it): both are stops with a checkpoint (the mid-batch line: test_engine)
    where = re.match(rf"error: {name}: stopped at (epoch \d+, batch \d+/\d+|the end of epoch \d+): ", last)
    assert where and f"checkpoint saved to {STUDENT_CKPT}" in last, last
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert not saved["finished"] and 1 <= saved["epoch"] < 10
    with sqlite3.connect(work / "mlflow.db") as db:
        statuses = db.execute("select r.name, r.status, t.value from runs r join tags t on t.run_uuid = r.run_uuid "
                              "where t.key = 'labelnoise.kind' order by r.start_time desc").fetchall()
    assert statuses[0] == ("train_student", "KILLED", "stage") and statuses[1][1:] == ("KILLED", "pipeline"), statuses
    assert "RUNNING" not in {status for _, status, _ in statuses}, statuses
    log = _run(work, "train-student").stderr
    assert "resuming from" in log
    assert {rel: _digest(work / rel) for rel in STUDENT_OUTPUTS} == expected


def test_a_second_stage_in_the_same_workspace_is_refused_and_the_first_is_untouched(
        prepared: Path, uninterrupted: Callable[[str, list[str]], dict], tmp_path: Path) -> None:
    """Two runs in one workspace would overwrite each other's checkpoint and temporaries: while train-student
    trains, a second train-student (another seed) there is refused in one line naming the first; the first
    ends as if alone."""
    expected = uninterrupted("train-student", STUDENT_OUTPUTS)
    work = _copy(prepared, tmp_path / "work")
    ckpt = work / STUDENT_CKPT
    first = subprocess.Popen(_command(work, "train-student"), cwd=work, env=_env(work), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not ckpt.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)  # held mid-training, however fast this machine trains
    try:
        second = subprocess.run([*_command(work, "train-student"), "-S", "base.seed=5"], cwd=work,
                                env=_env(work), capture_output=True, text=True, timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    assert second.returncode == 1, second.stderr[-2000:]
    errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: stage train_student (pid {first.pid}, started")
    assert "is running in this workspace" in errors[0]
    assert {rel: _digest(work / rel) for rel in STUDENT_OUTPUTS} == expected


def test_a_store_locked_during_training_loses_nothing(prepared: Path, tmp_path: Path) -> None:
    """Another process holds the SQLite store locked for 25 s from the end of epoch 1 (MLflow gives up after
    20 s): training goes on, the metrics wait, and once the store is free every epoch is logged, the runs end
    FINISHED."""
    import sqlite3

    work = _copy(prepared, tmp_path / "work")
    ckpt = work / STUDENT_CKPT
    proc = subprocess.Popen(_command(work, "train-student"), cwd=work, env=_env(work), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    while not ckpt.exists() and proc.poll() is None:
        time.sleep(0.005)
    con = sqlite3.connect(work / "mlflow.db", isolation_level=None, timeout=60)
    con.execute("BEGIN EXCLUSIVE")
    time.sleep(25)
    con.rollback()
    con.close()
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    with sqlite3.connect(work / "mlflow.db") as db:
        (run_id, status), = db.execute("select run_uuid, status from runs where name = 'train_student' "
                                       "order by start_time desc limit 1").fetchall()
        steps = [s for (s,) in db.execute("select step from metrics where run_uuid = ? and key = 'clean_acc' "
                                          "order by step", (run_id,))]
    assert status == "FINISHED" and steps == list(range(1, 11)), (status, steps)


def test_a_failing_stage_changes_none_of_its_outputs(prepared: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """train_student writes four outputs; a crash while writing the last leaves all four as they were."""
    import stages.train_student as stage

    work = _copy(prepared, tmp_path / "work")
    before = {rel: (work / rel).read_bytes() for rel in STUDENT_OUTPUTS}

    def broken(path: object, history: object) -> None:
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(stage, "write_curves", broken)
    monkeypatch.chdir(work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", new_store(work))
    args = ["train-student", *(work / "overrides").read_text().split("\n"), "-S", "train.epochs=2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and result.output.strip().splitlines()[-1] == "error: disk full (simulated)"
    assert {rel: (work / rel).read_bytes() for rel in STUDENT_OUTPUTS} == before
    assert [p.name for p in work.rglob(".*.tmp*")] == []
    # run again (the disk has room now): the finished training is the result, only the outputs are written
    monkeypatch.undo()
    monkeypatch.chdir(work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", new_store(work))
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output[-2000:]
    assert "reusing the finished run" in again.output
    assert not re.search(r"^\S+ \d+/2  loss", again.output, re.M)  # no epoch trained again
    assert all((work / rel).read_bytes() != before[rel] for rel in ("models/student.pt", "models/student_weights.npz"))


def test_all_or_nothing_commits_together_or_not_at_all(tmp_path: Path) -> None:
    a, b, other = tmp_path / "out" / "a.json", tmp_path / "out" / "sub" / "b.json", tmp_path / "ckpt.json"
    io.save_json(a, {"v": 0})
    with pytest.raises(RuntimeError, match="boom"), io.all_or_nothing([tmp_path / "out"]):
        io.save_json(a, {"v": 1})
        io.save_json(other, {"v": 1})  # not an output: written at once
        assert io.load_json(a) == {"v": 0} and io.load_json(io.readable(a)) == {"v": 1}
        raise RuntimeError("boom")
    assert io.load_json(a) == {"v": 0} and not b.exists() and io.load_json(other) == {"v": 1}
    with io.all_or_nothing([a, b]):
        io.save_json(a, {"v": 2})
        io.save_json(b, {"v": 2})
        assert not b.exists()
    assert io.load_json(a) == io.load_json(b) == {"v": 2}
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == ["a.json", "b.json", "sub"]


def test_a_stale_figure_goes_with_the_commit_and_stays_when_the_stage_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stage drops the figures of its folder it did not write (another mentor kind's) through the commit: a failure
    after the drop (a full disk, here a failed rename at the commit itself) leaves the old figure beside the old
    model, and a success removes it with the new files in place."""
    out = tmp_path / "reports" / "mentor"
    io.save_json(tmp_path / "reports" / "mentor.json", {"v": 0})
    (out).mkdir(parents=True)
    (out / "dd_weights.png").write_bytes(b"old dd")
    with pytest.raises(OSError, match="no space"), io.all_or_nothing([tmp_path / "reports"]):
        io.save_json(out / "pd_weights.json", {"v": 1})
        io.keep_only(out, [out / "pd_weights.json"])
        assert (out / "dd_weights.png").exists()  # nothing deleted before the commit
        raise OSError(28, "no space left on the device")
    assert (out / "dd_weights.png").read_bytes() == b"old dd" and not (out / "pd_weights.json").exists()

    rename = os.replace

    def refuse_last(src: object, dst: object) -> None:  # the deletion done, then the next rename fails
        if Path(dst).name == "z.json" and ".tmp" in Path(src).name:
            raise PermissionError(1, "Operation not permitted", str(dst))
        rename(src, dst)

    monkeypatch.setattr(os, "replace", refuse_last)
    with pytest.raises(PermissionError), io.all_or_nothing([tmp_path / "reports"]):
        io.keep_only(out, [])
        io.save_json(out / "z.json", {"v": 1})
    monkeypatch.undo()
    assert (out / "dd_weights.png").read_bytes() == b"old dd"  # put back
    assert sorted(p.name for p in out.iterdir()) == ["dd_weights.png"]

    with io.all_or_nothing([tmp_path / "reports"]):
        io.save_json(out / "pd_weights.json", {"v": 1})
        io.keep_only(out, [out / "pd_weights.json"], pattern="[!.]*")
    assert sorted(p.name for p in out.iterdir()) == ["pd_weights.json"]


def test_a_commit_killed_between_its_renames_is_finished_by_the_next_stage(tmp_path: Path) -> None:
    """SIGKILL between two renames of the commit would leave a new model beside old weights and curves; the journal
    the commit writes first lets the next stage finish it: every output new, no temporary left."""
    out, journal = tmp_path / "out", tmp_path / io.COMMIT_JOURNAL
    for name in ("a.json", "b.json", "c.png"):
        io.save_json(out / name, {"v": 0})
    script = f"""
import os
from pathlib import Path
from labelnoise import io
rename, done = os.replace, []
def killed(src, dst):
    if Path(dst).parent == Path({str(out)!r}):  # an output's rename (not the journal's)
        if done:
            os._exit(9)  # SIGKILL's effect: no handler, no cleanup
        done.append(dst)
    rename(src, dst)
os.replace = killed
with io.all_or_nothing([{str(out)!r}], journal={str(journal)!r}):
    for name in ("a.json", "b.json"):
        io.save_json(Path({str(out)!r}) / name, {{"v": 1}})
    io.keep_only({str(out)!r}, [Path({str(out)!r}) / n for n in ("a.json", "b.json")])
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    assert io.load_json(out / "a.json") == {"v": 1} and io.load_json(out / "b.json") == {"v": 0}  # the mix
    assert journal.exists()
    with io.all_or_nothing([out], journal=journal):
        pass
    assert io.load_json(out / "a.json") == io.load_json(out / "b.json") == {"v": 1} and not journal.exists()
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "b.json"]  # c.png dropped, no temporary left


def test_a_failed_rename_at_the_commit_puts_back_the_outputs_already_replaced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The commit of a stage's outputs renames one file after another; when one rename fails (an immutable or
    read-only file, a full disk), the ones already renamed get their previous content back: none is new."""
    out = tmp_path / "out"
    names = ["a.json", "b.json", "c.json"]
    for name in names[:2]:
        io.save_json(out / name, {"v": 0})
    rename = os.replace

    def refuse_b(src: object, dst: object) -> None:
        if Path(dst).name == "b.json" and ".tmp" in Path(src).name:
            raise PermissionError(1, "Operation not permitted", str(dst))
        rename(src, dst)

    monkeypatch.setattr(os, "replace", refuse_b)
    with pytest.raises(PermissionError), io.all_or_nothing([out]):
        for name in names:
            io.save_json(out / name, {"v": 1})
    monkeypatch.undo()
    assert io.load_json(out / "a.json") == io.load_json(out / "b.json") == {"v": 0} and not (out / "c.json").exists()
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "b.json"]  # no temporary left


def test_stale_temporaries_of_a_killed_write_are_removed(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    stale = tmp_path / ".model.pt.abc123.tmp.pt"  # what a SIGKILL between write and rename leaves
    stale.write_bytes(b"half")
    unrelated = tmp_path / ".other.pt.abc123.tmp.pt"
    unrelated.write_bytes(b"x")
    io.save_torch(target, {"w": torch.ones(2)})
    assert not stale.exists() and unrelated.exists() and target.exists()


def test_npz_outputs_have_the_same_bytes_on_every_python(tmp_path: Path) -> None:
    """DVC records an output's md5, so equal arrays must give equal bytes whatever the interpreter: np.savez's
    streamed zip64 headers differ between Python 3.11 patch releases; these bytes were written by 3.11.2 and
    3.11.7 alike."""
    arrays = dict(x=np.arange(10), y=np.ones((3, 4), np.float32), s=np.array("abc"), b=np.zeros(3, bool))
    io.save_npz(tmp_path / "a.npz", **arrays)
    assert hashlib.md5((tmp_path / "a.npz").read_bytes()).hexdigest() == "63d18a753610230a83bb35e06f382fa5"
    loaded = io.read_npz(tmp_path / "a.npz", remedy="-")
    assert all(np.array_equal(loaded[k], v) and loaded[k].dtype == v.dtype for k, v in arrays.items())


def test_processes_opening_a_new_sqlite_store_at_once_all_succeed(tmp_path: Path) -> None:
    """Two DVC queue workers start their first stage together on a store that does not exist yet: each
    stage's check_store creates the MLflow tables and experiment; none may fail ("table ... already exists")."""
    db, ready = tmp_path / "fresh.db", tmp_path / "ready"
    ready.mkdir()
    code = (  # a barrier: each process has imported MLflow, then waits for all four before calling check_store
        "import os, time; from pathlib import Path\n"
        "from labelnoise.config import load_config\n"
        "from labelnoise.tracking import check_store\n"
        f"cfg = load_config(Path({str(REPO / 'params.yaml')!r}), ['base.tracking_uri=sqlite:///{db}'])\n"
        "import mlflow.store.tracking.sqlalchemy_store\n"
        f"ready = Path({str(ready)!r}); (ready / str(os.getpid())).touch()\n"
        "while len(list(ready.iterdir())) < 4: time.sleep(0.001)\n"
        "check_store(cfg.base.tracking_uri, cfg.base.experiment)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=clean_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(4)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outputs
    from mlflow.tracking import MlflowClient

    assert MlflowClient(tracking_uri=f"sqlite:///{db}").get_experiment_by_name("labelnoise") is not None
