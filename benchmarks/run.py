"""Run the hpeft benchmarks, print their tables and write bench_out/results.json (atomically).

    python -m benchmarks.run [--quick] [--only startup|overhead|data|methods|mamba|search|staged|mask|goals] [--threads N] [--repeats N] [--out DIR]

--quick: fewer scenarios and samples, 3 repeats (under ~2 minutes on a warm data cache).
--only goals: every benchmark that has a row in the goals table (all but data); with --quick, the table in
under 10 minutes. Every run ends with that table: {name, value, goal, met} per goal, also written to
results.json as `goals`.
See benchmarks/README.md for what each benchmark measures and how to read the ratios.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

# name -> module in benchmarks/; each has run(out_dir, quick=, repeats=, threads=) and tables(result) (or table).
MODULES = {"startup": "cli_startup", "overhead": "platform_overhead", "data": "data_throughput", "methods": "peft_methods", "mamba": "mamba_scan",
           "search": "search_throughput", "staged": "staged_training", "mask": "mamba_mask"}
BENCHMARKS = tuple(MODULES)
GOAL_BENCHMARKS = ("startup", "mamba", "methods", "overhead", "mask", "staged", "search")


def machine_facts(threads: int) -> dict:
    import lightning
    import torch

    from hpeft import __version__
    from hpeft.train.run_record import git_commit, versions

    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "torch_threads": threads,
        "hpeft": __version__,
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "versions": versions(),
        "git": git_commit(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer samples and scenarios, 3 repeats")
    parser.add_argument("--only", choices=(*BENCHMARKS, "goals"), action="append", help="run only this benchmark (repeatable)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads on every side (default 1)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 5 full, 3 quick)")
    parser.add_argument("--out", type=str, default=None, help="output folder (default <repo>/bench_out)")
    parser.add_argument("--size", choices=["quickstart", "medium"], default="quickstart",
                        help="model for the overhead benchmark (see SIZES in platform_overhead.py)")
    args = parser.parse_args(argv)
    os.environ["HPEFT_BENCH_SIZE"] = args.size  # before platform_overhead is imported; its children inherit it
    if args.repeats is not None and args.repeats < 3:
        parser.error("--repeats must be at least 3: the figures are medians of interleaved repeats")

    import importlib

    from rich.console import Console

    from benchmarks.common import DEFAULT_OUT, DEFAULT_THREADS
    from hpeft.utils.atomic import atomic_write_json

    out_dir = Path(args.out) if args.out else DEFAULT_OUT
    threads = args.threads or DEFAULT_THREADS
    selected = [b for b in BENCHMARKS if b in (args.only or BENCHMARKS) or ("goals" in (args.only or []) and b in GOAL_BENCHMARKS)]
    console = Console()
    results: dict = {"meta": {**machine_facts(threads), "quick": args.quick, "benchmarks": selected}}
    started = time.perf_counter()
    for name in BENCHMARKS:
        if name not in selected:
            continue
        console.rule(f"[bold]{name}")
        module = importlib.import_module(f"benchmarks.{MODULES[name]}")
        results[name] = module.run(out_dir, quick=args.quick, repeats=args.repeats, threads=threads)
        if hasattr(module, "goals"):
            results["goals"] = results.get("goals", []) + module.goals(results[name])
        results["meta"]["wall_seconds"] = time.perf_counter() - started
        results["meta"]["load_average_end"] = list(os.getloadavg())
        atomic_write_json(out_dir / "results.json", results)  # after each benchmark: partial results survive

    console.print()
    for name in BENCHMARKS:
        if name in results and name != "goals":
            module = importlib.import_module(f"benchmarks.{MODULES[name]}")
            for table in module.tables(results[name]) if hasattr(module, "tables") else [module.table(results[name])]:
                console.print(table)
    console.print(goals_table(results.get("goals", [])))
    console.print(f"results: {out_dir / 'results.json'}  ({results['meta']['wall_seconds']:.0f} s in all)")
    return 0


def goals_table(goals: list[dict]):
    from rich.table import Table

    t = Table(title=f"Goals: {sum(g['met'] for g in goals)} of {len(goals)} met")
    for col in ("name", "value", "goal", "met"):
        t.add_column(col, justify="left" if col == "name" else "right")
    for g in goals:
        value = "-" if g["value"] is None else f"{g['value']:.3g}"
        t.add_row(g["name"], value, f"{g['op']} {g['goal']:g}", "[green]yes[/]" if g["met"] else "[red]no[/]")
    return t


if __name__ == "__main__":
    sys.exit(main())
