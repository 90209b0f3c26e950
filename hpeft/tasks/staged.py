"""`Staged`: one run through a list of stages (hpeft.train.stages.Stage), e.g. seed 004's QLoRA -> GaLore:

    stages:
      - {name: qlora, methods: [{class_path: hpeft.peft.LoRA, init_args: {rank: 16, alpha: 32}}],
         quantize: nf4, merge: true, lr: 2.0e-4, epochs: 2}
      - {name: galore, train_base: true, optimizer: galore, galore_rank: 128, lr: 5.0e-5}

The module owns the model's changes between stages (`begin_stage`, `end_stage`), each stage's optimizer
and schedule, and the stage state in checkpoints; the StageSchedule callback decides when a stage ends and
measures it. A checkpoint restores the stage it was written in: the model is rebuilt through the same
stage changes before its weights load."""

from __future__ import annotations

import math

import torch

from hpeft import peft
from hpeft.models.backbone import BackboneConfig
from hpeft.models.quantize import dequantize, quantizable, quantize_4bit
from hpeft.peft.core import logical_name, match
from hpeft.tasks.base import Hybrid, warmup_cosine
from hpeft.train.optimizers import galore_weights
from hpeft.train.stages import Stage, StageSchedule, check_stages


def _is_4bit(module) -> bool:
    return type(module).__name__ == "Linear4bit"


class Staged(Hybrid):
    """Train through a list of stages in one run: methods, trainable base, 4-bit base and optimizer per stage."""

    hparams_ignore = ("methods", "backbone", "stages")

    def __init__(
        self,
        stages: list[Stage],
        backbone: BackboneConfig | None = None,
        base_checkpoint: str | None = None,
        task: str = "channel",
        grad_clip_norm: float | None = None,
        save_base_to: str | None = None,
        data_shape: tuple[int, int] = (14, 72),
    ):
        """
        Args:
            stages: the stages in order (see hpeft.train.stages.Stage for every field): each names its methods,
                what trains, whether the base is 4-bit, its optimizer and learning rate, and its length in
                epochs or steps (the last one may run until the trainer stops).
            backbone: the base model's config; defaults to a small ChannelTransformer.
            base_checkpoint: safetensors file of a pretrained base (written by a run with save_base_to).
            task: the task head; one of the registered tasks.
            grad_clip_norm: clip the gradients' global norm to this value before each step.
            save_base_to: after fit, write the trained base's weights here (a safetensors base for later runs);
                needs every method merged by then (the last stage with methods has merge: true).
            data_shape: the data's shape, linked from the data module by the CLI.
        """
        stages = [s if isinstance(s, Stage) else Stage(**s) for s in stages]
        check_stages(stages)
        last_merge = max((i for i, s in enumerate(stages) if s.merge), default=-1)
        if save_base_to and any(s.methods for s in stages[last_merge + 1:]):
            raise ValueError(f"save_base_to={save_base_to!r} exports a plain base, but methods added after the last "
                             "merge would still be on the model at the end; set merge: true on the last stage with methods")
        super().__init__(methods=[], backbone=backbone, base_checkpoint=base_checkpoint, train_base=True, task=task,
                         grad_clip_norm=grad_clip_norm, save_base_to=save_base_to, data_shape=data_shape)
        self.stages = stages
        if any(s.quantize for s in stages):
            quantizable(self.model)  # a model with no linear layer to quantise fails now, not at a boundary
        names = [logical_name(name) for name, _ in self.model.named_modules()]
        for stage in stages:
            for pattern in stage.train_base if isinstance(stage.train_base, list) else []:
                if not any(match(pattern, name) for name in names):  # would train nothing of the base, silently
                    raise ValueError(f"stage {stage.name!r}: train_base pattern {pattern!r} matches no module of the "
                                     f"model; modules: {', '.join(sorted({n for n in names if n})[:12])}, ...")
            if stage.optimizer == "galore":  # a rank too large for some weight fails now, not at the boundary
                if not galore_weights(self.model, stage.galore_rank, stage.galore_targets, trainable_only=False):
                    raise ValueError(f"stage {stage.name!r}: GaLore finds no 2-D linear weight to project "
                                     f"(galore_targets={stage.galore_targets})")
        self.quantized: str | None = None
        self.stage_index = 0
        self.stage_start = {"step": 0, "epoch": 0}
        self.stage_records: dict[int, dict] = {}
        self.begin_stage(0, step=0, epoch=0)

    # -- the model's changes between stages (hooks for StageSchedule) ----------------------------------
    @property
    def stage(self) -> Stage:
        return self.stages[min(self.stage_index, len(self.stages) - 1)]

    def begin_stage(self, index: int, step: int, epoch: int) -> None:
        """Make the model what stage `index` trains: 4-bit or full-precision base, its methods added, and
        exactly its parameters trainable."""
        stage = self.stages[index]
        self.stage_index, self.stage_start = index, {"step": step, "epoch": epoch}
        if self.quantized and not stage.quantize:
            dequantize(self.model)
            self.quantized = None
        if stage.quantize and not self.quantized:
            dtype = next((p.dtype for p in self.model.parameters() if p.is_floating_point()), torch.float32)
            quantize_4bit(self.model, quant_type=stage.quantize, double_quant=stage.double_quant, compute_dtype=dtype)
            self.quantized = stage.quantize
        present = {s.name for s in peft.applied_specs(self.model)}
        unknown = set(stage.freeze_methods) - present
        if unknown:
            raise ValueError(f"stage {stage.name!r} freezes {sorted(unknown)}, which no earlier stage left on the "
                             f"model; methods present: {sorted(present)}")
        peft.apply(self.model, stage.methods, freeze_base=False)
        self._set_trainable(stage)

    def _set_trainable(self, stage: Stage) -> None:
        owner = {id(p): layer.method for _, layer in peft.peft_layers(self.model) for _, p in layer.method_parameters()}
        if stage.train_base is True:
            trainable_base = {id(p) for p in self.model.parameters()}
        else:  # a list of module patterns: those modules' parameters (none for an empty list or false)
            trainable_base = {id(p) for name, module in self.model.named_modules()
                              if any(match(pattern, logical_name(name)) for pattern in stage.train_base or [])
                              for p in module.parameters()}
        for p in self.model.parameters():
            if id(p) in owner:
                p.requires_grad_(owner[id(p)] not in stage.freeze_methods)
            else:
                p.requires_grad_(id(p) in trainable_base and p.is_floating_point())

    def end_stage(self) -> None:
        """At the end of the current stage: with merge, dequantise a 4-bit base and fold the mergeable
        methods into it (the quantised copy is dropped)."""
        if self.stage.merge:
            if self.quantized:
                dequantize(self.model)
                self.quantized = None
            peft.merge(self.model)

    def stage_finished(self, global_step: int, epoch: int, epoch_end: bool) -> bool:
        """Whether the current stage has run its steps (or, at an epoch's end, its epochs)."""
        if self.stage_index >= len(self.stages):
            return False
        stage = self.stage
        if stage.steps is not None:
            return global_step - self.stage_start["step"] >= stage.steps
        return stage.epochs is not None and epoch_end and epoch + 1 - self.stage_start["epoch"] >= stage.epochs

    def record_stage(self, figures: dict) -> None:
        """The current stage's measured figures (from StageSchedule), kept for summary.json and checkpoints."""
        report = peft.parameter_report(self.model)
        self.stage_records[self.stage_index] = {
            **figures, "trainable_params": report["trainable"], "total_params": report["total"],
            "quantized": self.quantized,
        }

    def configure_callbacks(self):
        return [*super().configure_callbacks(), StageSchedule()]

    # -- optimizer and schedule of the current stage ---------------------------------------------------
    def configure_optimizers(self):
        from hpeft.train.optimizers import galore_adamw

        stage = self.stage
        if stage.optimizer == "galore":
            optimizer = galore_adamw(self.model, lr=stage.lr, rank=stage.galore_rank, update_proj_gap=stage.galore_update_proj_gap,
                                     scale=stage.galore_scale, proj_type=stage.galore_proj_type, weight_decay=stage.weight_decay,
                                     targets=stage.galore_targets)
        else:
            optimizer = torch.optim.AdamW(self.parameter_groups(stage.lr), lr=stage.lr, weight_decay=stage.weight_decay)
        factor = warmup_cosine(stage.warmup_steps, self._stage_length(stage), stage.cosine_schedule)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _stage_length(self, stage: Stage) -> int:
        """Optimizer steps of the stage, for its cosine schedule."""
        if stage.steps is not None:
            return stage.steps
        total = self.trainer.estimated_stepping_batches
        if self.trainer.train_dataloader is None:  # what estimated_stepping_batches does unless max_epochs is -1
            self.trainer.fit_loop.setup_data()
        if stage.epochs is not None:
            batches = self.trainer.num_training_batches
            if math.isfinite(batches):
                return stage.epochs * max(1, math.ceil(batches / self.trainer.accumulate_grad_batches))
        elif math.isfinite(total):
            return max(1, int(total) - self.stage_start["step"])
        if stage.cosine_schedule:
            raise ValueError(f"stage {stage.name!r} has a cosine schedule but no known length: give it steps, or "
                             "set trainer.max_steps / max_epochs, or cosine_schedule: false")
        return 1

    # -- checkpoints -------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["hpeft_stage"] = {
            "index": self.stage_index, "start": dict(self.stage_start), "quantized": self.quantized,
            "records": {str(i): r for i, r in self.stage_records.items()},
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("hpeft_stage")
        if saved is None:
            raise ValueError("this checkpoint was not written by a Staged run (it has no stage state)")
        target = saved["index"]
        if target < self.stage_index:  # e.g. testing the best checkpoint, from an earlier stage, after fit
            self._rebuild()
        while self.stage_index < target:  # the same changes the run made, so the shapes match its weights
            self.end_stage()
            if self.stage_index + 1 < len(self.stages):
                self.begin_stage(self.stage_index + 1, step=0, epoch=0)
            else:
                self.stage_index += 1
        self.stage_start = dict(saved["start"])
        # Figures measured in this process (a test right after fit) are newer than the checkpoint's.
        self.stage_records = {**{int(i): r for i, r in saved["records"].items()}, **self.stage_records}
        self._restore_4bit(checkpoint["state_dict"])

    def _rebuild(self) -> None:
        """The model as __init__ built it (base weights are overwritten by the checkpoint's anyway)."""
        self.model = self.backbone_config.build(self.data_shape, self.task.in_channels, self.task.out_channels)
        self.model.to(self.device)
        self.quantized, self.stage_index = None, 0
        self.begin_stage(0, step=0, epoch=0)

    def _restore_4bit(self, state: dict) -> None:
        """bitsandbytes' Linear4bit saves its codes and quantisation state but does not load them back through
        load_state_dict (its state keys come back as unexpected): rebuild each 4-bit weight from its saved codes
        and state with bitsandbytes' own Params4bit.from_prequantized, then let the strict load take it as is."""
        import bitsandbytes as bnb

        for name, module in self.model.named_modules():
            if not _is_4bit(module):
                continue
            key = f"model.{name}.weight"
            if key not in state:
                raise ValueError(f"the checkpoint has no 4-bit weight {key}: was it written with another stage list?")
            stats = {k[len(key) + 1:]: state.pop(k) for k in [k for k in state if k.startswith(key + ".")]}
            module.weight = bnb.nn.Params4bit.from_prequantized(data=state.pop(key), quantized_stats=stats,
                                                                requires_grad=False, device=module.weight.device,
                                                                module=module)
            state[key] = module.weight

    # -- run record -------------------------------------------------------------------------------------------
    def variant_hparams(self) -> dict:
        return {"stages": [s.config() for s in self.stages], "grad_clip_norm": self.hparams.grad_clip_norm}

    def run_facts(self) -> dict:
        facts = super().run_facts()
        facts["stages"] = [
            {"index": i, "name": s.name, "optimizer": s.optimizer, "quantize": s.quantize, "merge": s.merge,
             "methods": [m.name for m in s.methods], "lr": s.lr, "epochs": s.epochs, "steps": s.steps,
             **self.stage_records.get(i, {})}
            for i, s in enumerate(self.stages)
        ]
        return facts
