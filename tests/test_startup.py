"""`hpeft --help`, the light commands' --help and `hpeft report` start without torch or Lightning: each runs
in a subprocess whose import system refuses them (tests/startup_guard.py), so an import that crept into
their path fails here instead of costing every user seconds."""

import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.report.fixtures import seed000_runs, write_runs


def guarded(args: list[str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tests/startup_guard.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("args, expect", [
    (["--help"], ["fit|validate|test|predict", "search", "study", "report", "dashboard"]),
    (["data", "--help"], ["hpeft data --config CFG"]),
    (["search", "--help"], ["--storage", "--workers"]),
    (["study", "--help"], ["--scale", "--seeds"]),
    (["report", "--help"], ["--runs", "--out"]),
    (["dashboard", "--help"], ["--port"]),
])
def test_help_needs_neither_torch_nor_lightning(tmp_path, args, expect):
    done = guarded(args, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "startup guard" not in done.stderr
    for text in expect:
        assert text in done.stdout


def test_report_needs_neither_torch_nor_lightning(tmp_path):
    write_runs(tmp_path / "runs", seed000_runs())
    done = guarded(["report", "--runs", "runs", "--out", "r.html"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "5 runs" in done.stdout and (tmp_path / "r.html").stat().st_size > 10_000


def test_the_guard_would_catch_an_import(tmp_path):
    # Negative control: a command that does need torch fails under the guard, naming the import.
    done = guarded(["inspect", "--help"], tmp_path)
    assert done.returncode != 0 and "startup guard: " in done.stderr
