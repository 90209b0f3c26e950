"""What a finished (or resumed) study prints: trial counts, the best trial or the Pareto front, and for
table studies (seed 000's table) the comparison table of its runs, one column per scenario, mean +- sd over seeds."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict

import optuna
from rich.console import Console
from rich.table import Table

from hpeft.search.config import SearchConfig


def _console() -> Console:
    return Console(width=max(Console().width, 140))


def print_study(study: optuna.Study, config: SearchConfig, storage_shown: str) -> None:
    console = _console()
    counts = Counter(t.state.name for t in study.trials)
    console.print(f"study {config.study}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + f"  ({storage_shown})")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return
    best = study.best_trials
    names = [o.metric for o in config.objectives]
    table = Table(title="Pareto front" if len(names) > 1 else "best trial")
    for col in ["trial", *names, "params", "run"]:
        table.add_column(col, overflow="fold")
    for t in sorted(best, key=lambda t: t.values):
        params = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in t.params.items())
        table.add_row(str(t.number), *[f"{v:.4g}" for v in t.values], params, t.user_attrs.get("run_dir", ""))
    console.print(table)
    if config.table:
        print_comparison(study, console)


def comparison(study: optuna.Study) -> tuple[list[str], list[dict]]:
    """Rows (method, trainable, per scenario: mean, sd, n over seeds) from the study's completed runs."""
    from hpeft.report.rows import to_rows

    summaries, _ = _summaries(study)
    rows, _ = to_rows(summaries)
    grouped: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    scenarios = sorted({r["scenario"] for r in rows})
    for r in rows:
        grouped[(r["method"], r["variant"], r["trainable"])][r["scenario"]].append(r["metric"])
    out = []
    for (method, variant, trainable), by_scenario in grouped.items():
        cells = {s: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v)) for s, v in by_scenario.items()}
        out.append({"method": method, "variant": variant, "trainable": trainable, "cells": cells,
                    "metric": rows[0]["metric_label"] if rows else ""})
    return scenarios, sorted(out, key=lambda r: (r["trainable"], r["method"]))


def _summaries(study: optuna.Study) -> tuple[list[dict], list]:
    from hpeft.report.runs import load_summaries

    dirs = [t.user_attrs["run_dir"] for t in study.trials
            if t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs.get("run_dir")]
    return load_summaries(dirs)


def print_comparison(study: optuna.Study, console: Console | None = None) -> None:
    scenarios, rows = comparison(study)
    if not rows:
        return
    table = Table(title=f"{study.study_name}: {rows[0]['metric']} on the test set, mean +- sd over seeds (n)")
    table.add_column("method")
    table.add_column("variant")
    table.add_column("trainable params", justify="right")
    for s in scenarios:
        table.add_column(s or "(scenario)", justify="right")
    for r in rows:
        cells = [f"{r['cells'][s][0]:.2f} +- {r['cells'][s][1]:.2f} ({r['cells'][s][2]})" if s in r["cells"] else "" for s in scenarios]
        table.add_row(r["method"], r["variant"], f"{r['trainable']:,}", *cells)
    (console or _console()).print(table)
