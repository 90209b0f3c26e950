"""`--workers N` on one machine: N worker processes against the same storage, each running what
`hpeft search ... --workers 1` on a cluster node runs. Separate processes (not threads) because each trial is a
whole Lightning run with its own global state; the parent only waits, and forwards Ctrl-C / SIGTERM to them.

On Linux the workers are forked from the parent after its checks (`fork_workers`): they inherit its imports
(Lightning, torch, transformers: about 7 s a process here) instead of paying the start-up again. That is safe here
because the parent has only parsed configs (no torch thread pool, no CUDA, no W&B run yet) and a forked child
leaves through os._exit, so it never closes the parent's database connections. Elsewhere (no fork), each worker
is a fresh `hpeft search` process (`run_workers`)."""

from __future__ import annotations

import multiprocessing
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


def fork_workers(config, url: str, workers: int) -> int:
    """Fork `workers` children that each run `run_worker(config, url)`; the exit status is the worst of theirs."""
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_forked_worker, args=(config, url, i, workers), name=f"hpeft-search-worker-{i}")
             for i in range(workers)]
    for p in procs:
        p.start()

    def forward(signum, _frame):
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for p in procs:
            p.join()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return max((p.exitcode for p in procs), key=abs)


def _forked_worker(config, url: str, index: int, workers: int) -> None:
    import torch

    from hpeft.search.errors import SearchError
    from hpeft.search.study import run_worker

    os.environ.pop("HPEFT_RUN_ID", None)
    os.environ["HPEFT_SEARCH_WORKER"] = str(index)  # the sampler's seed offset (samplers.worker_index)
    # Share the cores (torch read OMP_NUM_THREADS when the parent imported it, so set the count itself).
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 1) // workers)))
    try:
        run_worker(config, url)
    except SearchError as err:
        print(f"hpeft search: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()
