"""One trial = one ordinary `hpeft fit` run, in this process.

In-process (not a subprocess) because Optuna's pruning callback needs the live `optuna.Trial`: it reports
each validation value and raises TrialPruned inside the Trainer. The trial's callbacks reach the Trainer
through LightningCLI's `trainer_defaults={"callbacks": [...]}`, which adds them after the run's own
(EfficiencyMeter, RunRecorder, ...), so the run record is written first and read back here.

The run lands in runs/<study>/<run_id>/ like any other; the trial records its run directory, task, metric
and trainable count in its user attributes (what `hpeft report --storage URL --study NAME` reads), and the
run's summary.json and W&B config get a `search` block with the study, the trial number and its params."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shlex
import socket
import sys
from pathlib import Path

import lightning.pytorch as L
import optuna
import torch

from hpeft.search.config import SearchConfig
from hpeft.search.objectives import figure
from hpeft.search.run_config import trial_args
from hpeft.utils.atomic import atomic_write_json


class TrialRecorder(L.Callback):
    """Ties the run to its trial: run dir as soon as it is known, constraints on costs known at fit start
    (so a pruned trial has them too), the study and trial in the W&B config."""

    def __init__(self, trial: optuna.Trial, config: SearchConfig, params: dict):
        self.trial, self.config, self.params = trial, config, params
        self.constraints_set: set[str] = set()

    def setup(self, trainer, pl_module, stage: str) -> None:
        if trainer.is_global_zero:
            self.trial.set_user_attr("run_dir", str(Path(trainer.default_root_dir).resolve()))

    def on_fit_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        from hpeft.train.efficiency import EfficiencyMeter

        meter = next((cb for cb in trainer.callbacks if isinstance(cb, EfficiencyMeter)), None)
        early = {"params": pl_module.run_facts()["params"], "flops": meter.figures.get("flops", {}) if meter else {}}
        self.set_constraints(early, only_known_at_start=True)
        for logger in trainer.loggers:
            if hasattr(logger, "experiment") and hasattr(logger.experiment, "config"):
                logger.experiment.config.update({"search": search_block(self.trial, self.config, self.params)}, allow_val_change=True)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # A pruned trial is still a run: record what it reached (its validation figures) before Lightning tears down.
        if isinstance(exception, optuna.TrialPruned) and trainer.is_global_zero:
            from hpeft.train.run_record import RunRecorder

            recorder = next((cb for cb in trainer.callbacks if isinstance(cb, RunRecorder)), None)
            if recorder is not None:
                recorder.on_fit_end(trainer, pl_module)
                record_search(recorder.summary_path, {**search_block(self.trial, self.config, self.params), "pruned": True})

    def set_constraints(self, summary: dict, only_known_at_start: bool = False) -> None:
        """Optuna keeps the first value set for a constraint, so each is set once, as soon as it is known."""
        new = {}
        for constraint in self.config.constraints:
            if constraint.text in self.constraints_set or (only_known_at_start and not constraint.known_at_start):
                continue
            new[constraint.text] = constraint.value(summary)
            self.trial.set_constraint(constraint.text, new[constraint.text])
            self.constraints_set.add(constraint.text)
        if new:
            # Also as a list in user_attrs["constraint"] (<= 0 is feasible), the form Optuna's examples read.
            known = {**self.trial.user_attrs.get("constraint_by_name", {}), **new}
            self.trial.set_user_attr("constraint_by_name", known)
            self.trial.set_user_attr("constraint", [known[c.text] for c in self.config.constraints if c.text in known])


def search_block(trial: optuna.Trial, config: SearchConfig, params: dict) -> dict:
    return {"study": config.study, "trial": trial.number, "params": params, "sampler": config.sampler_type}


def record_search(summary_path: Path, block: dict) -> dict:
    """Add the `search` block to a run's summary.json (a key the run record contract allows to be added)."""
    summary = json.loads(summary_path.read_text())
    summary["search"] = block
    atomic_write_json(summary_path, summary)
    return summary


@contextlib.contextmanager
def isolated_process_state():
    """Trials share one process: give each the environment, torch flags and W&B state it would have alone."""
    environ = dict(os.environ)
    deterministic = torch.are_deterministic_algorithms_enabled()
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when args and sys.argv both hold arguments
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        yield
    finally:
        sys.argv = argv
        import wandb

        if wandb.run is not None:  # Lightning's WandbLogger leaves its run open; the next trial needs its own
            wandb.finish()
        os.environ.clear()
        os.environ.update(environ)
        torch.use_deterministic_algorithms(deterministic)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def run_trial(trial: optuna.Trial, config: SearchConfig) -> float | list[float]:
    from optuna_integration import PyTorchLightningPruningCallback

    from hpeft.lightning_cli import HpeftCLI

    params = {key: param.suggest(trial) for key, param in config.space.items()}
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    recorder = TrialRecorder(trial, config, params)
    callbacks: list[L.Callback] = [recorder]
    monitor = config.pruner_monitor
    pruning = PyTorchLightningPruningCallback(trial, monitor=monitor) if monitor else None
    if pruning:
        callbacks.append(pruning)
    args = ["fit", *trial_args(config, params)]
    print(f"hpeft search: trial {trial.number} of study {config.study}: hpeft {shlex.join(args)}", flush=True)
    with isolated_process_state():
        try:
            cli = HpeftCLI(args=args, trainer_defaults={"callbacks": callbacks})
        except SystemExit as exit_:  # HpeftCLI's _fail on a config error found only when building the run
            raise RuntimeError(f"trial {trial.number}: hpeft fit exited with status {exit_.code}") from None
    if pruning:
        pruning.check_pruned()  # only matters under DDP, where ranks report through the storage
    run_dir = Path(cli.run_dir).resolve()
    summary = record_search(run_dir / "summary.json", search_block(trial, config, params))
    trial.set_user_attr("run_dir", str(run_dir))
    trial.set_user_attr("task", summary.get("task", ""))
    trial.set_user_attr("metric", config.objectives[0].metric)
    trial.set_user_attr("trainable", int(summary["params"]["trainable"]))
    recorder.set_constraints(summary)
    values = [figure(summary, objective.metric) for objective in config.objectives]
    return values[0] if len(values) == 1 else values
