"""`--workers N` on one machine: N worker processes, each the same `hpeft search ... --workers 1` a cluster
node would run, against the same storage. Separate processes (not threads) because each trial is a whole
Lightning run with its own global state; the parent only waits, and forwards Ctrl-C / SIGTERM to them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys


def worker_command(config_path: str, url: str, study: str, n_trials: int | None, timeout: float | None) -> list[str]:
    command = [sys.executable, "-m", "hpeft.cli", "search", "--config", config_path, "--storage", url,
               "--study-name", study, "--workers", "1", "--no-summary", "--prechecked"]
    if n_trials is not None:
        command += ["--n-trials", str(n_trials)]
    if timeout is not None:
        command += ["--timeout", str(timeout)]
    return command


def run_workers(command: list[str], workers: int) -> int:
    """Start `workers` copies of `command`; the exit status is the worst of theirs."""
    env = dict(os.environ)
    env.pop("HPEFT_RUN_ID", None)
    # Share the cores instead of every worker's torch taking all of them.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    procs = [subprocess.Popen(command, env={**env, "HPEFT_SEARCH_WORKER": str(i)}) for i in range(workers)]

    def forward(signum, _frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        codes = [p.wait() for p in procs]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return max(codes, key=abs)
