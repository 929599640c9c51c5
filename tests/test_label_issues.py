"""The label-issues table: the order by hand, flags against a mask, the CSV round trip, and the CLI command."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from labelnoise.label_issues import COLUMNS, flag_quality, rank_label_issues, read_csv, write_csv

GIVEN = np.array([0, 1, 2, 0, 1])
PROBS = np.array([[0.90, 0.05, 0.05],   # 0: believed
                  [0.70, 0.20, 0.10],   # 1: given 1 at 0.2 → suggests 0
                  [0.10, 0.10, 0.80],   # 2: believed
                  [0.20, 0.70, 0.10],   # 3: given 0 at 0.2 → suggests 1 (ties with 1 on p_given)
                  [0.05, 0.05, 0.90]])  # 4: given 1 at 0.05 → suggests 2, the most suspicious


def test_rows_come_most_suspicious_first_with_ties_by_score_then_index() -> None:
    score = np.array([0.9, 0.6, 0.8, 0.3, np.nan])
    issues = rank_label_issues(GIVEN, PROBS, score=score)
    assert issues.index.tolist() == [4, 3, 1, 2, 0]  # p_given 0.05, then 0.2 twice (score 0.3 < 0.6), 0.8, 0.9
    assert issues.suggested.tolist() == [2, 1, 0, 2, 0]
    assert issues.flagged.tolist() == [True, True, True, False, False]
    assert issues.p_given.tolist() == pytest.approx([0.05, 0.2, 0.2, 0.8, 0.9])
    assert issues.p_suggested.tolist() == pytest.approx([0.9, 0.7, 0.7, 0.8, 0.9])
    assert math.isnan(issues.score[0])
    unscored = rank_label_issues(GIVEN, PROBS)  # no score: ties by index
    assert unscored.index.tolist() == [4, 1, 3, 2, 0] and np.isnan(unscored.score).all()


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="for 5 given labels"):
        rank_label_issues(GIVEN, PROBS[:4])
    with pytest.raises(ValueError, match="must lie in"):
        rank_label_issues(np.array([0, 1, 2, 3, 0]), PROBS)
    with pytest.raises(ValueError, match="scores of shape"):
        rank_label_issues(GIVEN, PROBS, score=np.ones(3))


def test_flags_against_the_mask() -> None:
    issues = rank_label_issues(GIVEN, PROBS)
    mask = np.array([False, True, False, False, True])  # 1 and 4 are wrong; 3 is flagged but right
    assert flag_quality(issues, mask) == {"flagged": 3.0, "precision": pytest.approx(2 / 3), "recall": 1.0}
    none = flag_quality(rank_label_issues(GIVEN, np.eye(3)[GIVEN]), np.zeros(5, dtype=bool))
    assert none["flagged"] == 0 and math.isnan(none["precision"]) and math.isnan(none["recall"])


def test_csv_round_trip_and_refusals(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "issues.csv", rank_label_issues(GIVEN, PROBS, score=np.full(5, 0.5)),
                     classes=["cat", "dog", "owl"], suggested_by="label correction")
    rows = read_csv(path)
    assert list(rows[0]) == list(COLUMNS) and [r["rank"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert (rows[0]["index"], rows[0]["given"], rows[0]["suggested"], rows[0]["flagged"]) == ("4", "dog", "owl", "yes")
    assert rows[-1]["flagged"] == "no" and rows[0]["score"] == "0.5000"
    with pytest.raises(FileNotFoundError, match="evaluate"):
        read_csv(tmp_path / "missing.csv")
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a label-issues table"):
        read_csv(tmp_path / "other.csv")


def test_label_issues_table_that_is_binary_or_has_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "label_issues.csv"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))} is not a label-issues table \(not UTF-8 text"):
        read_csv(path)
    path.write_bytes(b"\x00" * 40)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))} is not a label-issues table"):
        read_csv(path)
    path.write_text("\ufeff" + ",".join(COLUMNS) + "\n1,0,0,,cat,dog,0.1,0.9,,yes,x\n")
    assert read_csv(path)[0]["given"] == "cat"
    path.write_text(",".join(COLUMNS) + "\n1,0,0,,cat,dog\n")
    with pytest.raises(ValueError, match="row 2 has 6 cells, not 11"):
        read_csv(path)


def test_cli_shows_the_top_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    missing = runner.invoke(app, ["label-issues"])
    assert missing.exit_code == 1 and missing.output.strip().startswith("error: reports/label_issues.csv does not")
    write_csv(tmp_path / "reports" / "label_issues.csv", rank_label_issues(GIVEN, PROBS),
              classes=["cat", "dog", "owl"], suggested_by="the student")
    result = runner.invoke(app, ["label-issues", "-n", "2"])
    assert result.exit_code == 0, result.output
    assert "2 most suspicious of 5 train labels (3 flagged; suggested by the student)" in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("│")]
    assert len(lines) == 2 and "owl" in lines[0]
    flagged = runner.invoke(app, ["label-issues", "--flagged", "-n", "10"])
    assert len([line for line in flagged.output.splitlines() if line.startswith("│")]) == 3
    as_json = runner.invoke(app, ["label-issues", "--flagged", "--json"])  # for scripts: the file's rows
    rows = json.loads(as_json.output)
    assert as_json.exit_code == 0 and len(rows) == 3 and all(r["flagged"] == "yes" for r in rows)
    assert rows == [r for r in read_csv(tmp_path / "reports" / "label_issues.csv") if r["flagged"] == "yes"]
    assert list(rows[0]) == list(COLUMNS)
