"""The benchmarks run (a smoke run: a few steps, no timing asserted): `make bench` must not break unseen."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_the_throughput_benchmark_runs_on_the_default_params(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default params hold `auto` settings (a mentor percentile read off the noise estimate): the benchmark
    settles them itself and times every loop."""
    sys.path.insert(0, str(REPO))
    from benchmarks import throughput

    monkeypatch.chdir(tmp_path)  # no prepared data, no mentor here: random images, a fresh mentor
    out = tmp_path / "bench.json"
    throughput.main(["--batches", "2", "--repeats", "1", "--no-compile", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["spade_mentor"] == "fresh init" and result["data"] == "random uint8"
    assert all(result[k] > 0 for k in ("project_img_s", "bare_img_s", "bare_other_format_img_s", "spade_img_s",
                                       "mentormix_img_s", "ratio"))
    assert result["fastest_bare"] in ("bare", "bare_other_format")


def test_the_label_issues_benchmark_runs() -> None:
    sys.path.insert(0, str(REPO))
    from benchmarks import find_label_issues

    rows = find_label_issues.main(["pair:0.3", "--trusted", "50"])
    assert [r["flagger"] for r in rows] == ["cleanlab", "labelnoise (confident_joint)", "labelnoise (paired)"]
    assert all(0.0 <= r["precision"] <= 1.0 and 0.0 <= r["recall"] <= 1.0 for r in rows)
