"""Shared pieces of the benchmarks: paths, the cached benchmark data set, small statistics helpers."""

from __future__ import annotations

import contextlib

import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench_out"
# One intra-op thread by default: on a small machine shared with other jobs, two OpenMP threads on two
# cores stall at every barrier whenever another process holds a core (steps 10-70x slower, see README).
DEFAULT_THREADS = 1

# The data set both benchmarks use: one TDL-A data set on the quickstart's 6-PRB grid (14 x 72), no LMMSE.
# 4096 training samples = 64 steps of batch 64 per epoch.
BENCH_DATA = {
    "scenario": "TDL-A",
    "snr_db": [0, 20],
    "num_prbs": 6,
    "num_train": 4096,
    "num_val": 256,
    "num_test": 64,
    "batch_size": 64,
    "seed": 11,
    "lmmse": False,
    "progress": False,
}


def bench_data_args(out_dir: Path) -> dict:
    """ChannelDataModule init args of the benchmark data set, cached under <out_dir>/data_cache."""
    return {**BENCH_DATA, "cache_dir": str((Path(out_dir) / "data_cache").resolve())}


def prepare_bench_data(out_dir: Path):
    """Generate (first time only) and cache the benchmark data set; returns the data module."""
    from hpeft.data import ChannelDataModule

    dm = ChannelDataModule(**bench_data_args(out_dir))
    dm.prepare_data()
    return dm


def child_env(threads: int) -> dict:
    """Environment of a benchmark child process: a fixed intra-op thread count, the repo importable."""
    env = dict(os.environ)
    env.pop("HPEFT_RUN_ID", None)
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        WANDB_SILENT="true",
        PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])]),
        PYTHONUNBUFFERED="1",
    )
    return env


def median(values) -> float:
    values = list(values)
    return float(statistics.median(values)) if values else float("nan")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def torch_threads(threads: int):
    """torch's intra-op threads set to `threads` inside the block, restored after it."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


GOAL_OPS = {">=": lambda v, g: v >= g, "<=": lambda v, g: v <= g, ">": lambda v, g: v > g, "<": lambda v, g: v < g,
            "==": lambda v, g: v == g}


def goal(name: str, value: float, target: float, op: str) -> dict:
    """One row of bench_out/results.json's `goals` table: {name, value, goal, met} (plus the comparison, so
    the table reads "value op goal"). A value that is not a finite number never meets its goal."""
    finite = isinstance(value, (int, float)) and value == value and abs(value) != float("inf")
    return {"name": name, "value": float(value) if finite else None, "goal": target, "op": op,
            "met": bool(finite and GOAL_OPS[op](value, target))}
