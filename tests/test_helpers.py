"""The suite's own helpers do what the tests that use them assume."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_new_store_makes_each_folder_its_own_store_from_the_first_call(tmp_path: Path) -> None:
    # a fresh process: its first call is the one that also builds the shared template
    code = ("import sys; from pathlib import Path; from tests.helpers import new_store; "
            "print(new_store(Path(sys.argv[1]))); print(new_store(Path(sys.argv[2])))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a"), str(tmp_path / "b")], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == [f"sqlite:///{tmp_path / 'a' / 'mlflow.db'}", f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}"]
    for name in "ab":
        with sqlite3.connect(tmp_path / name / "mlflow.db") as con:
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"experiments", "runs", "metrics"} <= tables
