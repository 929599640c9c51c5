"""Shared fixtures: the repository root and configs built from params.yaml (plus an overlay or a preset)."""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from labelnoise.config import Config, from_dict, merge, read_yaml

REPO = Path(__file__).resolve().parent.parent

# `make test` runs the suite in one worker process per core (pytest-xdist): each worker's torch gets its share of
# the cores, so in-process training does not fight the other workers for them
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


# The modules that run whole stages or pipelines (most of the suite's time), longest first as measured: `make test`
# hands the worker processes whole modules in collection order (--no-loadscope-reorder), so these start first and
# the short modules fill in around them; run last, they would leave one worker busy alone at the end.
LONGEST_FIRST = ("test_pipeline_e2e", "test_reliability", "test_own_data", "test_distributed",
                 "test_correction", "test_presets", "test_bad_inputs", "test_trusted_methods", "test_stops")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        module = item.path.stem  # the test file's name
        return LONGEST_FIRST.index(module) if module in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: each module keeps its own order


@pytest.fixture(scope="session")
def repo() -> Path:
    """The repository root (where params.yaml, dvc.yaml and presets/ live)."""
    return REPO


@pytest.fixture
def make_config(repo: Path) -> Callable[..., Config]:
    """``make_config({"data": {"trusted_size": 10}})`` → params.yaml with the overlay merged on, validated."""
    base = read_yaml(repo / "params.yaml")

    def _make(overlay: dict[str, Any] | None = None) -> Config:
        return from_dict(merge(base, overlay or {}))

    return _make


@pytest.fixture
def tiny_config(make_config: Callable[..., Config], repo: Path) -> Config:
    """params.yaml merged with presets/tiny.yaml (digits, a few epochs)."""
    return make_config(read_yaml(repo / "presets" / "tiny.yaml"))


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run a test on one torch thread (the 2-core machine is shared by the whole suite)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ----------------------------------------------------------------------------- no fork of the test process
# A fork of this multi-threaded process (torch's and MLflow's threads) can leave the child deadlocked on a lock
# another thread held at that moment: a library's worker pool once hung the suite that way. Every test fails that
# forks it, except a subprocess's fork-and-exec (its preexec_fn is the only Python that runs in the child).
_FORKS: list[str] = []


def _record_fork() -> None:
    stack = traceback.extract_stack()[:-1]
    if not any(frame.filename.endswith(f"{os.sep}subprocess.py") for frame in stack):
        _FORKS.append("".join(traceback.format_list(stack[-6:])))


os.register_at_fork(before=_record_fork)


@pytest.fixture(autouse=True)
def no_fork_of_the_test_process() -> Iterator[None]:
    start = len(_FORKS)
    yield
    forks = _FORKS[start:]
    assert not forks, f"the test process was forked {len(forks)} time(s), first from:\n{forks[0]}"
