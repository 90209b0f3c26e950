"""`MambaPillars`: seed 002's adaptive hybrid-PEFT Mamba, one preset with a switch per pillar, so the ablation
groups (Base, +P1, +P2, +P3, All) are configs of one class and a sweep varies flat arguments.

- Pillar 1, variable-aware scan: `scan_order` (hpeft/models/scan_order.py). The causal lm task takes only
  "forward", so there +P1 is Base by construction; the channel grid takes time, frequency, snake, fused ...
- Pillar 2, learned masking: `mask` puts Gumbel-Sigmoid gates on every mixer's conv1d output channels
  (hpeft/peft/gumbel_mask.py); `extra_loss()` adds mask_reg_weight * (mean keep probability -
  mask_keep_ratio)^2 to the training loss; the temperature anneals from mask_temperature to
  mask_temperature_final over mask_anneal_steps (hpeft/train/annealing.py, attached by configure_callbacks).
  With `hard_mask` every evaluation-mode forward (validation, test, predict, the run record's FLOPs and
  batch-1 latency) runs a physically hardened copy of the model (methods merged, masked channels sliced out
  by MambaMixer.keep_channels), rebuilt whenever a weight has changed since the last one: the metrics and the
  costs in summary.json are the deployed model's. Without it, evaluation multiplies the same channels by 0
  (the same outputs at the dense cost). `harden()` hardens the module's own model in place (deployment); a
  checkpoint saved after it records the kept channels, and loading it re-slices a fresh module to them.
- Pillar 3, hybrid PEFT by importance: `hybrid_peft` scores every importance_targets module of every layer on
  calibration_batches training batches before training (prepare_methods: eval mode, masks open, seeded, on
  rank 0 and broadcast), gives LoRA to the top importance_theta share and IA3 to the rest
  (hpeft/peft/importance_mix.py). Until then (e.g. `hpeft inspect`, which has no data) a provisional
  allocation by weight magnitude stands in. The allocation and scores go into checkpoints (restored on load)
  and into summary.json's hparams: `layer_allocation` (layer -> module -> method and score),
  `layer_importance` (layer -> summed score, the report's heatmap) and `importance_scores`.

Without hybrid_peft the base is fine-tuned in full (base_tuning "full", the seed's Base) or carries LoRA of
lora_rank on every importance_targets module (base_tuning "lora", a plain-PEFT baseline).
"""

from __future__ import annotations

import copy

import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils._python_dispatch import _disable_current_modes

from hpeft import peft
from hpeft.models.mamba import MambaConfig
from hpeft.peft import gumbel_mask, importance_mix
from hpeft.peft.core import layer_index, raw_module
from hpeft.peft.importance import SCORES
from hpeft.tasks.variants import Preset, _flat
from hpeft.train.annealing import SCHEDULES, TemperatureAnneal

BASE_TUNINGS = ("full", "lora")
MIX_METHODS = ("lora", "ia3")


class MambaPillars(Preset):
    """Mamba with seed 002's three pillars switched on one by one: scan order, learned masks, LoRA/IA3 by importance."""

    def __init__(
        self,
        scan_order: str | None = None,
        mask: bool = False,
        mask_keep_ratio: float = 0.5,
        mask_temperature: float = 0.5,
        mask_temperature_final: float | None = None,
        mask_anneal_steps: int = 0,
        mask_anneal_schedule: str = "exponential",
        mask_reg_weight: float = 1.0,
        mask_init_keep: float = 0.9,
        mask_straight_through: bool = False,
        mask_hard_rule: str = "topk",
        mask_lr: float | None = None,
        hard_mask: bool = True,
        hybrid_peft: bool = False,
        importance_theta: float = 0.2,
        importance: str = "grad_x_weight",
        calibration_batches: int = 4,
        importance_targets: list[str] = ["in_proj", "x_proj", "dt_proj", "out_proj"],  # noqa: B006 - shown in --help
        lora_rank: int = 8,
        lora_alpha: float | None = None,
        ia3_feedforward: list[str] = ["out_proj"],  # noqa: B006
        base_tuning: str = "full",
        **kwargs,
    ):
        """
        Args:
            scan_order: pillar 1: the backbone's scan order (overrides backbone.scan_order; null keeps it).
            mask: pillar 2: learned Gumbel-Sigmoid masks on every mixer's inner channels.
            mask_keep_ratio: share of each layer's inner channels the hard mask keeps, in (0, 1] (seed: 0.3, 0.5, 0.7).
            mask_temperature: Gumbel-Sigmoid temperature tau > 0 at the start (seed: 0.3, 0.5, 0.8).
            mask_temperature_final: anneal tau to this value (> 0); null keeps mask_temperature throughout.
            mask_anneal_steps: optimizer steps over which tau goes from mask_temperature to mask_temperature_final.
            mask_anneal_schedule: exponential, linear or cosine.
            mask_reg_weight: weight of the keep-ratio penalty (mean keep probability - keep ratio)^2, >= 0.
            mask_init_keep: every gate's keep probability at the start, in (0, 1).
            mask_straight_through: 0/1 gates forward, soft gradients backward, while training.
            mask_hard_rule: topk (exactly round(keep ratio x channels) per layer) or threshold (probability > 1/2).
            mask_lr: learning rate of the mask logits (default: lr).
            hard_mask: evaluate on a physically hardened copy (masked channels removed) rather than by zeros.
            hybrid_peft: pillar 3: LoRA on the most important modules, IA3 on the rest.
            importance_theta: share of the candidate modules that get LoRA, in (0, 1) (seed: 0.1, 0.2, 0.3).
            importance: grad_x_weight (sum |W dL/dW|) or fisher (sum (dL/dW)^2), averaged over the calibration batches.
            calibration_batches: training batches the importance is measured on (>= 1).
            importance_targets: candidate linear modules (name patterns) in every layer.
            lora_rank: LoRA rank (pillar 3's LoRA modules, or every candidate with base_tuning lora).
            lora_alpha: LoRA scale numerator (default: the rank).
            ia3_feedforward: IA3 modules whose input (not output) is scaled: out_proj's input is the inner channels.
            base_tuning: without hybrid_peft: full (train every base weight, the seed's Base) or lora.
        """
        self.flat = _flat(locals())
        gumbel_mask.check_keep_ratio(mask_keep_ratio, "mask_keep_ratio")
        gumbel_mask.check_temperature(mask_temperature, "mask_temperature")
        if mask_temperature_final is not None:
            gumbel_mask.check_temperature(mask_temperature_final, "mask_temperature_final")
        if isinstance(mask_anneal_steps, bool) or not isinstance(mask_anneal_steps, int) or mask_anneal_steps < 0:
            raise ValueError(f"mask_anneal_steps={mask_anneal_steps!r} is not valid: an integer >= 0")
        if mask_anneal_schedule not in SCHEDULES:
            raise ValueError(f"mask_anneal_schedule={mask_anneal_schedule!r} is not valid; valid: {list(SCHEDULES)}")
        if not mask_reg_weight >= 0:
            raise ValueError(f"mask_reg_weight={mask_reg_weight!r} is not valid: a weight >= 0")
        importance_mix.check_theta(importance_theta)
        if importance not in SCORES:
            raise ValueError(f"importance={importance!r} is not valid; valid: {list(SCORES)}")
        if isinstance(calibration_batches, bool) or not isinstance(calibration_batches, int) or calibration_batches < 1:
            raise ValueError(f"calibration_batches={calibration_batches!r} is not valid: an integer >= 1")
        if base_tuning not in BASE_TUNINGS:
            raise ValueError(f"base_tuning={base_tuning!r} is not valid; valid: {list(BASE_TUNINGS)}")
        if mask_lr is not None and not mask_lr > 0:
            raise ValueError(f"mask_lr={mask_lr!r} is not valid: a learning rate > 0 (or null: lr)")

        backbone = kwargs.get("backbone") or MambaConfig()
        if not isinstance(backbone, MambaConfig):
            raise ValueError(f"MambaPillars needs a MambaConfig backbone, got {type(backbone).__name__}")
        if scan_order is not None:
            backbone = MambaConfig(**{**backbone.as_dict(), "scan_order": scan_order})  # validated like the config's
        kwargs["backbone"] = backbone

        methods: list[peft.MethodSpec] = []
        if mask:
            methods.append(gumbel_mask.GumbelMask(keep_ratio=mask_keep_ratio, temperature=mask_temperature,
                                                  init_keep=mask_init_keep, straight_through=mask_straight_through,
                                                  hard_rule=mask_hard_rule))
        if not hybrid_peft and base_tuning == "lora":
            methods.append(peft.LoRA(rank=lora_rank, alpha=lora_alpha, targets=list(importance_targets)))
        kwargs.setdefault("train_base", not hybrid_peft and base_tuning == "full")
        # LoRA and IA3 of pillar 3 are injected after the base exists (their places depend on it): options
        # naming them are checked once they are there.
        method_lr = {**({"gumbel_mask": mask_lr} if mask_lr is not None else {}), **(kwargs.pop("method_lr", None) or {})}
        freeze = kwargs.pop("method_freeze_steps", None) or {}
        early = {s.name for s in methods}
        super().__init__(methods=methods, method_lr={k: v for k, v in method_lr.items() if k in early} or None,
                         method_freeze_steps={k: v for k, v in freeze.items() if k in early} or None, **kwargs)

        self.allocation: dict[str, str] | None = None
        self.module_scores: dict[str, float] | None = None
        self.importance_source: str | None = None
        self._deployed: tuple | None = None
        if hybrid_peft:
            names = importance_mix.candidates(self.model, list(importance_targets))
            probe = peft.LoRA(rank=lora_rank, alpha=lora_alpha, targets=names)
            for name in names:  # any candidate may win LoRA: refuse a rank one of them cannot take now
                probe.check(raw_module(self.model.get_submodule(name)), name)
            # No data yet: weight magnitude stands in until prepare_methods calibrates on training data.
            scores = {n: float(raw_module(self.model.get_submodule(n)).weight.detach().abs().sum()) for n in names}
            self._use_allocation(scores, "weight magnitude (provisional: calibrated on training data when fit starts)")
        self.hparams["method_lr"] = method_lr or None
        self.hparams["method_freeze_steps"] = freeze or None
        present = {s.name for s in peft.applied_specs(self.model)}
        for name in {**method_lr, **freeze}:
            if name not in present:
                raise ValueError(f"method_lr / method_freeze_steps name a method {name!r} this model does not have; "
                                 f"its methods: {sorted(present)}")

    # -- pillar 3 ----------------------------------------------------------------------------------
    def _use_allocation(self, scores: dict[str, float], source: str, allocation: dict[str, str] | None = None) -> None:
        """(Re-)inject LoRA and IA3: by `allocation` when given (a checkpoint's), else top-theta of `scores`."""
        if allocation is None:
            lora, ia3 = importance_mix.allocate(scores, self.flat["importance_theta"])
            allocation = {n: "lora" if n in lora else "ia3" for n in scores}
        old = [s for s in peft.applied_specs(self.model) if s.name in MIX_METHODS]
        peft.remove(self.model, old)
        specs = importance_mix.mix_specs([n for n, m in allocation.items() if m == "lora"],
                                         [n for n, m in allocation.items() if m == "ia3"],
                                         self.flat["lora_rank"], self.flat["lora_alpha"], self.flat["ia3_feedforward"])
        peft.apply(self.model, specs, freeze_base=not self.hparams.train_base)
        self.methods = peft.applied_specs(self.model)
        self.allocation, self.module_scores, self.importance_source = dict(allocation), dict(scores), source

    def prepare_methods(self) -> None:
        if not self.flat["hybrid_peft"]:
            return
        if self.trainer.datamodule is None:
            raise ValueError("hybrid_peft scores modules on the data module's training batches; fit with a data module")
        wanted, batches = self.flat["calibration_batches"], []
        for batch in self.trainer.datamodule.train_dataloader():
            batches.append({k: v.to(self.device) for k, v in batch.items()})
            if len(batches) == wanted:
                break
        scores = self.calibrate(batches)
        # Under DDP every process saw its own batches: all take rank 0's scores so the shapes agree.
        scores = self.trainer.strategy.broadcast(scores, src=0)
        self._use_allocation(scores, f"{self.flat['importance']} on {len(batches)} training batches")

    def calibrate(self, batches: list[dict]) -> dict[str, float]:
        """Importance of every candidate module, measured on the base alone: LoRA and IA3 out, masks open,
        eval mode (no dropout), the global random state untouched."""
        peft.remove(self.model, [s for s in peft.applied_specs(self.model) if s.name in MIX_METHODS])
        names = importance_mix.candidates(self.model, self.flat["importance_targets"])
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.random.fork_rng(devices=[]), gumbel_mask.bypassed(self.model):
                torch.manual_seed(0)
                # self.model, not self: in eval mode self(...) would run the hardened copy, which has no gradients.
                losses = [lambda b=b: self.task.loss(self.model(self.task.inputs(b)), b) for b in batches]
                return importance_mix.calibrate(self.model, losses, names, self.flat["importance"])
        finally:
            self.model.train(was_training)

    # -- pillar 2 ----------------------------------------------------------------------------------
    def extra_loss(self) -> torch.Tensor:
        """The keep-ratio penalty, weighted: what the training loss adds to the task's."""
        return self.flat["mask_reg_weight"] * gumbel_mask.mask_penalty(self.model)

    def training_loss(self, batch: dict) -> torch.Tensor:
        loss = super().training_loss(batch)
        if self.flat["mask"] and self.flat["mask_reg_weight"] > 0 and gumbel_mask.mask_layers(self.model):
            loss = loss + self.extra_loss().to(loss)
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        trainer = self._trainer
        every = trainer.log_every_n_steps if trainer is not None else 1
        if self.flat["mask"] and (trainer is None or (self.global_step + 1) % max(every, 1) == 0 or trainer.is_last_batch):
            self.log("mask/keep_prob", gumbel_mask.keep_probability(self.model), batch_size=1)
        return loss

    def set_temperature(self, temperature: float) -> None:
        """TemperatureAnneal's hook."""
        gumbel_mask.set_temperature(self.model, temperature)

    def configure_callbacks(self):
        final, steps = self.flat["mask_temperature_final"], self.flat["mask_anneal_steps"]
        fitting = self._trainer is None or self._trainer.state.fn == TrainerFn.FITTING
        if not self.flat["mask"] or final is None or not fitting:  # (a test after fit keeps fit's instance)
            return super().configure_callbacks()
        return [*super().configure_callbacks(), TemperatureAnneal(self.flat["mask_temperature"], final, steps, self.flat["mask_anneal_schedule"])]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training and self.flat["hard_mask"] and gumbel_mask.mask_layers(self.model):
            return self.deployed_model()(x)
        return self.model(x)

    def deployed_model(self) -> torch.nn.Module:
        """A hardened copy of the model (methods merged, masked channels removed), rebuilt when any weight
        changed since the last copy (tensor versions count in-place updates: optimizer steps, loading)."""
        params = list(self.model.parameters())
        key = (params[0].device, params[0].dtype, tuple((id(p), p._version) for p in params))
        if self._deployed is None or self._deployed[0] != key:
            # Outside any FLOP counter or inference mode around the caller: building the copy (merge's
            # matmuls) is not the model's cost, and its weights must be ordinary tensors.
            with _disable_current_modes(), torch.inference_mode(False), torch.no_grad():
                deployed = copy.deepcopy(self.model)
                gumbel_mask.harden(deployed)
                deployed.eval().requires_grad_(False)
            self._deployed = (key, deployed)
        return self._deployed[1]

    def harden(self) -> dict[str, list[int]]:
        """Harden the module's own model in place (deployment): see gumbel_mask.harden. Returns the kept channels."""
        self._deployed = None
        return gumbel_mask.harden(self.model)

    # -- checkpoints and the run record -------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.allocation is not None:
            checkpoint["hpeft_importance_mix"] = {"allocation": self.allocation, "scores": self.module_scores,
                                                  "source": self.importance_source}
        hardened = getattr(self.model, "hpeft_hardened", None)
        if hardened:
            checkpoint["hpeft_hardened"] = hardened

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Runs before the weights are loaded (and, on resume, before the optimizer is made): the shapes must
        # be the checkpoint's, whatever a new calibration in setup found.
        saved = checkpoint.get("hpeft_importance_mix")
        if saved is not None:
            scores = {k: float(v) for k, v in saved["scores"].items()}
            if saved["allocation"] != self.allocation:
                self._use_allocation(scores, saved["source"], saved["allocation"])
            self.module_scores, self.importance_source = scores, saved["source"]
        hardened = checkpoint.get("hpeft_hardened")
        if hardened and not getattr(self.model, "hpeft_hardened", None):
            self._deployed = None
            gumbel_mask.harden(self.model, kept=hardened)

    def variant_hparams(self) -> dict:
        out = super().variant_hparams()
        if self.allocation is not None:
            table = importance_mix.layer_table(self.module_scores, self.allocation)
            out.update(importance_source=self.importance_source, importance_scores=self.module_scores,
                       allocation=self.allocation, layer_allocation=table,
                       layer_importance={i: sum(m["score"] for m in row.values()) for i, row in table.items()})
        kept = getattr(self.model, "hpeft_hardened", None) or gumbel_mask.kept_channels(self.model)
        if kept:
            out["mask_kept_channels"] = {layer_index(name): index for name, index in kept.items()}
            deployed = self.model if getattr(self.model, "hpeft_hardened", None) else self.deployed_model()
            out["mask_deployed_params"] = sum(p.numel() for p in deployed.parameters())
        return out
