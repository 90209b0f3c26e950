"""The search space: one parameter per dotted run-config key (any key `hpeft fit` takes), plus `config`,
which picks the base run config itself.

    model.init_args.lora_rank: {type: int, low: 2, high: 16, step: 2}      # or log: true
    model.init_args.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    data.init_args.scenario: [InF, RMa]                                    # a list is categorical
    model.init_args.group_methods: {type: categorical, choices: [[adapter+lora, lora], [prefix, lora]]}

Optuna stores categorical choices only as None, bool, int, float or str; list and dict choices are kept
as JSON text in the study and turned back into the value before they reach the run config."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from typing import Any

import optuna

from hpeft.search.errors import SearchError

CONFIG_KEY = "config"  # the searchable base run config (its choices are config paths)
TYPES = ("int", "float", "categorical")
_PRIMITIVE = (type(None), bool, int, float, str)


@dataclass(frozen=True)
class Param:
    key: str
    type: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple = ()

    # -- values as Optuna stores them and as the run config takes them ------------------------------
    def suggest(self, trial: optuna.Trial) -> Any:
        if self.type == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        if self.type == "float":
            return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)
        return decode(trial.suggest_categorical(self.key, [encode(c) for c in self.choices]))

    def grid_values(self) -> list:
        """Every value, for a grid: the choices, or a range walked by its step."""
        if self.type == "categorical":
            return [encode(c) for c in self.choices]
        step = self.step or (1 if self.type == "int" else None)  # an int range steps by 1, as its trials do
        if step is None:
            raise SearchError(f"space {self.key}: a grid needs every float range to have a step (or give a list of values)")
        count = int(math.floor((self.high - self.low) / step + 1e-9)) + 1
        values = [self.low + i * step for i in range(count)]
        return [int(v) for v in values] if self.type == "int" else [round(v, 12) for v in values]

    def probe_values(self) -> list:
        """The values the run config must accept before the study starts: both ends of a range, every choice."""
        if self.type == "categorical":
            return list(self.choices)
        ends = [self.low, self.high]
        return [int(v) for v in ends] if self.type == "int" else ends


def encode(value: Any) -> Any:
    return value if isinstance(value, _PRIMITIVE) else "json:" + json.dumps(value, sort_keys=True)


def decode(value: Any) -> Any:
    return json.loads(value[5:]) if isinstance(value, str) and value.startswith("json:") else value


def parse_param(key: str, spec: Any) -> Param:
    if isinstance(spec, list):
        spec = {"type": "categorical", "choices": spec}
    if not isinstance(spec, dict):
        raise SearchError(f"space {key}: {spec!r} is not a range or a list of values; use "
                          "{type: int|float, low, high[, step, log]}, {type: categorical, choices: [...]} or a list "
                          "(a single value belongs under `fixed:`)")
    kind = spec.get("type", "categorical" if "choices" in spec else None)
    if kind not in TYPES:
        raise SearchError(f"space {key}: type {kind!r}; valid types: {list(TYPES)}")
    allowed = {"type", "choices"} if kind == "categorical" else {"type", "low", "high", "step", "log"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise SearchError(f"space {key}: unknown fields {unknown}; a {kind} parameter takes {sorted(allowed)}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SearchError(f"space {key}: empty choices {choices!r}; give at least one value")
        if len({json.dumps(c, sort_keys=True) for c in choices}) != len(choices):
            raise SearchError(f"space {key}: repeated choices in {choices!r}")
        if key == CONFIG_KEY and not all(isinstance(c, str) for c in choices):
            raise SearchError(f"space config: choices must be run config paths, got {choices!r}")
        return Param(key, kind, choices=tuple(choices))
    return _range(key, kind, spec)


def _range(key: str, kind: str, spec: dict) -> Param:
    number = int if kind == "int" else (int, float)
    low, high, step, log = spec.get("low"), spec.get("high"), spec.get("step"), bool(spec.get("log", False))
    for name, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, number):
            raise SearchError(f"space {key}: {name}={value!r} must be {'an integer' if kind == 'int' else 'a number'}")
    if low > high:
        raise SearchError(f"space {key}: empty range, low={low} > high={high}")
    if step is not None and (isinstance(step, bool) or not isinstance(step, number) or step <= 0):
        raise SearchError(f"space {key}: step={step!r} must be a positive {'integer' if kind == 'int' else 'number'}")
    if log and low <= 0:
        raise SearchError(f"space {key}: log=true needs low > 0, got low={low}")
    if log and step is not None and not (kind == "int" and step == 1):  # Optuna: log ranges take no step (int: 1)
        raise SearchError(f"space {key}: log=true and step={step} cannot be combined (Optuna samples log ranges without a step)")
    return Param(key, kind, low=low, high=high, step=step, log=log)


def parse_space(spec: Any) -> dict[str, Param]:
    if not isinstance(spec, dict) or not spec:
        raise SearchError(f"space: {spec!r}; give a mapping of dotted run-config keys to ranges or lists")
    return {str(key): parse_param(str(key), value) for key, value in spec.items()}


def grid(space: dict[str, Param]) -> dict[str, list]:
    return {key: param.grid_values() for key, param in space.items()}


def grid_size(space: dict[str, Param]) -> int:
    return math.prod(len(values) for values in grid(space).values())


def grid_points(space: dict[str, Param]) -> list[dict]:
    """Every point of the grid, decoded (for tests and for printing what a grid study will run)."""
    keys, values = zip(*grid(space).items())
    return [dict(zip(keys, map(decode, combo))) for combo in itertools.product(*values)]


def cli_value(value: Any) -> str:
    """A value as the `hpeft` command line takes it after `--key=`: jsonargparse reads it as YAML."""
    return value if isinstance(value, str) else json.dumps(value)
