"""Mutations of a run config that every one of must be refused: the config fuzzer's generator.

Each mutation changes one thing in a valid config, in one of the ways users get configs wrong: an unknown or
misspelt key, a value of the wrong type, a negative size, a NaN or infinite number, an empty list, an
unknown class_path or choice, a target pattern that matches nothing, a local file that is not there, a
required key left out. Which keys are free text (any string is valid) or may legitimately be negative or empty
is stated below with the reason; everything else is expected to be refused. Numbers only mutate into values no
option accepts, so a mutation that is accepted is a missing check in hpeft, not a judgement call.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import math
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

DELETE = object()
MISSING_PATH = "/nonexistent/hpeft-fuzz/missing"

# Any string is a valid value of these: names, output folders, hub ids (which cannot be checked offline).
FREE_TEXT = {"experiment", "wandb_project", "name", "runs_dir", "save_base_to", "cache_dir", "hf_cache_dir",
             "dataset", "dataset_config", "text_column", "model", "default_root_dir", "ckpt_path", "dirpath",
             "filename", "monitor"}
# Local files and folders a run reads: a missing one must be named as not found.
PATH_KEYS = {"base_checkpoint", "pretrained", "tokenizer", "files", "train_files", "val_files", "test_files",
             "members"}
# Values where a negative number means something: Lightning's "no limit" (-1) for epochs and steps.
NEGATIVE_OK = {"max_epochs", "max_steps", "min_steps"}
# Lists that may be empty: no stages frozen, no callbacks, no methods (a stage or a hybrid may train the base alone).
EMPTY_OK = {"freeze_methods", "callbacks", "methods"}
# Dicts whose keys are not options: a transformers config (HFCausalLMConfig.config) takes any attribute.
FREE_DICTS = {"config", "data_files"}
# Fractions: probabilities and ratios are in [0, 1].
FRACTIONS = ("dropout", "ratio", "fraction")


@dataclass(frozen=True)
class Mutation:
    kind: str
    path: tuple  # keys and list indices into the config dict
    value: Any  # the new value, or DELETE
    names: tuple[str, ...]  # the error must contain one of these (the bad key or the bad value)
    rename: str | None = None  # for misspelt keys: the new key name
    via_cli: bool = False  # given as a --key value override instead of in the file
    expect: tuple[str, ...] = field(default=())  # further texts the error must contain

    @property
    def id(self) -> str:
        where = ".".join(str(p) for p in self.path) or "<top>"
        shown = "<deleted>" if self.value is DELETE else repr(self.value)[:30]
        return f"{self.kind}{'-cli' if self.via_cli else ''}:{where}={shown}"

    def apply(self, config: dict) -> tuple[dict, list[str]]:
        """The mutated config and the command-line overrides that go with it."""
        cfg = copy.deepcopy(config)
        if self.via_cli:
            *parents, last = self.path
            key = ".".join(str(p) for p in [*parents, self.rename or last])
            value = self.value
            if self.rename is not None:  # a misspelt key on the command line carries the file's value
                value = cfg
                for p in self.path:
                    value = value[p]
            return cfg, [f"--{key}", yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...")]
        *parents, last = self.path
        node = cfg
        for p in parents:
            node = node[p]
        if self.rename is not None:
            node[self.rename] = node.pop(last)
        elif self.value is DELETE:
            del node[last]
        else:
            node[last] = self.value
        return cfg, []


def _key(path: tuple) -> str | None:
    return next((p for p in reversed(path) if isinstance(p, str) and p != "init_args"), None)


def _value_text(value: Any) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return str(value)


def _leaf(path: tuple, value: Any, hint: Any = None) -> list[Mutation]:
    """The mutations of one value; `hint` is its declared type where the class that takes it is known."""
    key = _key(path)
    takes_float = hint is float or float in typing.get_args(hint)
    def m(kind, new, *extra_names, expect=()):
        return Mutation(kind, path, new, (key, _value_text(new), *extra_names), expect=expect)

    out: list[Mutation] = []
    if key == "class_path":
        other_role = "hpeft.LoRAOnly" if path[0] == "data" else "hpeft.ChannelDataModule"
        return [m("bad_class_path", "hpeft.NoSuchThing"), m("bad_class_path", "lora only"),
                m("bad_class_path", other_role)]  # a class that exists, in the wrong place
    if not isinstance(value, list | str):
        out.append(m("wrong_type", {"bad": 1}))  # a mapping where a number or flag belongs
    if isinstance(value, bool):
        return [*out, m("wrong_type", "maybe"), m("wrong_type", [value])]
    if isinstance(value, int):
        out += [m("wrong_type", "many"), m("wrong_type", [value])]
        if not takes_float:  # an int where the option is a float (LoRA's alpha: 32) may be given as 32.5
            out.append(m("wrong_type", value + 0.5))
        if value > 0 and key not in NEGATIVE_OK:
            out.append(m("negative", -value - 3))
        return out
    if isinstance(value, float):
        out += [m("wrong_type", "fast"), m("nan", math.nan), m("nan", math.inf), m("wrong_type", [value])]
        if value > 0:
            out.append(m("negative", -value - 1.0))
        if any(f in key for f in FRACTIONS):
            out.append(m("out_of_range", 1.5))
        return out
    if isinstance(value, str):
        out.append(m("wrong_type", {"bad": 1}))
        if key in PATH_KEYS:
            out.append(m("missing_file", MISSING_PATH, expect=("not found",)))
        elif key not in FREE_TEXT:
            out.append(m("bad_choice", "bogus-choice"))
        return out
    if isinstance(value, list):
        if key not in EMPTY_OK:
            out.append(m("empty_list", []))
        out.append(m("wrong_type", 7))
        if key in PATH_KEYS:
            out.append(m("missing_file", [MISSING_PATH, *value[1:]], MISSING_PATH, expect=("not found",)))
        for i, item in enumerate(value):  # one item of the wrong type, the others kept
            if isinstance(item, str | int | float) and not isinstance(item, bool):
                wrong = {"bad": 1} if isinstance(item, str) else "many"
                out.append(Mutation("wrong_type", (*path, i), wrong, (key, _value_text(wrong))))
        if key.endswith("targets") or key == "train_base" and value and all(isinstance(v, str) for v in value):
            out.append(m("bad_target", ["no_such_module"], "no_such_module"))
        return out
    return out


def _class(class_path: str):
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _required_args(class_path: str) -> list[str]:
    """The __init__ parameters of a class_path without a default (leaving one out must be refused)."""
    return [p.name for p in inspect.signature(_class(class_path)).parameters.values()
            if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _hints(class_path: str) -> dict:
    """The declared types of a class's __init__ arguments (empty where they cannot be resolved)."""
    try:
        return typing.get_type_hints(_class(class_path).__init__)
    except Exception:  # noqa: BLE001 - a forward reference that does not resolve: no hints, the generic mutations
        return {}


def mutations(config: dict) -> list[Mutation]:
    """Every mutation of `config` (a run config as read from YAML), file and command-line forms."""
    out: list[Mutation] = []

    def walk(node: Any, path: tuple, types: Any = None) -> None:
        """types: for a dict, its keys' declared types (from the class_path above it); for a value, its own."""
        if isinstance(node, dict):
            if _key(path) in FREE_DICTS:
                return
            out.append(Mutation("unknown_key", (*path, "bogus_option"), 1, ("bogus_option",)))
            for k in node:
                if k not in ("class_path", "init_args"):
                    out.append(Mutation("misspelt_key", (*path, k), None, (f"{k}_x", k), rename=f"{k}_x"))
            if "class_path" in node:
                args = node.get("init_args") or {}
                for arg in _required_args(node["class_path"]):
                    if arg in args:
                        out.append(Mutation("missing_required", (*path, "init_args", arg), DELETE, (arg,)))
            inner = _hints(node["class_path"]) if isinstance(node.get("class_path"), str) else None
            own = types if isinstance(types, dict) else {}
            for k, v in node.items():
                walk(v, (*path, k), inner if k == "init_args" else own.get(k))
        elif isinstance(node, list) and node and all(isinstance(v, dict) for v in node):
            out.extend(_leaf(path, node))
            for i, v in enumerate(node):
                walk(v, (*path, i))
        elif node is not None:
            out.extend(_leaf(path, node, types))

    walk(config, ())
    for top in ("model", "data"):
        if top in config:
            out.append(Mutation("missing_required", (top,), DELETE, (top,)))
    # The command-line form of every change that a --key override can reach (no list items, no deletions; a
    # misspelt key is renamed in place).
    out += [Mutation(m.kind, m.path, m.value, m.names, rename=m.rename, via_cli=True, expect=m.expect)
            for m in list(out) if m.value is not DELETE and not any(isinstance(p, int) for p in m.path)]
    return out
