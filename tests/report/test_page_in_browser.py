"""`hpeft report`'s page opened in a real browser (headless Chromium): every figure is drawn, no script error.

The page itself records what happened: `<body data-rendered="N">` after drawing N figures, and
`data-errors="..."` when a script error occurred (page.py's SCRIPT). Chromium's `--dump-dom` prints the DOM
after the scripts ran, so the test reads both from it. A screenshot is kept as a test artifact in
test-artifacts/report.png.

Without Chromium the test skips locally and fails under CI (env var CI set): `.ci/run` installs it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, run_hpeft
from tests.report.fixtures import seed000_runs, write_runs

ARTIFACTS = REPO / "test-artifacts"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WINDOW = (1400, 4200)


def chromium_or_skip() -> str:
    """The browser to use: $HPEFT_CHROMIUM, else `chromium` (Debian's) on PATH."""
    found = os.environ.get("HPEFT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    why = "headless Chromium not found (no `chromium` on PATH, HPEFT_CHROMIUM unset); install it: apt-get install chromium"
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{why} -- CI is set, so this is a failure, not a skip")
    pytest.skip(why)


def run_chromium(browser: str, url: str, profile: Path, extra: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    """One headless Chromium run in its own process group, so the browser's helpers (zygote, GPU, renderers)
    go with it when it hangs; a private profile so runs never share a lock."""
    args = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
            f"--user-data-dir={profile}", "--virtual-time-budget=5000", f"--window-size={WINDOW[0]},{WINDOW[1]}",
            *extra, url]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"chromium ran past {timeout}s: {' '.join(args)}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the leader and whatever helpers it left behind
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def plot_divs(page: str) -> list[str]:
    """Each `<div ... class="plot...">` with what follows it up to the next one (or the end of the page)."""
    starts = [m.start() for m in re.finditer(r'<div id="[^"]*" class="plot\b', page)]
    return [page[a:b] for a, b in zip(starts, [*starts[1:], len(page)])]


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE, f"not a PNG: starts {data[:8]!r}"
    assert data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_report_draws_every_figure_in_chromium(tmp_path):
    browser = chromium_or_skip()
    runs = write_runs(tmp_path / "runs", seed000_runs())
    out = tmp_path / "report.html"
    done = run_hpeft(["report", "--runs", str(runs), "--out", str(out)], cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    page = out.read_text()
    n_plots = page.count('class="plot"')
    assert n_plots >= 5, f"expected the seed-000 page to have >= 5 figures, found {n_plots}"
    assert not re.search(r"<script[^>]*\bsrc=", page), "the page must be self-contained (plotly.js inlined)"

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    started = time.monotonic()
    # One browser run gives both: --dump-dom prints the DOM and --screenshot writes the PNG, each after the
    # virtual time budget (the scripts drawing the figures) ran out.
    res = run_chromium(browser, out.as_uri(), tmp_path / "profile", ["--dump-dom", f"--screenshot={shot}"])
    if not shot.exists():  # a Chromium that does one of the two per run: a second run for the screenshot
        run_chromium(browser, out.as_uri(), tmp_path / "profile2", [f"--screenshot={shot}"])
    browser_s = time.monotonic() - started
    dom = res.stdout
    assert res.returncode == 0 and "<body" in dom, f"chromium rc={res.returncode}, stderr tail:\n{res.stderr[-2000:]}"

    body = re.search(r"<body[^>]*>", dom).group(0)
    errors = re.search(r'data-errors="([^"]*)"', body)
    assert errors is None, f"script errors on the page: {errors.group(1)}"
    rendered = re.search(r'data-rendered="(\d+)"', body)
    assert rendered, f"the page's script never finished drawing (no data-rendered on {body!r}); browser {browser_s:.1f}s"
    assert int(rendered.group(1)) == n_plots, f"drew {rendered.group(1)} of {n_plots} figures"

    divs = plot_divs(dom)
    assert len(divs) == n_plots
    for div in divs:
        head = div[:div.find(">") + 1]
        assert "js-plotly-plot" in head, f"plotly never took over {head}"
        assert 'class="plot-container' in div and "main-svg" in div, f"{head} has no plotly rendering"

    data = shot.read_bytes()
    assert png_size(data) == WINDOW, f"screenshot is {png_size(data)}, asked for {WINDOW}"
    assert len(data) > 20_000, f"screenshot is only {len(data)} bytes: a blank page?"
