"""What a trial returns to Optuna and what it must respect, both read from the trial run's summary.json.

A figure is either a logged metric (`test/nmse_db`, `val/loss`: a key of summary["metrics"]) or a cost
(`params.trainable`, `flops.forward_per_sample`: a dotted path into summary.json, see DESIGN.md's run
record contract). Constraints are `"<figure> <= <number>"` (or >=, <, >); Optuna counts a trial feasible
when every constraint value is <= 0, so `x <= v` is stored as x - v and `x >= v` as v - x."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from hpeft.search.errors import SearchError

# The cost figures every run record has (DESIGN.md's summary.json contract).
COSTS = {
    "params": ("total", "trainable", "base", "trainable_pct"),
    "flops": ("forward_per_sample", "train_step_per_sample"),
    "memory": ("peak_bytes",),
    "speed": ("train_samples_per_s", "latency_ms_batch1", "fit_seconds"),
}
COST_FIGURES = tuple(f"{group}.{name}" for group, names in COSTS.items() for name in names) + ("trained_steps",)
# Costs a run knows before it trains: constraints on them are set at fit start, so a pruned trial has them too.
KNOWN_AT_START = ("params.", "flops.")
DIRECTIONS = ("minimize", "maximize")
SPLITS = ("train", "val", "test")


def metric_names(task_metric: str, task: str) -> list[str]:
    """The metrics a run of this task logs (BaseTask: <split>/loss, <split>/<metric>; the channel task's baselines)."""
    names = ["train/loss", "val/loss", "test/loss", f"val/{task_metric}", f"test/{task_metric}"]
    if task == "channel":
        names += ["test/ls_nmse_db", "test/lmmse_nmse_db"]
    return names


def check_figure(name: str, valid_metrics: list[str], what: str) -> None:
    if name in COST_FIGURES or name in valid_metrics:
        return
    raise SearchError(f"{what} {name!r} is not a figure of the run record; valid: metrics {valid_metrics}, "
                      f"costs {list(COST_FIGURES)}")


def figure(summary: dict, name: str) -> float:
    """A figure of a run record; a KeyError names what the record has."""
    metrics = summary.get("metrics", {})
    if name in metrics:
        return float(metrics[name])
    node = summary
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"{name!r} is not in the run record {summary.get('run_id', '')} (metrics there: {sorted(metrics)})")
        node = node[part]
    return float(node)


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str = "minimize"


def parse_objectives(spec) -> list[Objective]:
    if isinstance(spec, (str, dict)):
        spec = [spec]
    if not isinstance(spec, list) or not spec:
        raise SearchError(f"objectives: {spec!r}; give a list like [{{metric: test/nmse_db, direction: minimize}}]")
    out = []
    for item in spec:
        item = {"metric": item} if isinstance(item, str) else item
        if not isinstance(item, dict) or "metric" not in item or set(item) - {"metric", "direction"}:
            raise SearchError(f"objective {item!r}: give {{metric: NAME, direction: minimize|maximize}}")
        direction = item.get("direction", "minimize")
        if direction not in DIRECTIONS:
            raise SearchError(f"objective {item['metric']}: direction {direction!r}; valid: {list(DIRECTIONS)}")
        out.append(Objective(str(item["metric"]), direction))
    names = [o.metric for o in out]
    if len(set(names)) != len(names):
        raise SearchError(f"objectives: {names} names a figure twice")
    return out


_CONSTRAINT = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s*(<=|>=|<|>)\s*([-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class Constraint:
    text: str
    figure: str
    op: str
    bound: float

    def value(self, summary: dict) -> float:
        """Optuna's convention: <= 0 is feasible."""
        x = figure(summary, self.figure)
        return x - self.bound if self.op in ("<=", "<") else self.bound - x

    @property
    def known_at_start(self) -> bool:
        return self.figure.startswith(KNOWN_AT_START)


def parse_constraints(spec) -> list[Constraint]:
    if spec in (None, []):
        return []
    if not isinstance(spec, list):
        raise SearchError(f"constraints: {spec!r}; give a list like ['params.trainable <= 80000']")
    out = []
    for text in spec:
        match = _CONSTRAINT.match(str(text))
        try:
            bound = float(match.group(3)) if match else math.nan
        except ValueError:
            bound = math.nan
        if not match or not math.isfinite(bound):
            raise SearchError(f"constraint {text!r}: write '<figure> <= <number>' (or >=, <, >), e.g. 'params.trainable <= 80000'")
        out.append(Constraint(str(text), match.group(1), match.group(2), bound))
    return out
