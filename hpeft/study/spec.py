"""A study file (studies/NAME.yaml): the arms a research question compares, the scales it runs at, and the
hypotheses the numbers decide. Loading checks the file's own shape (keys, arm names, hypothesis kinds);
plan.py checks it against the run configs it names.

    study: seed000
    title: Prompt + LoRA hybrids for channel estimation
    metric: test/nmse_db                 # read from every run's summary.json; lower is better
    higher_is_better: false
    factors: {data.init_args.scenario: [InF, RMa]}   # crossed with every arm and seed
    base: {config: configs/quickstart/pretrain.yaml, into: model.init_args.base_checkpoint}
    arms:
      prompt100: {config: configs/channel/prompt_inf.yaml, set: {model.init_args.prompt_length: 100}}
      control_prompt: {config: configs/channel/prompt_inf.yaml,
                       match: {arm: hybrid_s, key: model.init_args.prompt_length}}  # same trainable count
      base: {config: configs/quickstart/base_inf.yaml, command: test}             # measured, not trained
    grid:                                 # every cell an arm; a cell with one non-zero axis runs that axis' config
      name: synergy
      config: configs/channel/hybrid_m_inf.yaml
      axes:
        prompt_length: {key: model.init_args.prompt_length, values: [0, 50, 100], config: configs/channel/prompt_inf.yaml}
        lora_rank: {key: model.init_args.lora_rank, values: [0, 5, 10], config: configs/channel/lora_inf.yaml}
    scales:
      tiny: {seeds: 2, set: {trainer.max_steps: 6}, base_set: {...}, factors: {...}, grid: {prompt_length: [0, 4]},
             arms: {prompt100: {set: {...}}}, only: [arm, ...]}
      cpu: {...}
      cluster: {}
    hypotheses:
      - {id: H1, kind: synergy, statement: "...", hybrids: [hybrid_m]}

Hypothesis kinds (hypotheses.py): better, synergy, frontier, dominates, ratio, budget."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SCALES = ("tiny", "cpu", "cluster")
KEYS = ("study", "title", "question", "metric", "higher_is_better", "factors", "base", "arms", "grid", "scales",
        "scales_from", "hypotheses", "ci")
# What `scales_from: OTHER` takes from another study's scales (its arms, grid and notes are its own).
INHERITED = ("seeds", "set", "base_set", "heartbeat", "ci")
ARM_KEYS = ("config", "set", "match", "command", "label", "members")
SCALE_KEYS = ("seeds", "set", "base_set", "factors", "grid", "arms", "only", "drop", "heartbeat", "ci", "note", "base")
GRID_KEYS = ("name", "config", "axes", "kind")
GRID_KINDS = ("synergy", "plain")
AXIS_KEYS = ("key", "values", "config")
BASE_KEYS = ("config", "into", "set")
COMMANDS = ("fit", "test")
STUDY_DIR = Path("studies")


class StudyError(ValueError):
    """Bad study input: the message names the value and what would be valid. `hpeft study` exits 2 on it."""


@dataclass
class Arm:
    name: str
    config: str
    set: dict = field(default_factory=dict)
    match: dict | None = None
    command: str = "fit"
    label: str = ""
    members: list[str] = field(default_factory=list)  # an Ensemble's member arms (same level and seed)
    grid_cell: dict | None = None  # {axis: value} for a synergy-grid cell


@dataclass
class Study:
    name: str
    title: str
    metric: str
    higher_is_better: bool
    scale: str
    seeds: int
    arms: dict[str, Arm]
    factors: dict[str, list]
    set: dict
    base: dict | None
    hypotheses: list[dict]
    heartbeat: dict | None
    ci: str
    question: str = ""
    note: str = ""
    source: str = ""
    grid: dict | None = None  # {name, axes: {axis: key}} of the scale's grid, for the heatmap

    @property
    def search_name(self) -> str:
        return f"{self.name}-{self.scale}"


def find(name_or_path: str) -> Path:
    """A study by name (studies/NAME.yaml) or by path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise StudyError(f"study file {name_or_path!r} does not exist")
        return path
    candidate = STUDY_DIR / f"{name_or_path}.yaml"
    if not candidate.is_file():
        known = sorted(p.stem for p in STUDY_DIR.glob("*.yaml"))
        raise StudyError(f"unknown study {name_or_path!r}; valid: {known} (files in {STUDY_DIR.resolve()}) or a path to a study YAML")
    return candidate


def _mapping(value: Any, what: str, keys: tuple[str, ...] | None = None, required: tuple[str, ...] = ()) -> dict:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise StudyError(f"{what}: {value!r} must be a mapping" + (f" with keys {list(keys)}" if keys else ""))
    if keys is not None:
        unknown = sorted(set(value) - set(keys))
        if unknown:
            raise StudyError(f"{what}: unknown keys {unknown}; valid keys: {list(keys)}")
    missing = [k for k in required if k not in value]
    if missing:
        raise StudyError(f"{what}: missing key(s) {missing}")
    return value


def _known(names, valid, what: str) -> None:
    """Every name in `names` is one of `valid`, or a StudyError names the others and the valid ones."""
    unknown = sorted(set(names) - set(valid))
    if unknown:
        raise StudyError(f"{what} names unknown {unknown}; valid: {sorted(valid)}")


def _name(value: str, what: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value):
        raise StudyError(f"{what} {value!r} must be a name of letters, digits, '_', '.', '-'")
    return value


COMPOSITE_KEYS = ("study", "title", "question", "parts")


def parts_of(name_or_path: str) -> dict | None:
    """A study of studies (`parts: [study, ...]`): {study, title, question, parts}; None for an ordinary study."""
    path = find(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise StudyError(f"study {path}: not YAML: {err}") from err
    if not isinstance(raw, dict) or "parts" not in raw:
        return None
    raw = _mapping(raw, f"study {path}", COMPOSITE_KEYS, required=("study", "parts"))
    parts = raw["parts"]
    if not isinstance(parts, list) or not parts or not all(isinstance(p, str) for p in parts):
        raise StudyError(f"study {path}: parts {parts!r} must be a non-empty list of study names")
    for part in parts:
        if parts_of(part) is not None:
            raise StudyError(f"study {path}: part {part!r} is itself a study of studies; list its parts instead")
    return {"study": _name(raw["study"], f"study {path}: study"), "title": str(raw.get("title") or raw["study"]),
            "question": str(raw.get("question") or ""), "parts": parts}


def load(name_or_path: str, scale: str, seeds: int | None = None) -> Study:
    """The study at one scale: its arms (grid cells included, per-scale overrides applied) and hypotheses."""
    if scale not in SCALES:
        raise StudyError(f"scale {scale!r}; valid: {list(SCALES)}")
    if seeds is not None and (isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1):
        raise StudyError(f"--seeds {seeds!r} must be a positive integer")
    path = find(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise StudyError(f"study {path}: not YAML: {err}") from err
    raw = _mapping(raw, f"study {path}", KEYS, required=("study", "metric", "arms", "hypotheses"))
    name = _name(raw["study"], f"study {path}: study")
    scales = _mapping(raw.get("scales"), f"study {path}: scales", SCALES)
    if raw.get("scales_from"):
        scales = _inherit(raw["scales_from"], scales, name)
    if scale not in scales:
        raise StudyError(f"study {name} has no scale {scale!r}; it has {sorted(scales)}")
    sc = _mapping(scales[scale], f"study {name}: scales.{scale}", SCALE_KEYS)
    study_seeds = seeds if seeds is not None else sc.get("seeds", 3)
    if isinstance(study_seeds, bool) or not isinstance(study_seeds, int) or study_seeds < 1:
        raise StudyError(f"study {name}: scales.{scale}.seeds {study_seeds!r} must be a positive integer")

    arms = _arms(name, raw.get("arms"), _mapping(sc.get("arms"), f"study {name}: scales.{scale}.arms"))
    grid = None
    if raw.get("grid") is not None:
        grid_arms, grid = _grid(name, raw["grid"], _mapping(sc.get("grid"), f"study {name}: scales.{scale}.grid"))
        named = {(a.config, _frozen(a.set)): a for a in arms.values()}
        for arm in grid_arms:
            same = named.get((arm.config, _frozen(arm.set)))
            if same is not None:  # a named arm with the cell's settings is that cell: run once
                same.grid_cell = arm.grid_cell
            else:
                arms[arm.name] = arm
    for key in ("only", "drop"):
        names = sc.get(key)
        if names is None:
            continue
        if not isinstance(names, list):
            raise StudyError(f"study {name}: scales.{scale}.{key} {names!r} must be a list of arm names")
        _known(names, arms, f"study {name}: scales.{scale}.{key}")
        arms = {k: v for k, v in arms.items() if (k in names) == (key == "only")}
    factors = {**_mapping(raw.get("factors"), f"study {name}: factors"), **_mapping(sc.get("factors"), f"study {name}: scales.{scale}.factors")}
    for key, values in factors.items():
        if not isinstance(values, list) or not values:
            raise StudyError(f"study {name}: factor {key!r} = {values!r} must be a non-empty list of values")
    base = raw.get("base") if sc.get("base", True) is not False else None  # `base: false`: the arms' own base
    if base is not None:
        base = dict(_mapping(base, f"study {name}: base", BASE_KEYS, required=("config",)))
        base.setdefault("into", "model.init_args.base_checkpoint")
        base["set"] = {**(base.get("set") or {}), **_mapping(sc.get("base_set"), f"study {name}: scales.{scale}.base_set")}
    ci = sc.get("ci", raw.get("ci", "t"))
    from hpeft.study.stats import CI_METHODS

    if ci not in CI_METHODS:
        raise StudyError(f"study {name}: ci {ci!r}; valid: {list(CI_METHODS)}")
    hypotheses = raw.get("hypotheses")
    if not isinstance(hypotheses, list) or not hypotheses:
        raise StudyError(f"study {name}: hypotheses must be a non-empty list")
    from hpeft.study.hypotheses import check_hypothesis

    for i, h in enumerate(hypotheses):
        check_hypothesis(h, arms, f"study {name}: hypotheses[{i}]")
    return Study(
        name=name, title=str(raw.get("title") or name), question=str(raw.get("question") or ""), metric=str(raw["metric"]),
        higher_is_better=bool(raw.get("higher_is_better", False)), scale=scale, seeds=study_seeds, arms=arms,
        factors=factors, set=_mapping(sc.get("set"), f"study {name}: scales.{scale}.set"), base=base,
        hypotheses=hypotheses, heartbeat=sc.get("heartbeat"), ci=ci, note=str(sc.get("note") or ""), source=str(path),
        grid=grid,
    )


def _inherit(other: str, own: dict, study: str) -> dict:
    """`scales_from: OTHER`: per scale, OTHER's settings (INHERITED keys), with this study's on top
    (`set` and `base_set` merged key by key, the rest replaced)."""
    if other == study:
        raise StudyError(f"study {study}: scales_from names the study itself")
    raw = yaml.safe_load(find(other).read_text()) or {}
    theirs = _mapping(raw.get("scales"), f"study {other}: scales", SCALES)
    out = {}
    for scale in set(theirs) | set(own):
        base = {k: v for k, v in (theirs.get(scale) or {}).items() if k in INHERITED}
        mine = _mapping(own.get(scale), f"study {study}: scales.{scale}", SCALE_KEYS)
        merged = {**base, **mine}
        for key in ("set", "base_set"):
            merged[key] = {**(base.get(key) or {}), **(mine.get(key) or {})}
        out[scale] = merged
    return out


def _arms(study: str, raw: Any, overrides: dict) -> dict[str, Arm]:
    raw = _mapping(raw, f"study {study}: arms")
    if not raw:
        raise StudyError(f"study {study}: arms is empty; give at least one arm")
    _known(overrides, raw, f"study {study}: the scale's arm overrides")
    arms = {}
    for name, spec in raw.items():
        _name(name, f"study {study}: arm")
        spec = _mapping(spec, f"study {study}: arm {name}", ARM_KEYS, required=("config",))
        extra = _mapping(overrides.get(name), f"study {study}: scale override of arm {name}", ("config", "set", "match"))
        command = spec.get("command", "fit")
        if command not in COMMANDS:
            raise StudyError(f"study {study}: arm {name}: command {command!r}; valid: {list(COMMANDS)}")
        match = extra.get("match", spec.get("match"))
        if match is not None:
            match = _mapping(match, f"study {study}: arm {name}: match", ("arm", "key"), required=("arm", "key"))
            if match["arm"] not in raw:
                raise StudyError(f"study {study}: arm {name} matches unknown arm {match['arm']!r}; arms: {sorted(raw)}")
        members = spec.get("members") or []
        if members and (command != "test" or not isinstance(members, list) or len(members) < 2
                        or any(m not in raw or m == name for m in members)):
            raise StudyError(f"study {study}: arm {name}: members {members!r} must list two or more other arms, "
                             f"on an arm with command: test (an Ensemble); arms: {sorted(raw)}")
        arms[name] = Arm(name=name, config=str(extra.get("config", spec["config"])),
                         set={**(spec.get("set") or {}), **(extra.get("set") or {})},
                         match=match, command=command, label=str(spec.get("label") or name), members=list(members))
    return arms


def _frozen(settings: dict) -> str:
    import json

    return json.dumps(settings, sort_keys=True, default=str)


def _grid(study: str, raw: Any, scale_values: dict) -> tuple[list[Arm], dict]:
    """The grid's cells as arms. A `synergy` grid (the default) crosses method sizes: all axes non-zero -> the
    grid's config with every axis set; one non-zero -> that axis' own config (the method alone); all zero ->
    no arm (the base, nothing to train). A `plain` grid is every cell of the grid's config (hyperparameters)."""
    raw = _mapping(raw, f"study {study}: grid", GRID_KEYS, required=("name", "config", "axes"))
    gname = _name(raw["name"], f"study {study}: grid name")
    kind = raw.get("kind", "synergy")
    if kind not in GRID_KINDS:
        raise StudyError(f"study {study}: grid kind {kind!r}; valid: {list(GRID_KINDS)}")
    axes = _mapping(raw["axes"], f"study {study}: grid.axes")
    if len(axes) < (2 if kind == "synergy" else 1):
        raise StudyError(f"study {study}: a {kind} grid needs at least {2 if kind == 'synergy' else 1} axes, got {list(axes)}")
    _known(scale_values, axes, f"study {study}: the scale's grid axes")
    specs = {}
    for axis, spec in axes.items():
        spec = _mapping(spec, f"study {study}: grid axis {axis}", AXIS_KEYS, required=AXIS_KEYS if kind == "synergy" else ("key", "values"))
        values = scale_values.get(axis, spec["values"])
        ok = all(isinstance(v, int) and v >= 0 for v in values) if kind == "synergy" else \
            all(isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in values)
        if not isinstance(values, list) or not values or not ok:
            what = "integers >= 0" if kind == "synergy" else "numbers or strings"
            raise StudyError(f"study {study}: grid axis {axis} values {values!r} must be a non-empty list of {what}")
        specs[axis] = {**spec, "values": values}
    import itertools

    cells = []
    for combo in itertools.product(*(s["values"] for s in specs.values())):
        cell = dict(zip(specs, combo))
        nonzero = list(cell) if kind == "plain" else [a for a, v in cell.items() if v]
        if not nonzero:
            continue
        config = raw["config"] if len(nonzero) == len(specs) else specs[nonzero[0]]["config"] if len(nonzero) == 1 else None
        if config is None:
            continue  # with three or more axes, a cell with some axes at zero is no method combination of the grid
        name = gname + "_" + "_".join(f"{a}{v}" for a, v in cell.items())
        cells.append(Arm(name=name, config=str(config), set={specs[a]["key"]: cell[a] for a in nonzero}, grid_cell=cell,
                         label=", ".join(f"{a}={v}" for a, v in cell.items())))
    return cells, {"name": gname, "kind": kind, "axes": {a: s["key"] for a, s in specs.items()}}
