"""CLI start-up: `hpeft --help` against `hpeft fit --help`, each in a fresh process, interleaved.

`python -X importtime -m hpeft.cli --help` lists every module the command imported; the goal row
`cli_help_imports_lightning` is 1 when lightning (or torch) is among them, else 0 (goal 0). The wall times of
`--help` and `fit --help` (which needs Lightning's parser) show what the split of the dispatcher saves.

    python -m benchmarks.run --only startup
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import DEFAULT_OUT, REPO, child_env, median

COMMANDS = {"help": ["--help"], "fit_help": ["fit", "--help"], "report_help": ["report", "--help"]}


def _timed(args: list[str], threads: int) -> tuple[float, str]:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "hpeft.cli", *args], cwd=REPO, env=child_env(threads),
                          capture_output=True, text=True, timeout=300)
    return time.perf_counter() - t0, done.stderr


def imported(importtime: str) -> set[str]:
    return {line.split("|")[-1].strip().split(".")[0] for line in importtime.splitlines() if line.startswith("import time:")}


def run(out_dir: Path = DEFAULT_OUT, quick: bool = False, repeats: int | None = None, threads: int | None = None) -> dict:
    repeats = repeats or 3
    seconds: dict[str, list[float]] = {name: [] for name in COMMANDS}
    modules: dict[str, set[str]] = {}
    for r in range(repeats):
        for name in (list(COMMANDS) if r % 2 == 0 else list(COMMANDS)[::-1]):
            wall, log = _timed(COMMANDS[name], threads or 1)
            seconds[name].append(wall)
            modules[name] = imported(log)
    return {"repeats": repeats, "seconds": {n: median(v) for n, v in seconds.items()},
            "heavy_imports": {n: sorted(modules[n] & {"torch", "lightning", "torchmetrics", "transformers", "wandb"})
                              for n in COMMANDS}}


def table(result: dict):
    from rich.table import Table

    t = Table(title=f"CLI start-up, fresh process each (median of {result['repeats']} interleaved runs)")
    for col in ("command", "wall s", "heavy imports"):
        t.add_column(col, justify="left" if col != "wall s" else "right")
    for name, args in COMMANDS.items():
        t.add_row("hpeft " + " ".join(args), f"{result['seconds'][name]:.2f}", ", ".join(result["heavy_imports"][name]) or "none")
    return t


def goals(result: dict) -> list[dict]:
    from benchmarks.common import goal

    heavy = result["heavy_imports"]["help"]
    return [goal("cli_help_imports_lightning", int(bool(heavy)), 0, "==")]
