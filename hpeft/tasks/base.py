"""`Hybrid`: the one general LightningModule. A backbone, a list of PEFT method specs, a task.

Every variant (tasks/variants.py) is a thin preset that turns flat hyperparameters into a method list
and calls this class. The module knows nothing of which methods it holds (peft/ does the injecting
and accounting) and nothing of the task's loss or metrics (tasks/channel.py ...).

Callbacks use these hooks and nothing else: `example_batch(n)`, `training_loss(batch)`,
`run_facts()`, `adapter_state()` and `export_base()`."""

from __future__ import annotations

import math

import lightning.pytorch as L
import torch

from hpeft import peft
from hpeft.models.backbone import BackboneConfig
from hpeft.models.base_checkpoint import load_base, save_base
from hpeft.models.channel_transformer import ChannelTransformerConfig
from hpeft.peft.core import MethodSpec
from hpeft.utils.batches import batch_size
from hpeft.tasks.registry import TASKS


def warmup_cosine(warmup: int, total: int, cosine: bool):
    """The learning-rate factor at each step: linear warm-up over `warmup` steps, then constant or a cosine
    to 0 at step `total`."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not cosine:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


class Hybrid(L.LightningModule):
    # Arguments kept out of the checkpoint's hyper_parameters: objects that would need pickle to load.
    hparams_ignore = ("methods", "backbone")

    def __init__(
        self,
        methods: list[MethodSpec] = [],  # noqa: B006 - shown as the default in --help
        backbone: BackboneConfig | None = None,
        base_checkpoint: str | None = None,
        train_base: bool | None = None,
        save_base_to: str | None = None,
        task: str = "channel",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        cosine_schedule: bool = True,
        method_lr: dict[str, float] | None = None,
        method_freeze_steps: dict[str, int] | None = None,
        grad_clip_norm: float | None = None,
        data_shape: tuple[int, int] = (14, 72),
    ):
        """
        Args:
            methods: PEFT method specs to inject, e.g. [{class_path: hpeft.peft.LoRA, init_args: {rank: 8}}].
            backbone: the base model's config; defaults to a small ChannelTransformer.
            base_checkpoint: safetensors file of a pretrained base (written by a run with save_base_to).
            train_base: train the base's own weights too. Defaults to true when no methods are given
                (pretraining or full fine-tuning), false otherwise.
            save_base_to: after fit, write the backbone's weights here (a base for later PEFT runs).
            task: the task head; one of the registered tasks.
            lr: AdamW learning rate.
            weight_decay: AdamW weight decay.
            warmup_steps: linear learning-rate warm-up steps.
            cosine_schedule: decay the learning rate along a cosine to 0 over the run.
            method_lr: learning rate per method name (e.g. {prompt: 0.01, lora: 0.001}); others use lr.
            method_freeze_steps: per method name, how many first steps its parameters stay unchanged (their
                gradients are dropped; the optimizer state starts when they start), e.g. {lora: 500} lets a
                prompt settle before LoRA trains.
            grad_clip_norm: clip the gradients' global norm to this value before each step.
            data_shape: the data's shape, linked from the data module by the CLI: (symbols, subcarriers) of the
                channel grid, or (seq_len, vocab_size) for text.
        """
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; valid tasks: {sorted(TASKS)}")
        for name, value in (("lr", lr), ("weight_decay", weight_decay), ("warmup_steps", warmup_steps)):
            if value < 0 or (name == "lr" and value == 0):
                raise ValueError(f"{name}={value} must be {'positive' if name == 'lr' else 'non-negative'}")
        for name, value in {**(method_lr or {}), **{f"freeze {k}": v for k, v in (method_freeze_steps or {}).items()}}.items():
            if value < 0 or (not name.startswith("freeze") and value == 0):
                raise ValueError(f"method_lr / method_freeze_steps: {name}={value} must be positive (steps: non-negative)")
        if grad_clip_norm is not None and grad_clip_norm <= 0:
            raise ValueError(f"grad_clip_norm={grad_clip_norm} must be positive (or null for no clipping)")
        self.save_hyperparameters(ignore=list(self.hparams_ignore))
        self.backbone_config = backbone if backbone is not None else ChannelTransformerConfig()
        self.backbone_config.check(tuple(data_shape))
        self.data_shape = tuple(data_shape)
        self.task = TASKS[task]()
        self.model = self.backbone_config.build(self.data_shape, self.task.in_channels, self.task.out_channels)
        if base_checkpoint:
            load_base(self.model, self.backbone_config, self.data_shape, base_checkpoint)
        self.methods = list(methods)
        if save_base_to and self.methods:
            raise ValueError(f"save_base_to={save_base_to!r} exports a base model, which needs a run without PEFT methods; "
                             f"this run has {[m.name for m in self.methods]}")
        train_base = not self.methods if train_base is None else train_base
        peft.apply(self.model, self.methods, freeze_base=not train_base)
        present = {s.name for s in peft.applied_specs(self.model)}
        for name in {**(method_lr or {}), **(method_freeze_steps or {})}:
            if name not in present:
                raise ValueError(f"method_lr / method_freeze_steps name a method {name!r} this model does not have; "
                                 f"its methods: {sorted(present)}")

    @property
    def grid_shape(self) -> tuple[int, int]:
        """The data shape under its channel-task name (run records and base checkpoints use it)."""
        return self.data_shape

    # -- the loop -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_loss(self, batch: dict) -> torch.Tensor:
        return self.task.loss(self(self.task.inputs(batch)), batch)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.training_loss(batch)
        # self.log costs ~0.8 ms a call on the CPU (benchmarks/README.md), a few % of a small model's
        # step; log only on the steps whose values Lightning writes out (step-level values are not averaged).
        trainer = self._trainer
        every = trainer.log_every_n_steps if trainer is not None else 1
        if trainer is None or every <= 1 or (self.global_step + 1) % every == 0 or trainer.is_last_batch:
            self.log("train/loss", loss, prog_bar=True, batch_size=batch_size(batch))
            for method, value in peft.gate_values(self.model).items():  # UniPELT's gates
                self.log(f"gates/{method}", value, batch_size=batch_size(batch))
        return loss

    def _evaluate(self, split: str, batch: dict) -> None:
        estimate = self(self.task.inputs(batch))
        self.log(f"{split}/loss", self.task.loss(estimate, batch), batch_size=batch_size(batch), sync_dist=True)
        for name, metric in self.task.update(split, estimate, batch).items():
            self.log(name, metric, prog_bar=name.endswith("/nmse_db"))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate("val", batch)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate("test", batch)

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self(self.task.inputs(batch))

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.prepare_methods()
        if stage == "fit" and not any(p.requires_grad for p in self.model.parameters()):
            raise ValueError("nothing to train: give PEFT methods or set train_base: true")

    def prepare_methods(self) -> None:
        """Called before training starts (data loaded, optimizer not yet made): variants that size their
        methods from data (importance-based ranks) do it here."""

    def configure_callbacks(self):
        # Exact resumes (random state and data position, hpeft/train/exact_resume.py) under any Trainer, not
        # only hpeft's CLI: the train loader is a StatefulDataLoader, whose end-of-epoch state Lightning alone
        # would resume into an empty epoch.
        from hpeft.train.exact_resume import ExactResume

        return [ExactResume()]

    def on_before_optimizer_step(self, optimizer) -> None:
        # A method still frozen drops its gradients: AdamW then neither moves it nor builds moments for it,
        # so it starts fresh when its freeze ends, and its gradients do not count towards clipping.
        step, freeze = self.trainer.global_step, self.hparams.get("method_freeze_steps") or {}
        for group in optimizer.param_groups:
            if step < freeze.get(group.get("name"), 0):
                for p in group["params"]:
                    p.grad = None
        if self.hparams.get("grad_clip_norm"):
            grads = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(grads, self.hparams.grad_clip_norm)

    def parameter_groups(self, lr: float | None = None) -> list[dict]:
        """Trainable parameters grouped by method (each with its learning rate, `lr` or the module's own
        unless method_lr names the method); the base's in "base"."""
        owner = {id(p): layer.method for _, layer in peft.peft_layers(self.model) for _, p in layer.method_parameters()}
        groups: dict[str, list] = {}
        for p in self.parameters():
            if p.requires_grad:
                groups.setdefault(owner.get(id(p), "base"), []).append(p)
        method_lr = self.hparams.get("method_lr") or {}
        lr = self.hparams.lr if lr is None else lr
        return [{"params": ps, "lr": method_lr.get(name, lr), "name": name} for name, ps in groups.items()]

    def configure_optimizers(self):
        groups = self.parameter_groups()
        optimizer = torch.optim.AdamW(groups, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        warmup = self.hparams.warmup_steps
        total = self.trainer.estimated_stepping_batches if self.hparams.cosine_schedule else 1
        if not math.isfinite(total):
            raise ValueError("cosine_schedule needs a known run length: set trainer.max_epochs or trainer.max_steps "
                             "(a run bounded by max_time alone has none), or set model.init_args.cosine_schedule: false")
        factor = warmup_cosine(warmup, max(1, int(total)), self.hparams.cosine_schedule)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- hooks for callbacks ----------------------------------------------------------------------
    def example_batch(self, batch_size: int) -> dict:
        # Device and dtype from the weights: callbacks' setup runs before Lightning moves the model to the
        # GPU (while self.device already says cuda), and `*-true` precisions keep weights in bf16/fp16.
        p = next(self.model.parameters())
        batch = self.task.example_batch(batch_size, self.data_shape)
        return {k: v.to(device=p.device, dtype=p.dtype if v.is_floating_point() else v.dtype) for k, v in batch.items()}

    def variant_hparams(self) -> dict:
        """The flat hyperparameters a sweep varies. Variants override this with their own arguments."""
        return {"methods": [m.config() for m in self.methods], **dict(self.hparams)}

    def run_facts(self) -> dict:
        """What the run record needs to know about this module."""
        report = peft.parameter_report(self.model)
        specs = peft.applied_specs(self.model)
        return {
            "task": self.task.name,
            "metric": {"name": f"test/{self.task.metric}", "higher_is_better": self.task.higher_is_better},
            "variant": type(self).__name__,
            "hparams": self.variant_hparams(),
            "backbone": {"name": self.backbone_config.model_name, **self.backbone_config.as_dict()},
            "methods": [
                {**m, "configs": [s.config() for s in specs if s.name == m["name"]]}
                for m in report["methods"]
            ],
            "params": {k: report[k] for k in ("total", "trainable", "base", "trainable_pct")},
            "layers": report["layers"],
        }

    def adapter_state(self):
        """The module whose trainable parameters are this run's result (saved as adapter.safetensors)."""
        return self.model

    def export_base(self) -> None:
        if self.hparams.save_base_to:
            save_base(self.model, self.backbone_config, self.data_shape, self.hparams.save_base_to)
