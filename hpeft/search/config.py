"""A search config (sweeps/optuna/*.yaml): which runs a study makes and how it picks them.

    study: channel-prompt-lora            # the study's name; its runs go to runs/<study>/ (the experiment)
    base_config: configs/channel/hybrid_s_inf.yaml
    fixed: {test_after_fit: true}         # dotted run-config keys set in every trial
    space: {model.init_args.lora_rank: [2, 4, 8]}          # see space.py; `config` picks the base config
    objectives: [{metric: test/nmse_db, direction: minimize}, {metric: params.trainable, direction: minimize}]
    constraints: ["params.trainable <= 80000"]
    sampler: {type: nsga2, seed: 0}       # see samplers.py
    pruner: none                          # single objective only
    n_trials: 40                          # across all workers (a grid: its size)
    timeout: null                         # seconds, per worker
    storage: null                         # default sqlite:///<runs_dir>/<study>/optuna.db
    heartbeat: {interval: 60, grace_period: 180, max_retry: 3}
    table: false                          # print seed 000's comparison table after the study

This file checks the config's own shape; run_config.py checks it against the run configs it names."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from hpeft.search.errors import SearchError
from hpeft.search.objectives import Constraint, Objective, parse_constraints, parse_objectives
from hpeft.search.samplers import check_pruner, check_sampler
from hpeft.search.space import CONFIG_KEY, Param, grid_size, parse_space

KEYS = ("study", "base_config", "fixed", "space", "objectives", "constraints", "sampler", "pruner", "n_trials",
        "timeout", "storage", "heartbeat", "table")
HEARTBEAT = {"interval": 60, "grace_period": 180, "max_retry": 3}
# Keys a search sets on every trial itself: the study names the experiment, and `config` is the base.
RESERVED = ("experiment", CONFIG_KEY)


@dataclass
class SearchConfig:
    study: str
    space: dict[str, Param]
    objectives: list[Objective]
    base_config: str | None = None
    fixed: dict = field(default_factory=dict)
    constraints: list[Constraint] = field(default_factory=list)
    sampler: dict = field(default_factory=lambda: {"type": "tpe"})
    pruner: dict = field(default_factory=lambda: {"type": "none"})
    n_trials: int | None = None
    timeout: float | None = None
    storage: str | None = None
    heartbeat: dict = field(default_factory=lambda: dict(HEARTBEAT))
    table: bool = False
    source: str = ""

    @property
    def sampler_type(self) -> str:
        return check_sampler(self.sampler)[0]

    @property
    def pruner_monitor(self) -> str | None:
        """The validation metric the pruning callback follows (None: no pruning)."""
        kind, _, monitor = check_pruner(self.pruner, len(self.objectives))
        if kind == "none":
            return None
        if monitor:
            return monitor
        split, _, name = self.objectives[0].metric.partition("/")
        if split not in ("val", "test") or not name:
            raise SearchError(f"pruner {kind}: the objective {self.objectives[0].metric!r} is not a logged metric; "
                              "give pruner.monitor (e.g. val/nmse_db)")
        return f"val/{name}"

    def base_configs(self) -> list[str]:
        return list(self.space[CONFIG_KEY].choices) if CONFIG_KEY in self.space else [self.base_config]

    def with_overrides(self, study: str | None = None, storage: str | None = None, n_trials: int | None = None,
                       timeout: float | None = None) -> SearchConfig:
        """The command line's --study-name, --storage, --n-trials and --timeout win over the file."""
        out = replace(self, study=study or self.study, storage=storage or self.storage,
                      n_trials=n_trials if n_trials is not None else self.n_trials,
                      timeout=timeout if timeout is not None else self.timeout)
        out.check()
        return out

    def check(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.study or ""):
            raise SearchError(f"study={self.study!r} must be a folder name (letters, digits, '.', '_', '-'): "
                              "it names the runs' experiment")
        if self.n_trials is not None and (isinstance(self.n_trials, bool) or not isinstance(self.n_trials, int) or self.n_trials < 1):
            raise SearchError(f"n_trials={self.n_trials!r} must be a positive integer")
        if self.timeout is not None and (not isinstance(self.timeout, (int, float)) or self.timeout <= 0):
            raise SearchError(f"timeout={self.timeout!r} must be a positive number of seconds")
        if self.sampler_type == "grid":
            grid_size(self.space)  # raises on a range without a step
        elif self.n_trials is None:
            raise SearchError(f"n_trials is missing: sampler {self.sampler_type} needs a trial budget (only grid knows its own)")
        self.pruner_monitor  # noqa: B018 - validates the pruner against the objectives

    @property
    def total_trials(self) -> int:
        """How many COMPLETE or PRUNED trials end the study, across workers: a grid is run once through."""
        if self.sampler_type == "grid":
            size = grid_size(self.space)
            return min(self.n_trials or size, size)
        return self.n_trials


def _dotted(value: dict, what: str) -> dict:
    if not isinstance(value, dict):
        raise SearchError(f"{what}: {value!r}; give a mapping of dotted run-config keys to values")
    for key in value:
        if key in RESERVED:
            raise SearchError(f"{what}: {key!r} is set by the search itself (experiment = the study; config = base_config "
                              "or the `config` search key)")
    return {str(k): v for k, v in value.items()}


def load(path: str | Path) -> SearchConfig:
    path = Path(path)
    if not path.is_file():
        raise SearchError(f"search config {str(path)!r}: no such file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SearchError(f"search config {path}: not YAML: {err}") from err
    if not isinstance(raw, dict):
        raise SearchError(f"search config {path}: expected a mapping with keys {list(KEYS)}")
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise SearchError(f"search config {path}: unknown keys {unknown}; valid keys: {list(KEYS)}")
    space = parse_space(raw.get("space"))
    fixed = _dotted(raw.get("fixed") or {}, "fixed")
    for key in set(fixed) & set(space):
        raise SearchError(f"{key!r} is both fixed and searched; keep it in one place")
    base = raw.get("base_config")
    if (base is None) == (CONFIG_KEY not in space):
        raise SearchError("give exactly one of base_config (a run config path) and a `config` search key (a list of them)")
    heartbeat = {**HEARTBEAT, **(raw.get("heartbeat") or {})}
    if set(heartbeat) != set(HEARTBEAT) or not all(isinstance(v, int) and v > 0 for v in heartbeat.values()):
        raise SearchError(f"heartbeat: {raw.get('heartbeat')!r}; give positive integers for {sorted(HEARTBEAT)}")
    if heartbeat["grace_period"] <= heartbeat["interval"]:
        raise SearchError(f"heartbeat: grace_period {heartbeat['grace_period']} must exceed interval {heartbeat['interval']} "
                          "or live trials would be failed as stale")
    config = SearchConfig(
        study=str(raw.get("study") or path.stem), space=space, objectives=parse_objectives(raw.get("objectives")),
        base_config=base, fixed=fixed, constraints=parse_constraints(raw.get("constraints")),
        sampler=raw.get("sampler") or {"type": "tpe"}, pruner=raw.get("pruner") or {"type": "none"},
        n_trials=raw.get("n_trials"), timeout=raw.get("timeout"), storage=raw.get("storage"), heartbeat=heartbeat,
        table=bool(raw.get("table", False)), source=str(path),
    )
    config.check()
    return config
