"""`hpeft dashboard` as a real server: it answers on 127.0.0.1, lists the runs, rebuilds the page when a run
lands, answers 404 elsewhere, and serves a 'no runs yet' page for an empty run folder."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.report.fixtures import seed000_runs, summary, write_runs

START_S = 60  # the CLI imports lightning (~8 s on an idle machine); a busy one is slower
POLL_S = 0.25


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 30) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


@contextlib.contextmanager
def dashboard(runs: Path, log: Path, extra: list[str] = ()):
    """`hpeft dashboard --runs RUNS --port <free> --refresh 1` in a subprocess; yields its base URL once it
    answers. The server is killed on the way out, whatever happened."""
    port = free_port()
    env = {**os.environ, "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}
    env.pop("HPEFT_RUN_ID", None)
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "hpeft.cli", "dashboard", "--runs", str(runs), "--port", str(port),
                                 "--refresh", "1", *extra], cwd=runs.parent, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline, ready = time.monotonic() + START_S, False
        for _ in range(int(START_S / POLL_S) + 1):
            if proc.poll() is not None:
                pytest.fail(f"hpeft dashboard exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                ready = True
                break
            if time.monotonic() > deadline:
                break
            time.sleep(POLL_S)
        if not ready:
            pytest.fail(f"hpeft dashboard did not answer on {url} within {START_S}s:\n{log.read_text()[-3000:]}")
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def run_count(page: str) -> int:
    found = re.search(r"(\d+) runs?, \d+ skipped", page)
    assert found, f"no run count on the page: {page[:300]!r}...{page[-300:]!r}"
    return int(found.group(1))


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_dashboard_serves_and_rebuilds_as_runs_land(tmp_path):
    runs = write_runs(tmp_path / "runs", seed000_runs())
    with dashboard(runs, tmp_path / "dashboard.log") as url:
        status, page = get(url + "/")
        assert status == 200
        assert run_count(page) == 5
        assert "<title>hpeft dashboard</title>" in page
        assert 'http-equiv="refresh" content="1"' in page
        assert "prompt + lora" in page and "adapter" in page  # method labels in the comparison table
        assert "late_bitfit" not in page

        write_runs(runs, [summary("late_bitfit", "BitFitOnly", {"bitfit": 3_000}, -25.5, flops=950)])
        status, page = get(url + "/index.html")
        assert status == 200
        assert run_count(page) == 6, "the page was not rebuilt after a new summary.json landed"
        assert "bitfit" in page

        status, _ = get(url + "/no-such-page")
        assert status == 404
        secret = (runs.parent / "dashboard.log").resolve()  # a file beside the runs the server can read
        for path in ("/../dashboard.log", "/%2e%2e/dashboard.log", "//" + str(secret).lstrip("/"),
                     "/runs/" + next(runs.rglob("summary.json")).relative_to(runs).as_posix(), "/index.html/../../x"):
            status, body = get(url + path)
            assert status == 404 and "metrics" not in body and "hpeft dashboard on" not in body, path
        status, page = get(url + "/")  # still serving after the 404, same page without a rebuild
        assert status == 200 and run_count(page) == 6


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_dashboard_on_an_empty_run_folder_says_so_and_keeps_serving(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    with dashboard(runs, tmp_path / "dashboard.log") as url:
        status, page = get(url + "/")
        assert status == 200
        assert "no runs" in page.lower(), page
        assert "refresh" in page and "content='1'" in page.replace('"', "'"), "the empty page must reload itself"

        status, page = get(url + "/")
        assert status == 200 and "no runs" in page.lower()

        write_runs(runs, [summary("first", "LoRAOnly", {"lora": 49_200}, -26.4)])
        status, page = get(url + "/")
        assert status == 200
        assert run_count(page) == 1, "the first run to land did not replace the 'no runs' page"


def test_dashboard_starts_optuna_dashboard_for_the_study(tmp_path):
    import optuna

    runs = write_runs(tmp_path / "runs", seed000_runs())
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()
    trial.set_user_attr("run_dir", str(runs / "t" / "lora"))
    study.tell(trial, -26.4)
    port = free_port()
    with dashboard(runs, tmp_path / "log.txt", ["--storage", storage, "--study", "s", "--optuna-port", str(port)]) as url:
        assert run_count(get(url)[1]) == 5  # the run dirs and the study's trial, which is one of them
        for _ in range(120):  # optuna-dashboard starts beside it: bounded wait for its page
            with contextlib.suppress(OSError):
                status, page = get(f"http://127.0.0.1:{port}/dashboard", timeout=2)
                if status == 200:
                    break
            time.sleep(0.5)
        assert status == 200 and "optuna" in page.lower()


@pytest.mark.timeout(150)
def test_dashboard_beyond_loopback_warns(tmp_path):
    runs = write_runs(tmp_path / "runs", seed000_runs())
    log = tmp_path / "dashboard.log"
    with dashboard(runs, log, extra=["--host", "0.0.0.0"]) as url:
        status, _ = get(url + "/")
        assert status == 200
    assert "warning: --host 0.0.0.0 serves the dashboard beyond this machine" in log.read_text()
