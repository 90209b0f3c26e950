"""A trial's `hpeft fit` arguments, and the checks that hold them against the run configs they name.

Every search key must be a key of the resolved run config (what `hpeft fit --print_config` shows) and every
value the space can give must pass the same parser `hpeft fit` uses, so a typo or a wrong type stops the
search before any trial starts, with the key or value named."""

from __future__ import annotations

import contextlib
import difflib
import io
import sys
from pathlib import Path
from typing import Any

from hpeft.search.config import SearchConfig
from hpeft.search.errors import SearchError
from hpeft.search.objectives import check_figure, metric_names
from hpeft.search.space import CONFIG_KEY, cli_value


def trial_args(config: SearchConfig, params: dict[str, Any], study: str | None = None) -> list[str]:
    """`hpeft fit` arguments of one trial (without the `fit`): base config, fixed keys, the trial's values, the study."""
    base = params.get(CONFIG_KEY, config.base_config)
    args = ["--config", str(base)]
    args += [f"--{k}={cli_value(v)}" for k, v in config.fixed.items()]
    args += [f"--{k}={cli_value(v)}" for k, v in params.items() if k != CONFIG_KEY]
    return args + [f"--experiment={study or config.study}"]


class _ParseOnly:
    """LightningCLI's parser for `hpeft fit`, without instantiating anything (no model, data or checkpoint)."""

    def __init__(self):
        from hpeft.lightning_cli import HpeftCLI

        class ParseOnlyCLI(HpeftCLI):
            def instantiate_classes(self) -> None:
                pass

            def _set_seed(self) -> None:  # parsing must not touch the global RNG
                pass

        self._cls = ParseOnlyCLI
        self._parser = None

    def parse(self, args: list[str]) -> dict:
        """The resolved config as a dict, or a SearchError with jsonargparse's message."""
        err = io.StringIO()
        argv, sys.argv = sys.argv, sys.argv[:1]
        try:
            with contextlib.redirect_stderr(err):
                if self._parser is None:
                    cli = self._cls(args=args, run=False, parser_kwargs={"exit_on_error": False})
                    self._parser = cli.parser
                    return cli.config.as_dict()
                return self._parser.parse_args(args).as_dict()
        except (SystemExit, Exception) as error:  # jsonargparse's ArgumentError, HpeftCLI's exit
            text = (str(error) if not isinstance(error, SystemExit) else "") or err.getvalue()
            raise SearchError(_short(text)) from None
        finally:
            sys.argv = argv


def _short(message: str) -> str:
    """jsonargparse's message without the usage dump and the long list of class paths."""
    lines = [line for line in message.strip().splitlines() if line.strip() and not line.lstrip().startswith(("usage:", "[", "tip:"))]
    return "\n".join(line for line in lines if not line.startswith("valid class paths:"))[:1500]


def flat_keys(tree: Any, prefix: str = "") -> set[str]:
    """Every dotted key of a resolved config, inner nodes included (model, model.init_args, ...)."""
    keys = set()
    if isinstance(tree, dict):
        for key, value in tree.items():
            dotted = f"{prefix}{key}"
            keys.add(dotted)
            keys |= flat_keys(value, dotted + ".")
    return keys


def check_against_run_configs(config: SearchConfig) -> list[dict]:
    """Parse every base config with the fixed keys and every probe value of the space; returns the resolved
    base configs. Raises SearchError naming the key, value or path that does not fit."""
    parser = _ParseOnly()
    resolved = []
    for base in config.base_configs():
        if not Path(base).is_file():
            where = "space config" if CONFIG_KEY in config.space else "base_config"
            raise SearchError(f"{where}: run config {base!r} does not exist (paths are relative to {Path.cwd()})")
        try:
            tree = parser.parse(trial_args(config, {CONFIG_KEY: base}))
        except SearchError as err:
            raise SearchError(f"run config {base} with fixed {config.fixed}: {err}") from None
        keys = flat_keys(tree)
        for key in (k for k in config.space if k != CONFIG_KEY):
            if key not in keys:
                near = difflib.get_close_matches(key, sorted(keys), n=3, cutoff=0.6)
                parent = key.rpartition(".")[0]
                siblings = sorted(k for k in keys if k.rpartition(".")[0] == parent)
                raise SearchError(f"search key {key!r} is not in run config {base}; "
                                  f"did you mean {near}? keys under {parent or 'the top'}: {siblings[:40]}")
            for value in config.space[key].probe_values():
                try:
                    parser.parse(trial_args(config, {CONFIG_KEY: base, key: value}))
                except SearchError as err:
                    raise SearchError(f"search key {key} = {value!r} is refused by run config {base}: {err}") from None
        _check_figures(config, tree, base)
        _check_one_process(tree, base)
        resolved.append(tree)
    return resolved


def _check_one_process(tree: dict, base: str) -> None:
    """A trial runs inside its worker's process, so it cannot launch DDP processes of its own (they would
    re-run the worker's command line): one device per trial, one worker per device."""
    trainer = tree.get("trainer") or {}
    devices, strategy, nodes = trainer.get("devices"), str(trainer.get("strategy") or ""), trainer.get("num_nodes") or 1
    many = (isinstance(devices, int) and devices > 1) or (isinstance(devices, str) and devices.isdigit() and int(devices) > 1) \
        or (isinstance(devices, list) and len(devices) > 1)
    if many or "ddp" in strategy or nodes > 1:
        raise SearchError(f"run config {base}: trainer devices={devices!r}, strategy={strategy or None!r}, num_nodes={nodes}; "
                          "a search trial runs in its worker's process on one device: set trainer.devices: 1 (or auto "
                          "with one visible GPU) and start one worker per GPU")


def _check_figures(config: SearchConfig, tree: dict, base: str) -> None:
    from hpeft.tasks.registry import TASKS

    task_name = (tree.get("model") or {}).get("init_args", {}).get("task", "channel")
    task = TASKS.get(task_name)
    valid = metric_names(task.metric, task.name) if task else []
    for objective in config.objectives:
        check_figure(objective.metric, valid, "objective")
    for constraint in config.constraints:
        check_figure(constraint.figure, valid, f"constraint {constraint.text!r}:")
    needs_test = [f for f in [o.metric for o in config.objectives] + [c.figure for c in config.constraints] if f.startswith("test/")]
    if needs_test and not tree.get("test_after_fit"):
        raise SearchError(f"{needs_test} are test metrics but run config {base} has test_after_fit: false; "
                          "add `test_after_fit: true` under fixed:")
    monitor = config.pruner_monitor
    if monitor and monitor not in valid:
        raise SearchError(f"pruner monitor {monitor!r} is not logged by task {task_name}; valid: {[v for v in valid if v.startswith('val/')]}")


def check_base_checkpoints(config: SearchConfig, resolved: list[dict]) -> None:
    """A base checkpoint a trial would load must exist now, not fail the first trial an hour from now."""
    for base, tree in zip(config.base_configs(), resolved):
        path = ((tree.get("model") or {}).get("init_args") or {}).get("base_checkpoint")
        if path and not Path(path).is_file():
            raise SearchError(f"run config {base} loads base_checkpoint {path!r}, which does not exist (relative to {Path.cwd()}); "
                              "pretrain it first (configs/quickstart/pretrain.yaml or configs/channel/pretrain.yaml, "
                              "`make quickstart` makes runs/bases/quickstart.safetensors)")
