"""Samplers and pruners by name, with their options checked against the Optuna class's own signature.

    sampler: {type: tpe, seed: 0, n_startup_trials: 8}      # tpe (default), nsga2, gp, grid, random
    pruner: {type: median, n_startup_trials: 3, monitor: val/nmse_db}   # none (default), median, percentile,
                                                             #   hyperband, successive_halving
Optuna does not prune multi-objective studies (Trial.report refuses them), so a pruner is refused there."""

from __future__ import annotations

import inspect
import os

import optuna

from hpeft.search.errors import SearchError
from hpeft.search.space import Param, grid

SAMPLERS = {
    "tpe": optuna.samplers.TPESampler,
    "nsga2": optuna.samplers.NSGAIISampler,
    "gp": optuna.samplers.GPSampler,
    "grid": optuna.samplers.GridSampler,
    "random": optuna.samplers.RandomSampler,
}
PRUNERS = {
    "none": optuna.pruners.NopPruner,
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
}
# Options hpeft sets itself, or that take Python objects a YAML file cannot give.
_NOT_OPTIONS = {"self", "search_space", "constraints_func", "gamma", "weights", "mutation", "crossover",
                "independent_sampler", "elite_population_selection_strategy", "child_generation_strategy",
                "after_trial_strategy"}


def _options(kind: str, cls, spec: dict, what: str) -> dict:
    valid = [p for p in inspect.signature(cls.__init__).parameters if p not in _NOT_OPTIONS and p != "kwargs"]
    unknown = sorted(set(spec) - set(valid))
    if unknown:
        raise SearchError(f"{what} {kind}: unknown options {unknown}; valid: {valid}")
    return spec


def _split(spec, default: str, table: dict, what: str) -> tuple[str, dict]:
    spec = {"type": spec} if isinstance(spec, str) else dict(spec or {"type": default})
    kind = spec.pop("type", default)
    if kind not in table:
        raise SearchError(f"{what} {kind!r}; valid: {list(table)}")
    return kind, spec


def check_sampler(spec) -> tuple[str, dict]:
    kind, options = _split(spec, "tpe", SAMPLERS, "sampler")
    return kind, _options(kind, SAMPLERS[kind], options, "sampler")


def worker_index() -> int:
    """This worker's index: --workers sets HPEFT_SEARCH_WORKER, SLURM its array/task ids. Workers started some
    other way with a seeded sampler need HPEFT_SEARCH_WORKER=0,1,... (or no seed); a lone worker is 0, reproducible."""
    for var in ("HPEFT_SEARCH_WORKER", "SLURM_ARRAY_TASK_ID", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def make_sampler(spec, space: dict[str, Param], worker: int = 0) -> optuna.samplers.BaseSampler:
    """`worker` shifts a configured seed: workers with one seed would all propose the same trials. Not a grid's:
    GridSampler names points by their index in its seeded shuffle of the grid, and every worker must mean the same
    point by an index (with shifted seeds, workers took each other's points for visited: duplicates and holes)."""
    kind, options = check_sampler(spec)
    if kind == "grid":
        return optuna.samplers.GridSampler(grid(space), **options)
    if options.get("seed") is not None:
        options["seed"] = int(options["seed"]) + worker
    return SAMPLERS[kind](**options)


def check_pruner(spec, n_objectives: int) -> tuple[str, dict, str | None]:
    """(kind, options, monitor); `monitor` is the logged validation metric the trial reports to the pruner."""
    kind, options = _split(spec, "none", PRUNERS, "pruner")
    monitor = options.pop("monitor", None)
    if kind != "none" and n_objectives > 1:
        raise SearchError(f"pruner {kind}: Optuna does not prune multi-objective studies ({n_objectives} objectives); "
                          "use pruner: none, or one objective")
    if monitor is not None and not str(monitor).startswith("val/"):
        raise SearchError(f"pruner monitor {monitor!r}: pruning follows a validation metric, e.g. val/nmse_db")
    return kind, _options(kind, PRUNERS[kind], options, "pruner"), monitor


def make_pruner(spec, n_objectives: int) -> optuna.pruners.BasePruner:
    kind, options, _ = check_pruner(spec, n_objectives)
    return PRUNERS[kind](**options)
