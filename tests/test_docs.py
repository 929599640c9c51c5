"""The README and the documentation site: the site builds with `mkdocs build --strict` (a broken link or anchor
fails), its references are written from cli.py and params.yaml, the README stays short with the newcomer's path
on its first screen, and no user-facing text names an issue or a commit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from labelnoise.config import RENAMED, flatten, read_yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "docs"))
import hooks  # noqa: E402 - docs/hooks.py, the site's build hook


def test_the_site_builds_strictly_with_the_generated_references(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    out = subprocess.run([str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "-d", str(tmp_path)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    cli = (tmp_path / "cli" / "index.html").read_text()
    params = (tmp_path / "params" / "index.html").read_text()
    for command in ("download", "train-student", "preset", "predict", "ui", "label-issues"):
        assert f"<code>{command}</code>" in cli, command
    for key in flatten(read_yaml(REPO / "params.yaml")):
        assert f"<code>{key}</code>" in params, key
    assert (tmp_path / "studies" / "trusted" / "methods.png").is_file()  # the study reports with their figures


def test_the_params_reference_joins_a_comment_to_its_setting() -> None:
    text = hooks.params_reference()
    row = next(line for line in text.splitlines() if line.startswith("| `data.truth` |"))
    assert "`true`" in row and "no ground truth" in row and "reports leave out" in row  # a three-line comment
    assert "| `base.device` | `auto` | auto \\| cpu \\| cuda" in text  # a pipe inside a cell is escaped


def test_the_readme_is_short_and_starts_with_the_newcomers_path() -> None:
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 300
    heads = {line[3:]: n for n, line in enumerate(lines, 1) if line.startswith("## ")}
    for head in ("The two commands", "Try it on the tiny preset", "Your own data", "Compare runs in the MLflow UI"):
        assert heads[head] < 150, head
    for link in re.findall(r"\]\(([^)#]+)\)", "\n".join(lines)):
        assert link.startswith("https://") or (REPO / link).exists(), link


SOURCES = ["README.md", "docs", "reports", "params.yaml", "cli"]


def _texts(source: str) -> dict[str, str]:
    """A user-facing source's texts by name: a file, the .md files of a folder, or the CLI's help."""
    if source == "cli":
        return {"cli.py --help": hooks.cli_reference()}
    path = REPO / source
    files = [path] if path.is_file() else sorted(path.rglob("*.md"))
    return {str(f.relative_to(REPO)): f.read_text() for f in files}


@pytest.mark.parametrize("source", SOURCES)
def test_no_user_facing_text_names_an_issue_or_a_commit(source: str) -> None:
    # a git hash is named as one ("commit 7e05088") or in full (40 digits); MLflow's run ids (32) are fine
    pattern = re.compile(r"\bissues? #?\d+|\bcommits? [0-9a-f]{6,}|\b[0-9a-f]{40}\b", re.IGNORECASE)
    found = {name: pattern.findall(text) for name, text in _texts(source).items()}
    assert not {name: hits for name, hits in found.items() if hits}


@pytest.mark.parametrize("source", SOURCES)
def test_no_user_facing_text_names_a_renamed_param(source: str) -> None:
    """A renamed key fails with one line naming the new one; README, docs, study reports and help use the new."""
    pattern = re.compile(r"(?<![\w.])(" + "|".join(re.escape(k) for k in RENAMED) + r")(?!\w|\.\w)")
    found = {name: pattern.findall(text) for name, text in _texts(source).items()}
    assert not {name: hits for name, hits in found.items() if hits}
