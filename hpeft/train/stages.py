"""Staged training: a run as a list of stages, each with its own methods, trainable base, 4-bit base and
optimizer, e.g. QLoRA -> GaLore (seed 004), LoRA -> full fine-tuning, Prompt -> Prompt+LoRA.

`Stage` is what a config writes (a dataclass, so LightningCLI checks every field); `hpeft.Staged`
(tasks/staged.py) changes the model between stages; `StageSchedule` (this file) is the callback that
decides when a stage ends, switches the optimizer, writes a checkpoint at each boundary and measures
each stage (loss, perplexity, peak memory, weight bytes, optimizer-state bytes, time)."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning.pytorch as L
import torch

from hpeft.peft.core import MethodSpec
from hpeft.train.efficiency import rss_bytes

OPTIMIZERS = ("adamw", "galore")
RSS_EVERY = 10  # CPU peak memory is sampled every this many batches (as EfficiencyMeter does)
QUANT_TYPES = ("nf4", "fp4")


@dataclass
class Stage:
    """One stage of a staged run.

    Args:
        name: the stage's name (in checkpoints, summary.json and W&B keys), e.g. qlora.
        methods: PEFT methods added at the start of this stage, as specs ({class_path: hpeft.peft.LoRA,
            init_args: {...}}) or method names with default settings (e.g. lora). Methods of earlier stages
            that were not merged stay, and keep training unless freeze_methods names them.
        train_base: train the base model's weights in this stage: true for all of them, or a list of
            module-name patterns (e.g. [mlp]) for some.
        freeze_methods: names of earlier stages' methods that stop training in this stage.
        quantize: keep the base's linear layers in 4 bits during this stage: nf4 or fp4 (bitsandbytes), or
            null for full precision. A 4-bit base is dequantised when a stage without it begins.
        double_quant: quantise the 4-bit scales too (QLoRA's double quantisation).
        merge: at the end of this stage, fold the mergeable methods (LoRA, IA3, BitFit) into the base, after
            dequantising a 4-bit base (never into 4-bit codes); the quantised copy is dropped.
        optimizer: adamw, or galore (GaLoreAdamW over the trainable 2-D linear weights, AdamW for the rest).
        lr: the stage's peak learning rate.
        weight_decay: AdamW / GaLore weight decay.
        warmup_steps: linear warm-up at the start of the stage.
        cosine_schedule: decay the learning rate along a cosine to 0 at the end of the stage.
        galore_rank: GaLore projection rank; at most every projected weight's smaller side.
        galore_update_proj_gap: steps between recomputing GaLore's projection.
        galore_scale: GaLore's scale on the projected-back update.
        galore_proj_type: std, reverse_std, left, right or full.
        galore_targets: module-name patterns of the weights GaLore projects (default: all linear weights but
            the output head).
        epochs: the stage ends after this many epochs. Give epochs or steps; the last stage may give neither
            and runs until the trainer stops.
        steps: the stage ends after this many optimizer steps.
    """

    name: str
    methods: list[MethodSpec | str] = field(default_factory=list)
    train_base: bool | list[str] = False
    freeze_methods: list[str] = field(default_factory=list)
    quantize: str | None = None
    double_quant: bool = True
    merge: bool = False
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    cosine_schedule: bool = True
    galore_rank: int = 128
    galore_update_proj_gap: int = 200
    galore_scale: float = 0.25
    galore_proj_type: str = "std"
    galore_targets: list[str] | None = None
    epochs: int | None = None
    steps: int | None = None

    def __post_init__(self):
        from hpeft.peft import METHODS
        from hpeft.train.optimizers import check_galore_options

        where = f"stage {self.name!r}"
        specs = []
        for method in self.methods:
            if isinstance(method, str):
                if method not in METHODS:
                    raise ValueError(f"{where} names an unknown method {method!r}; valid methods: {sorted(METHODS)}")
                method = METHODS[method]()
            elif not isinstance(method, MethodSpec):
                raise ValueError(f"{where}: methods must be method specs or names; got {method!r}")
            specs.append(method)
        self.methods = specs
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"{where}: optimizer={self.optimizer!r}; valid optimizers: {list(OPTIMIZERS)}")
        if self.quantize is not None and self.quantize not in QUANT_TYPES:
            raise ValueError(f"{where}: quantize={self.quantize!r}; valid: {list(QUANT_TYPES)} or null")
        if self.quantize and self.train_base:
            raise ValueError(f"{where} trains the base (train_base={self.train_base!r}) while it is quantised to "
                             f"{self.quantize}: 4-bit weights cannot be trained. Use quantize: null in this stage.")
        if self.optimizer == "galore":
            check_galore_options(self.galore_rank, self.galore_update_proj_gap, self.galore_scale, self.galore_proj_type)
            if not self.train_base:
                raise ValueError(f"{where} uses optimizer galore, which projects the base's weight gradients, but "
                                 "train_base is false; set train_base: true (or a list of module patterns)")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_steps < 0:
            raise ValueError(f"{where}: lr={self.lr} must be positive, weight_decay={self.weight_decay} and "
                             f"warmup_steps={self.warmup_steps} non-negative")
        for key in ("epochs", "steps"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{where}: {key}={value} must be a positive integer (or null)")
        if self.epochs is not None and self.steps is not None:
            raise ValueError(f"{where} gives both epochs={self.epochs} and steps={self.steps}; give one")

    @property
    def bounded(self) -> bool:
        return self.epochs is not None or self.steps is not None

    def config(self) -> dict:
        """The stage as plain data (methods as their configs), for run records."""
        plain = {k: v for k, v in asdict(self).items() if k != "methods"}
        return {**plain, "methods": [m.config() for m in self.methods]}


def check_stages(stages: list[Stage]) -> None:
    """What a stage list must satisfy as a whole, checked before anything is built."""
    if not stages:
        raise ValueError("stages is empty; give at least one stage, e.g. [{name: qlora, methods: [lora], quantize: nf4, "
                         "merge: true, epochs: 1}, {name: galore, train_base: true, optimizer: galore}]")
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"stage names must differ (they name checkpoints and figures); got {names}")
    for stage in stages[:-1]:
        if not stage.bounded:
            raise ValueError(f"stage {stage.name!r} gives neither epochs nor steps; only the last stage may run "
                             "until the trainer stops")
    for before, after in zip(stages, stages[1:]):
        if before.quantize and after.quantize and before.quantize != after.quantize:
            raise ValueError(f"stages {before.name!r} and {after.name!r} quantise to {before.quantize} and then "
                             f"{after.quantize}; a 4-bit base cannot change its type between stages")


def device_peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def rewrap_ddp(trainer) -> None:
    """DDP all-reduces only the parameters that required gradients when it wrapped the model; a stage that
    trains other parameters needs the model wrapped again, or their gradients would differ between ranks."""
    from lightning.pytorch.strategies import DDPStrategy

    strategy = trainer.strategy
    if isinstance(strategy, DDPStrategy) and strategy.model is not trainer.lightning_module:
        strategy.model = trainer.lightning_module
        strategy.configure_ddp()


class StageSchedule(L.Callback):
    """Ends each stage at its epoch or step count: asks the module to change the model (`end_stage`,
    `begin_stage`), builds the next stage's optimizer and scheduler, writes `after-<i>-<name>.ckpt` into
    `checkpoint_dir` (default: the run's checkpoints folder), and hands the module each stage's figures (`record_stage`). Stops the run when a
    bounded last stage ends. Added by `hpeft.Staged.configure_callbacks`."""

    def __init__(self, checkpoint_dir: str | Path | None = None):
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self._reset()

    def _reset(self) -> None:
        self._t0 = time.perf_counter()
        self._loss_sum, self._loss_steps, self._rss = None, 0, 0  # the sum stays on the device: no sync per step
        self._val: dict = {}

    # -- measuring the stage that runs ------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        self._reset()
        self._resumed_at = trainer.global_step if trainer.global_step > pl_module.stage_start["step"] else None
        device_peak_reset(pl_module.device)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None:
            self._loss_sum = loss.detach() if self._loss_sum is None else self._loss_sum + loss.detach()
            self._loss_steps += 1
        if pl_module.device.type == "cpu" and self._loss_steps % RSS_EVERY == 0:  # CUDA has its own peak counter
            self._rss = max(self._rss, rss_bytes())
        if pl_module.stage_finished(trainer.global_step, trainer.current_epoch, epoch_end=False):
            self._advance(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # An epoch cut short (max_steps, an early stop) ends no epoch-bounded stage.
        whole = trainer.fit_loop.epoch_loop.batch_progress.current.completed >= trainer.num_training_batches
        if whole and pl_module.stage_finished(trainer.global_step, trainer.current_epoch, epoch_end=True):
            self._advance(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if pl_module.stage_index < len(pl_module.stages):  # stopped inside a stage (the trainer's own limit)
            stage = pl_module.stages[pl_module.stage_index]
            self._record(trainer, pl_module, {**self._figures(trainer, pl_module), "completed": not stage.bounded})

    @staticmethod
    def _record(trainer, pl_module, figures: dict) -> None:
        """The stage's figures to the module (summary.json) and to the loggers (W&B: stage/<name>/<figure>)."""
        pl_module.record_stage(figures)
        name = pl_module.stages[pl_module.stage_index].name
        flat = {**figures, **{f"flops_{k}": v for k, v in figures["flops"].items()}}
        for logger in trainer.loggers:
            logger.log_metrics({f"stage/{name}/{k}": v for k, v in flat.items() if isinstance(v, (int, float))},
                               step=trainer.global_step)

    def _figures(self, trainer, pl_module) -> dict:
        from hpeft.models.quantize import model_bytes
        from hpeft.train.efficiency import measure_flops, peak_memory
        from hpeft.train.optimizers import state_bytes

        mean_loss = float(self._loss_sum) / self._loss_steps if self._loss_steps else None
        peak = peak_memory(pl_module.device, self._rss)
        figures = {
            "train_loss": mean_loss,
            "trained_steps": trainer.global_step - pl_module.stage_start["step"],
            "seconds": time.perf_counter() - self._t0,
            "peak_bytes": peak["peak_bytes"],
            "peak_device": peak["device"],
            # The model changes between stages; summary.json's top-level flops are the first stage's.
            "flops": measure_flops(pl_module),
            "weight_bytes": model_bytes(pl_module.model),
            "optimizer_state_bytes": sum(state_bytes(o) for o in trainer.optimizers),
            **{k: v for k, v in self._val.items()},
        }
        if pl_module.task.name == "lm" and mean_loss is not None:
            figures["train_perplexity"] = math.exp(min(mean_loss, 50.0))
        if self._resumed_at is not None:
            figures["resumed_at_step"] = self._resumed_at  # loss, time and peak cover the part after the resume
        return figures

    # -- the boundary --------------------------------------------------------------------------------
    def _advance(self, trainer, pl_module) -> None:
        self._record(trainer, pl_module, {**self._figures(trainer, pl_module), "completed": True})
        ended = pl_module.stage_index
        pl_module.end_stage()
        if pl_module.stage_index + 1 >= len(pl_module.stages):
            pl_module.stage_index += 1  # past the last stage: nothing left to train
            trainer.should_stop = True
            return
        epoch_end = trainer.current_epoch + (1 if self._at_epoch_end(trainer) else 0)
        pl_module.begin_stage(pl_module.stage_index + 1, step=trainer.global_step, epoch=epoch_end)
        rewrap_ddp(trainer)
        trainer.strategy.setup_optimizers(trainer)  # the new stage's optimizer and scheduler
        folder = self.checkpoint_dir or Path(getattr(trainer.checkpoint_callback, "dirpath", None)
                                             or Path(trainer.default_root_dir) / "checkpoints")
        trainer.save_checkpoint(folder / f"after-{ended}-{pl_module.stages[ended].name}.ckpt")
        self._reset()
        self._resumed_at = None
        device_peak_reset(pl_module.device)

    @staticmethod
    def _at_epoch_end(trainer) -> bool:
        # Called from on_train_epoch_end, or from the last batch's on_train_batch_end of an epoch.
        return trainer.fit_loop.epoch_loop.done or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
