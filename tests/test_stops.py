"""Stops: Ctrl-C and SIGTERM are honoured at every point of a stage (inside an epoch, at the end of a fit's last
epoch, between phases and folds), a second signal during the stop's unwinding is ignored (one line, no traceback,
the MLflow runs KILLED), and a forked child does not inherit the stage's handlers."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from labelnoise import runtime
from labelnoise.config import load_config
from labelnoise.scaffold import clean_env
from tests.helpers import live_signals, new_store, terminal_signals, tiny_workspace

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()


@pytest.fixture(scope="module")
def noisy_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny preset up to its noisy labels (download, inject-noise), one thread."""
    return tiny_workspace(tmp_path_factory.mktemp("noisy"), ("download", "inject-noise"))


def _in(work: Path, *args: str, monkeypatch: pytest.MonkeyPatch):
    with monkeypatch.context() as mp:
        mp.chdir(work)
        mp.setenv("MLFLOW_TRACKING_URI", new_store(work))
        return runner.invoke(app, list(args))


def test_a_stop_at_the_end_of_a_folds_last_epoch_ends_the_stage_and_the_rerun_is_identical(
        noisy_workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM while the first fold network is evaluated after its last epoch: the stage exits 143 in one line
    without training the second fold, and the rerun ends with the noise estimate of an uninterrupted run."""
    from labelnoise.engine import loop

    straight = shutil.copytree(noisy_workspace, tmp_path / "straight")
    assert _in(straight, "estimate-noise", monkeypatch=monkeypatch).exit_code == 0
    expected = (straight / "reports" / "noise_estimate.json").read_text()

    work = shutil.copytree(noisy_workspace, tmp_path / "work")
    epochs = load_config(work / "params.yaml").estimate.epochs
    real, calls = loop.evaluate_accuracy, []

    def evaluate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2 * epochs:  # the test split of the first fold's last epoch
            signal.raise_signal(signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "evaluate_accuracy", evaluate)
    with live_signals():
        stopped = _in(work, "estimate-noise", monkeypatch=monkeypatch)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the stage's handlers are gone with it
    assert stopped.exit_code == 143, stopped.output
    errors = [line for line in stopped.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: SIGTERM: stopped at the end of training: checkpoint "
                                                     "saved to models/checkpoints/estimate_noise.fold0.pt"), errors
    checkpoints = work / "models" / "checkpoints"
    assert (checkpoints / "estimate_noise.fold0.pt").exists()
    assert not (checkpoints / "estimate_noise.fold1.pt").exists()  # the second fold never started
    assert not (work / "reports" / "noise_estimate.json").exists()
    monkeypatch.setattr(loop, "evaluate_accuracy", real)
    again = _in(work, "estimate-noise", monkeypatch=monkeypatch)
    assert again.exit_code == 0, again.output
    assert (work / "reports" / "noise_estimate.json").read_text() == expected


def test_after_the_first_stop_further_signals_are_ignored_until_the_stage_ends() -> None:
    """Inside a stage the first signal raises Stopped; the ones during the unwinding are ignored; afterwards the
    dispositions are what they were."""
    with live_signals():
        before = signal.getsignal(signal.SIGINT)
        unwound = []
        with pytest.raises(runtime.Stopped) as stopped, runtime.stop_signals():
            try:
                signal.raise_signal(signal.SIGTERM)
                time.sleep(0.01)
            finally:
                signal.raise_signal(signal.SIGINT)  # a second Ctrl-C while the stop unwinds: ignored
                signal.raise_signal(signal.SIGTERM)
                unwound.append(True)
        assert stopped.value.signum == signal.SIGTERM and unwound == [True]
        assert signal.getsignal(signal.SIGINT) is before and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        assert not runtime.stop_under_way()


def test_a_forked_child_gets_the_default_dispositions() -> None:
    """A library's worker pool forks: its workers must not run the stage's stop handlers (a Pool's terminate()
    sends them SIGTERM, which must end them). Checked in a child that forks, so this test process is not forked."""
    code = (
        "import os, signal, sys\n"
        "from labelnoise import runtime\n"
        "with runtime.stop_signals():\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        ok = all(signal.getsignal(s) == signal.SIG_DFL for s in (signal.SIGINT, signal.SIGTERM))\n"
        "        os._exit(0 if ok else 3)\n"
        "    _, status = os.waitpid(pid, 0)\n"
        "sys.exit(os.waitstatus_to_exitcode(status))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          preexec_fn=terminal_signals)
    assert done.returncode == 0, done.stderr


def test_ctrl_c_twice_is_one_line_no_traceback_and_the_runs_are_killed(noisy_workspace: Path, tmp_path: Path) -> None:
    """Ctrl-C, then Ctrl-C again and again while the stop unwinds (the checkpoint saved, the outputs put back, the
    MLflow runs being marked): one error line, exit 130, no traceback, no run left RUNNING."""
    work = shutil.copytree(noisy_workspace, tmp_path / "work")
    env = clean_env() | {"MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    proc = subprocess.Popen([sys.executable, str(REPO / "cli.py"), "estimate-noise", "-S", "estimate.epochs=50"],
                            cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=terminal_signals)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    deadline = time.monotonic() + 300
    while not any(line.startswith("epoch 1/") for line in lines) and proc.poll() is None:
        assert time.monotonic() < deadline, "no epoch ended in 300 s"
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    while proc.poll() is None:  # the second, third, ... Ctrl-C: from the first one's handling to the exit
        proc.send_signal(signal.SIGINT)
        time.sleep(0.003)
    reader.join(timeout=60)
    err = "".join(lines)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: SIGINT: stopped") and "resume" in errors[0], err[-3000:]
    with sqlite3.connect(work / "mlflow.db") as db:
        statuses = {status for (status,) in db.execute("select status from runs")}
    assert "RUNNING" not in statuses and "KILLED" in statuses, statuses


def test_the_stage_handlers_are_the_main_threads_only() -> None:
    """stop_signals in another thread changes nothing (only the main thread can own signal handlers)."""
    before = signal.getsignal(signal.SIGTERM)
    seen: list[object] = []

    def other() -> None:
        with runtime.stop_signals():
            seen.append(signal.getsignal(signal.SIGTERM))

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen == [before] and os.getpid() > 0


def test_a_hanging_test_fails_with_every_threads_stack(tmp_path: Path) -> None:
    """The suite's per-test time limit (pyproject.toml): a test that hangs (here asleep in a lock no one releases)
    ends the run with a failure that names it and prints every thread's stack, instead of holding CI to its limit."""
    (tmp_path / "test_hang.py").write_text(
        "import threading\n\n\ndef test_waits_forever():\n    lock = threading.Lock()\n    lock.acquire()\n"
        "    lock.acquire()\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c",
                           str(REPO / "pyproject.toml"), "--rootdir", str(tmp_path), "-o", "timeout=3",
                           str(tmp_path / "test_hang.py")], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert "Timeout" in out and "test_waits_forever" in out and "Stack of" in out, out[-3000:]


def test_a_stage_without_checkpoints_says_nothing_was_kept(noisy_workspace: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """pretrain-mentor keeps no resume checkpoint: its stop line says the same command starts it again, and names
    no checkpoint; its outputs are not written."""
    import labelnoise.mentornet.pretrain as stage

    work = shutil.copytree(noisy_workspace, tmp_path / "work")

    def stopped(*args, **kwargs):
        signal.raise_signal(signal.SIGTERM)
        raise AssertionError("the stop did not end the stage")

    monkeypatch.setattr(stage, "pretrain", stopped)
    with live_signals():
        result = _in(work, "pretrain-mentor", "-S", "mentor.dd_noise_kind=symmetric", "-S", "mentor.percentile=0.7",
                     monkeypatch=monkeypatch)
    assert result.exit_code == 143, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == ["error: SIGTERM: stopped; nothing was written, the same command starts it again"]
    assert not (work / "models" / "mentor.pt").exists()
