"""RunRecorder: writes the run record (runs/<experiment>/<run_id>/) that the report, the search and
the tests read. Contract in DESIGN.md: config.yaml, summary.json, adapter.safetensors + adapter.json;
`hpeft predict` adds predictions.safetensors.

summary.json is rewritten (atomically) after fit and after test; metrics accumulate, so a fit
followed by a test in the same run leaves both val/* and test/* figures."""

from __future__ import annotations

import json
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import lightning.pytorch as L
import torch
from safetensors.torch import save_file

from hpeft import peft
from hpeft.train.efficiency import EfficiencyMeter
from hpeft.utils.atomic import atomic_write, atomic_write_json, atomic_write_text


def versions() -> dict:
    out = {}
    for pkg in ("hpeft", "torch", "lightning", "sionna-no-rt", "torchmetrics", "wandb"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"{sha}{'-dirty' if sha and dirty else ''}"


def _plain(value):
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value


class RunRecorder(L.Callback):
    def __init__(self, run_dir: str | Path, experiment: str, run_id: str, config_yaml: str, seed: int | None = None,
                 extra: dict | None = None):
        self.run_dir = Path(run_dir)
        self.experiment, self.run_id = experiment, run_id
        self.config_yaml = config_yaml
        self.seed = seed
        self.extra = extra or {}

    @property
    def summary_path(self) -> Path:
        return self.run_dir / "summary.json"

    def setup(self, trainer, pl_module, stage: str) -> None:
        if trainer.is_global_zero:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            config_path = self.run_dir / "config.yaml"
            # A resumed run keeps the config it started with; the resume's own goes beside it.
            # Lightning passes a TrainerFn (a str enum, which f-strings render as "TrainerFn.TESTING"): its value.
            name = getattr(stage, "value", stage)
            target = config_path if not config_path.exists() else self.run_dir / f"config.{name}.yaml"
            atomic_write_text(target, self.config_yaml)

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            pl_module.export_base()
        self._write(trainer, pl_module)

    def on_test_end(self, trainer, pl_module) -> None:
        self._write(trainer, pl_module)

    def on_predict_start(self, trainer, pl_module) -> None:
        self._predictions: list[torch.Tensor] = []

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._predictions.append(outputs.detach().cpu())

    def on_predict_end(self, trainer, pl_module) -> None:
        """predictions.safetensors: the estimates for the predict split, in data order (this rank's share under DDP)."""
        estimates = torch.cat(self._predictions) if self._predictions else torch.empty(0)
        name = "predictions.safetensors" if trainer.is_global_zero else f"predictions.rank{trainer.global_rank}.safetensors"
        atomic_write(self.run_dir / name, lambda tmp: save_file({"estimate": estimates.contiguous()}, tmp))
        self._write(trainer, pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "validate":  # a standalone `hpeft validate`; during fit, on_fit_end writes
            self._write(trainer, pl_module)

    def _write(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        summary = self.build_summary(trainer, pl_module)
        atomic_write_json(self.summary_path, summary)
        if any(p.requires_grad for p in pl_module.adapter_state().parameters()):
            peft.save(pl_module.adapter_state(), self.run_dir / "adapter.safetensors",
                      extra={"run_id": self.run_id, "variant": summary["variant"]})
        for logger in trainer.loggers:
            if hasattr(logger, "experiment") and hasattr(logger.experiment, "summary"):
                logger.experiment.summary.update(flat_figures(summary))
                # What `hpeft report --wandb` needs to rebuild this run's row from W&B alone.
                logger.experiment.config.update({k: summary[k] for k in WANDB_CONFIG_KEYS}, allow_val_change=True)

    @staticmethod
    def _checkpoint_facts(trainer, previous: dict) -> dict:
        """Which weights the adapter file holds: after fit, the last epoch's; after a test, the tested ones
        (the best checkpoint when the test followed fit with test_after_fit)."""
        tested = trainer.state.fn is not None and trainer.state.fn.value == "test"
        return {**previous, **_best(trainer), "adapter_weights": "tested" if tested else "last epoch"}

    def build_summary(self, trainer, pl_module) -> dict:
        previous = json.loads(self.summary_path.read_text()) if self.summary_path.exists() else {}
        facts = pl_module.run_facts()
        meter = next((cb for cb in trainer.callbacks if isinstance(cb, EfficiencyMeter)), None)
        figures = meter.figures if meter else {}
        metrics = dict(previous.get("metrics", {}))
        metrics.update({k: _plain(v) for k, v in trainer.callback_metrics.items() if "/" in k})
        datamodule = trainer.datamodule
        data = datamodule.describe() if hasattr(datamodule, "describe") else {}
        return {
            "run_id": self.run_id,
            "experiment": self.experiment,
            "task": facts["task"],
            "metric": facts["metric"],
            "variant": facts["variant"],
            "data": data,
            "hparams": facts["hparams"],
            "methods": facts["methods"],
            "metrics": metrics,
            "params": facts["params"],
            "flops": figures.get("flops", previous.get("flops", {})),
            # A later session in this run (a test of it, a resume) keeps the fit's figures it did not measure.
            "memory": _memory(previous.get("memory", {}), figures.get("memory", {})),
            "speed": {"train_samples_per_s": 0.0, "fit_seconds": 0.0, **previous.get("speed", {}), **figures.get("speed", {})},
            "trained_steps": max(previous.get("trained_steps", 0), trainer.global_step),
            "checkpoint": self._checkpoint_facts(trainer, previous.get("checkpoint", {})),
            "layers": facts["layers"],
            **({"stages": _stages(facts["stages"], previous)} if "stages" in facts else {}),
            "backbone": facts["backbone"],
            "seed": self.seed,
            "stage": trainer.state.fn.value if trainer.state.fn else None,
            "world_size": trainer.world_size,
            "precision": str(trainer.precision),
            "versions": versions(),
            "git": git_commit(),
            **self.extra,
        }


def _memory(previous: dict, now: dict) -> dict:
    """The higher measured peak of the two sessions, and the fit's modelled training memory (a test has none)."""
    modelled = {k: v for m in (previous, now) for k, v in m.items() if k.startswith("train_model")}
    return {**max(previous, now, key=lambda m: m.get("peak_bytes", -1)), **modelled}


def _stages(stages: list[dict], previous: dict) -> list[dict]:
    """A staged run's figures per stage; a later session (a test from a checkpoint written before the last
    stage was measured) keeps the figures the summary already has."""
    before = {s["index"]: s for s in previous.get("stages", [])}
    return [{**before.get(s["index"], {}), **s} for s in stages]


WANDB_CONFIG_KEYS = ("run_id", "task", "metric", "variant", "data", "hparams", "methods")


def _best(trainer) -> dict:
    cb = trainer.checkpoint_callback
    if cb is None or not getattr(cb, "best_model_path", ""):
        return {}
    score = cb.best_model_score
    return {"best_path": cb.best_model_path, "monitor": cb.monitor, "best_score": None if score is None else float(score)}


def flat_figures(summary: dict) -> dict:
    """The summary's numbers as flat W&B summary keys (so a workspace can plot the same axes)."""
    out = {f"metrics/{k}" if "/" not in k else k: v for k, v in summary["metrics"].items()}
    for group in ("params", "flops", "memory", "speed"):
        for k, v in summary.get(group, {}).items():
            if isinstance(v, (int, float)):
                out[f"cost/{group}_{k}"] = v
    return out
