"""`hpeft fit|validate|test|predict`: LightningCLI in subclass mode with hpeft's run directory, logger and
callbacks, and `BuildOnlyCLI` (a config's model and data, no trainer) for `hpeft inspect`, `hpeft data`,
search and study checks.

Every fit/validate/test/predict run gets its own directory runs/<experiment>/<run_id>/ holding the
resolved config.yaml, summary.json, adapter.safetensors, checkpoints and the W&B run. LightningCLI's
own SaveConfigCallback is off: it writes into a shared directory and refuses a second run there.
`--ckpt_path last` resumes the newest run of the experiment that left a last.ckpt, in its own dir.

This module imports Lightning (seconds); `hpeft.cli`, the dispatcher, imports it only for the commands
that train or build a model.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import lightning.pytorch as L
import yaml
from jsonargparse._common import debug_mode_active  # the check jsonargparse's own error() makes
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint, ModelSummary, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.io import CheckpointIO

from hpeft.train.checkpoint_io import AtomicCheckpointIO
from hpeft.train.device_checks import accelerator_problem, device_bf16, precision_problem, should_check_bf16
from hpeft.train.efficiency import EfficiencyMeter
from hpeft.train.model_summary import HpeftModelSummary
from hpeft.train.exact_resume import StepCheckpoint
from hpeft.train.run_id import run_id_for
from hpeft.train.run_record import RunRecorder
from hpeft.utils.atomic import remove_temporaries
from hpeft.utils.config_errors import tidy_config_error, tidy_parse_error
from hpeft.utils.errors import fail
from hpeft.utils.integrity import checkpoint_problem
from hpeft.utils.wandb_mode import WANDB_MODES, resolve_wandb_mode


def latest_resumable_run(experiment_dir: Path, config_yaml: str) -> Path | None:
    """The newest run of the experiment with a last.ckpt whose model and data config equal this one's.
    Other runs of the experiment (another rank, another scenario) are never resumed by mistake."""
    wanted = yaml.safe_load(config_yaml)
    same = lambda run: all(  # noqa: E731
        yaml.safe_load((run / "config.yaml").read_text()).get(k) == wanted.get(k) for k in ("model", "data")
    ) if (run / "config.yaml").is_file() else False
    candidates = sorted(experiment_dir.glob("*/checkpoints/last*.ckpt"), key=lambda p: p.stat().st_mtime)
    matching = [c.parent.parent for c in candidates if same(c.parent.parent)]
    return matching[-1] if matching else None


def newest_intact_checkpoint(folder: Path) -> Path | None:
    """The newest last*.ckpt in `folder` that is whole (hpeft.utils.integrity), else the newest other whole
    checkpoint (best, a stage's); each broken one passed over is named. last*.ckpt first: a best.ckpt written at
    the same step's epoch end is newer but holds the loops' end-of-epoch state, not the step's."""
    newest = lambda paths: sorted(paths, key=lambda p: p.stat().st_mtime, reverse=True)  # noqa: E731
    lasts = newest(folder.glob("last*.ckpt"))
    for path in lasts + newest(set(folder.glob("*.ckpt")) - set(lasts)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        print(f"hpeft: {path} is {problem}; trying the next newest checkpoint", file=sys.stderr)
    return None


# Lightning accepts some negative counts silently (log_every_n_steps=-5 logs never) and reads -1 as "no limit" where
# a limit is optional; the smallest value each Trainer count or fraction takes.
TRAINER_LOWEST = {"max_epochs": -1, "max_steps": -1, "num_sanity_val_steps": -1, "min_epochs": 0, "min_steps": 0,
                  "log_every_n_steps": 1, "accumulate_grad_batches": 1, "check_val_every_n_epoch": 1, "num_nodes": 1,
                  "limit_train_batches": 0, "limit_val_batches": 0, "limit_test_batches": 0, "limit_predict_batches": 0,
                  "overfit_batches": 0, "val_check_interval": 0, "gradient_clip_val": 0,
                  "reload_dataloaders_every_n_epochs": 0}


TIMEDELTA_KEYS = {"weeks", "days", "hours", "minutes", "seconds", "milliseconds", "microseconds"}


def non_finite_values(tree, prefix: str = "") -> list[tuple[str, float]]:
    """(dotted key, value) of every NaN or infinite float in a config: no hpeft or Lightning option takes one."""
    if isinstance(tree, dict):
        return [hit for k, v in tree.items() for hit in non_finite_values(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(tree, list | tuple):
        return [hit for i, v in enumerate(tree) for hit in non_finite_values(v, f"{prefix}[{i}]")]
    return [(prefix, tree)] if isinstance(tree, float) and not math.isfinite(tree) else []


def known_class_paths() -> dict[str, list[str]]:
    """What a config may name by class_path, by role (listed when a config names something else)."""
    from hpeft import _LAZY
    from hpeft.models import BackboneConfig
    from hpeft.peft import METHODS

    return {
        "model": [f"hpeft.{n}" for n, m in _LAZY.items() if m == "hpeft.tasks"],
        "data": [f"hpeft.{n}" for n, m in _LAZY.items() if m == "hpeft.data"],
        "backbone": [f"hpeft.models.{cls.__name__}" for cls in BackboneConfig.__subclasses__()],
        "methods": [f"hpeft.peft.{cls.__name__}" for cls in METHODS.values()],
    }


class HpeftArgumentParser(LightningArgumentParser):
    """Lightning's parser, reporting a bad config as one line that names the key and the value (no usage dump);
    a bad class_path also gets the list of valid ones (jsonargparse names only the bad one)."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error or debug_mode_active():  # jsonargparse trying a Union member: not final
            return super().error(message, ex)
        text = tidy_parse_error(message)
        if not text.startswith("unrecognized") and re.search(
                r"class_path|[Ii]mport|not a subclass|no attribute|No module named", text):
            known = "; ".join(f"{role}: {', '.join(paths)}" for role, paths in known_class_paths().items())
            text = f"{text}; valid class paths: {known}"
        command = (self.prog or "").split()[-1:] or ["fit"]
        command = command[0] if command[0] in ("fit", "validate", "test", "predict") else "fit"
        fail(f"{text} (`hpeft {command} --help` lists every option)")


class HpeftCLI(LightningCLI):
    def __init__(self, args=None, run: bool = True, **kwargs):
        super().__init__(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=None,
            parser_class=HpeftArgumentParser,
            args=args,
            run=run,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--experiment", type=str, default="default",
                            help="Experiment name; runs go to <runs_dir>/<experiment>/<run_id>/.")
        parser.add_argument("--runs_dir", type=str, default="runs", help="Root folder of run records.")
        parser.add_argument("--wandb", type=str, default="auto",
                            help=f"W&B mode, one of {WANDB_MODES}; auto is offline unless your W&B setup is logged in.")
        parser.add_argument("--wandb_project", type=str, default="hpeft", help="W&B project name.")
        parser.add_argument("--test_after_fit", type=bool, default=False,
                            help="After fit, test the best checkpoint in the same run (fit only).")
        parser.add_argument("--memory_model", type=bool, default=False,
                            help="On the CPU, also record the modelled training memory (weights + Adam state + a "
                                 "profiled step; hpeft/metrics/memory.py): about 1 s more per run. Studies set it.")
        parser.add_argument("--checkpoint_every_n_steps", type=int | None, default=None,
                            help="Also write checkpoints/last.ckpt every N optimizer steps (with the data position and "
                                 "random state), so a run killed mid-epoch resumes exactly with --ckpt_path last. "
                                 "Off by default (tiny runs); set it for long runs (e.g. 500 on a cluster).")
        parser.add_argument("--dry_run", type=bool, default=False,
                            help="Check the config and stop: build the model, the data module and the trainer, check "
                                 "every file the config names, then exit without generating data or writing anything.")
        parser.link_arguments("data.data_shape", "model.init_args.data_shape", apply_on="instantiate")

    # -- validation before anything is written -------------------------------------------------
    def _set_seed(self) -> None:
        # Lightning's seed_everything raises a bare ValueError for an out-of-range seed, and only after parsing.
        seed = self._get(self.config, "seed_everything")
        if not isinstance(seed, bool) and (not isinstance(seed, int) or not 0 <= seed < 2**32):
            fail(f"seed_everything={seed!r}; valid: an integer in [0, {2**32 - 1}], true (a random seed) or false (none)")
        super()._set_seed()

    def _check_run_args(self, cfg) -> None:
        if bad := non_finite_values(cfg.as_dict()):
            raise ValueError(f"{bad[0][0]}={bad[0][1]!r} is not a finite number; give a real value")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", cfg.experiment or ""):
            raise ValueError(f"experiment={cfg.experiment!r} must be a folder name: letters, digits, '.', '_' and '-'")
        if cfg.wandb not in WANDB_MODES:
            raise ValueError(f"wandb={cfg.wandb!r}; valid modes: {list(WANDB_MODES)}")
        for key, value in (cfg.get("trainer") or {}).items():
            lowest = TRAINER_LOWEST.get(key)
            if lowest is not None and isinstance(value, int | float) and not isinstance(value, bool) and value < lowest:
                raise ValueError(f"trainer.{key}={value!r}; valid: {lowest} or more"
                                 + (" (-1: no limit)" if lowest == -1 else ""))
        for key in ("val_check_interval", "max_time"):  # Lightning passes a mapping to timedelta(**value)
            value = (cfg.get("trainer") or {}).get(key)
            if isinstance(value, dict) and (unknown := sorted(set(value) - TIMEDELTA_KEYS)):
                raise ValueError(f"trainer.{key}={value!r}: unknown duration keys {unknown}; valid: {sorted(TIMEDELTA_KEYS)}")
        every = cfg.get("checkpoint_every_n_steps")
        if every is not None and (isinstance(every, bool) or every < 1):
            raise ValueError(f"checkpoint_every_n_steps={every!r}; valid: a positive number of steps, or null for none")
        if every is not None and cfg.get("trainer", {}).get("enable_checkpointing") is False:
            raise ValueError(f"checkpoint_every_n_steps={every} needs checkpoints, but trainer.enable_checkpointing is false")

    def _parse_ckpt_path(self) -> None:
        # LightningCLI torch.loads a ckpt_path file to read its hyperparameters: a broken one gets named here
        # instead of failing inside the zip reader.
        sub = self.config.get("subcommand")
        path = self.config[sub].get("ckpt_path") if sub else None
        if path and Path(path).is_file() and (problem := checkpoint_problem(path)):
            fail(f"ckpt_path={path!r} is {problem}; give an intact checkpoint, or --ckpt_path last for the run's newest intact one")
        super()._parse_ckpt_path()

    def instantiate_classes(self) -> None:
        cfg = self.config.get(str(self.subcommand), self.config)
        try:
            self._check_run_args(cfg)
            super().instantiate_classes()
            if self.subcommand == "fit" and not any(p.requires_grad for p in self.model.parameters()):
                raise ValueError("nothing to train: give PEFT methods or set model.init_args.train_base: true")
        except (ValueError, FileNotFoundError) as err:
            # Bad configs end here, before any data is generated or any run directory is made.
            fail(tidy_config_error(str(err)))

    # -- the run directory, logger and callbacks ---------------------------------------------------
    def _instantiate_trainer(self, config: dict, callbacks: list) -> L.Trainer:
        cfg = self.config.get(str(self.subcommand), self.config)
        if self.subcommand is None:  # inspect / data: no run, nothing written
            return None
        experiment_dir = Path(cfg.runs_dir) / cfg.experiment
        config_yaml = self._parser(self.subcommand).dump(cfg, skip_none=False)
        run_dir = latest_resumable_run(experiment_dir, config_yaml) if cfg.get("ckpt_path") == "last" else None
        if cfg.get("ckpt_path") == "last" and run_dir is None:
            print(f"hpeft: no run under {experiment_dir} with this model and data config left a last.ckpt; "
                  "starting a new run", file=sys.stderr)
        if cfg.get("ckpt_path") == "last" and run_dir is not None and not cfg.get("dry_run"):
            # The run being resumed is this process's alone now: a write its killed process left half-done goes.
            remove_temporaries(run_dir / "checkpoints")
        if cfg.get("ckpt_path") == "last" and run_dir is not None:
            checkpoint = newest_intact_checkpoint(run_dir / "checkpoints")
            if checkpoint is None:
                print(f"hpeft: no intact checkpoint left in {run_dir / 'checkpoints'}; starting a new run", file=sys.stderr)
                run_dir = None
            # The file itself, not "last": Lightning would take the newest last*.ckpt, intact or not.
            self.config_init[self.subcommand]["ckpt_path"] = None if checkpoint is None else str(checkpoint)
        run_id = run_id_for(run_dir.name if run_dir else None)
        run_dir = experiment_dir / run_id
        self.run_dir = run_dir

        seed = cfg.get("seed_everything")
        # The meter must finish its figures before the recorder writes them: callbacks run in list order.
        callbacks = list(callbacks) + [
            EfficiencyMeter(memory_model=bool(cfg.get("memory_model"))),
            RunRecorder(run_dir, cfg.experiment, run_id, config_yaml, seed=seed if isinstance(seed, int) else None),
        ]
        user = config.get("callbacks") or []
        present = [*callbacks, *(user if isinstance(user, list) else [user])]  # the config's own trainer.callbacks too
        if not any(isinstance(cb, ModelCheckpoint) for cb in present) and config.get("enable_checkpointing", True) is not False:
            task = self.model.task
            callbacks.append(ModelCheckpoint(
                dirpath=run_dir / "checkpoints", monitor=f"val/{task.metric}", mode="max" if task.higher_is_better else "min",
                save_last=True, save_top_k=1, filename="best", enable_version_counter=False,
            ))
        if cfg.get("checkpoint_every_n_steps") and self.subcommand == "fit":
            callbacks.append(StepCheckpoint(run_dir / "checkpoints", cfg.checkpoint_every_n_steps))
        if not any(isinstance(cb, ModelSummary) for cb in present) and config.get("enable_model_summary") is not False:
            callbacks.append(HpeftModelSummary(max_depth=1))
        if not any(isinstance(cb, ProgressBar) for cb in present) and config.get("enable_progress_bar") is not False:
            callbacks.append(RichProgressBar(leave=True))
        if config.get("logger") in (None, True):
            mode = resolve_wandb_mode(cfg.wandb)
            config["logger"] = False if mode == "disabled" else WandbLogger(
                project=cfg.wandb_project, name=run_id, id=run_id, group=cfg.experiment, job_type=str(self.subcommand),
                save_dir=str(run_dir), offline=mode == "offline", resume="allow",
                config={"run_id": run_id, "experiment": cfg.experiment, **json.loads(json.dumps(cfg.as_dict(), default=str))},
            )
        config["default_root_dir"] = str(run_dir)
        plugins = config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins]
        strategy = config.get("strategy")  # a configured strategy object may carry its own checkpoint IO
        if not any(isinstance(p, CheckpointIO) for p in plugins) and getattr(strategy, "_checkpoint_io", None) is None:
            config["plugins"] = [*plugins, AtomicCheckpointIO()]
        if problem := accelerator_problem(config.get("accelerator")):
            fail(problem)
        try:
            trainer = super()._instantiate_trainer(config, callbacks)
            if should_check_bf16(config.get("precision"), trainer.strategy):
                if problem := precision_problem(config.get("precision"), *device_bf16(trainer.strategy.root_device)):
                    fail(problem)
            # Lightning compares a SLURM allocation with num_nodes x devices only when it launches, after the run
            # directory exists; the same check, here, refuses it before anything is written.
            if (environment := getattr(trainer.strategy, "cluster_environment", None)) is not None:
                environment.validate_settings(num_devices=trainer.num_devices, num_nodes=trainer.num_nodes)
            return trainer
        except (MisconfigurationException, ValueError, TypeError) as err:
            # Lightning checks accelerator, devices, precision and intervals when the Trainer is built (nothing is
            # written yet); its exceptions name the value but not the key.
            fail(f"trainer: {err}")

    def _run_subcommand(self, subcommand: str) -> None:
        cfg = self.config.get(str(subcommand), self.config)
        if cfg.get("dry_run"):
            print(f"hpeft: {subcommand} config is valid: {type(self.model).__name__} on "
                  f"{type(self.datamodule).__name__}; the run would write to {self.run_dir} (dry run: nothing written)")
            return
        super()._run_subcommand(subcommand)

    def after_fit(self) -> None:
        cfg = self.config.get(str(self.subcommand), self.config)
        if cfg.get("test_after_fit"):
            best = self.trainer.checkpoint_callback.best_model_path if self.trainer.checkpoint_callback else ""
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)
        if self.trainer.is_global_zero:
            print(f"hpeft: run record in {self.run_dir}")


class BuildOnlyCLI(HpeftCLI):
    """Parses a run config and builds its model and data module, but no trainer: for inspect and data."""

    def __init__(self, args):
        argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when args and sys.argv both hold arguments
        try:
            super().__init__(args=args, run=False)
        finally:
            sys.argv = argv

    def instantiate_trainer(self, **kwargs):
        return None



class InspectCLI(BuildOnlyCLI):
    """BuildOnlyCLI for `hpeft inspect`: the architecture a config declares, built without the config's files.
    No weights are loaded (a base_checkpoint, a Mamba's pretrained checkpoint, a hub model's weights: counts and
    FLOPs do not depend on them; the architecture is randomly initialised), and a tokenizer that is not here is
    stood in by the model's declared vocabulary. `skipped` names the weights that were not loaded."""

    def instantiate_classes(self) -> None:
        from hpeft.data.text import tokenizer_optional
        from hpeft.models.backbone import architecture_only

        model = self.config.model
        init = model.init_args
        if "backbone" not in init:  # an Ensemble: its members' architectures are in their runs, not in this config
            members = ", ".join(map(str, init.get("members") or []))
            fail(f"model: {model.class_path} combines finished runs ({members}) and declares no architecture of its "
                 f"own; hpeft inspect builds a config's backbone: inspect the config each member was fitted with "
                 f"(its run's config.yaml)")
        self.skipped: list[str] = []
        if init.get("base_checkpoint"):
            self.skipped.append(f"base_checkpoint={init.base_checkpoint!r}")
            init.base_checkpoint = None  # not even looked for: a transfer config before its base is pretrained
        backbone = declared_backbone(init.get("backbone"))
        if getattr(backbone, "pretrained", None):
            self.skipped.append(f"pretrained={backbone.pretrained!r}")
        if getattr(backbone, "model", None):
            self.skipped.append(f"the weights of model={backbone.model!r}")
        with architecture_only():
            try:  # before the data module, which needs the vocabulary when its tokenizer is not here
                vocab, source = declared_vocab(backbone)
            except ValueError as err:  # a hub model whose config.json cannot be had now
                fail(f"model: backbone: {err}")
            with tokenizer_optional(vocab, source):
                super().instantiate_classes()


def declared_backbone(backbone):
    """The backbone config object of a parsed config's `backbone` (None where there is none or its values are
    bad: those are reported, under their keys, when the model is built)."""
    from lightning.pytorch.cli import instantiate_class

    try:
        return None if backbone is None else instantiate_class((), backbone.as_dict())
    except (ValueError, TypeError):
        return None


def declared_vocab(backbone) -> tuple[int | None, str]:
    """The vocabulary size a backbone's config declares, and where (None: it takes the data's, and the text says
    why). A hub model's comes from its config.json, which raises ValueError where it cannot be had now."""
    from hpeft.models import HFCausalLMConfig, MambaConfig

    if isinstance(backbone, MambaConfig):
        return backbone.vocab_size, "MambaConfig.vocab_size" + ("" if backbone.vocab_size else " is not set")
    if isinstance(backbone, HFCausalLMConfig):
        where = "the model's config" if backbone.config is not None else f"{backbone.model}'s config.json"
        vocab = getattr(backbone.hf_config(), "vocab_size", None)
        return vocab, f"vocab_size in {where}" + ("" if vocab else " (none there)")
    return None, f"{'the default backbone' if backbone is None else type(backbone).__name__} declares none"
