"""Variants: one small class per PEFT recipe, with flat typed hyperparameters so a sweep can vary
them directly (`--model hpeft.HybridPromptLoRA --model.prompt_length 50 --model.lora_rank 10`). Each
only builds a method list and hands everything else to `Hybrid` (a preset, no behaviour of its own,
except HybridLoRAAdapter's importance-based rank allocation, which needs data)."""

from __future__ import annotations


from hpeft import peft
from hpeft.peft.adapter import KINDS as ADAPTER_KINDS
from hpeft.tasks.base import Hybrid


def _flat(arguments: dict) -> dict:
    """A variant's own arguments (its locals at the top of __init__) as plain data."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in arguments.items() if k not in ("self", "kwargs", "__class__")}


class Preset(Hybrid):
    """Base of the variants: reports its flat arguments as the run's hyperparameters."""

    flat: dict

    def variant_hparams(self) -> dict:
        training = ("lr", "weight_decay", "warmup_steps", "method_lr", "method_freeze_steps", "grad_clip_norm")
        return {**self.flat, **{k: self.hparams[k] for k in training}}


class Pretrain(Hybrid):
    """Train the whole base model (no PEFT methods), e.g. on source scenarios; `save_base_to` exports it."""

    def __init__(self, **kwargs):
        kwargs.setdefault("train_base", True)
        super().__init__(methods=[], **kwargs)

    def variant_hparams(self) -> dict:
        return {"lr": self.hparams.lr, **self.backbone_config.as_dict()}


class LoRAOnly(Preset):
    """LoRA on the seed study's targets: attention Q and V and the FFN's first linear layer."""

    def __init__(
        self,
        lora_rank: int = 8,
        lora_alpha: float | None = None,
        lora_dropout: float = 0.0,
        lora_targets: list[str] = ["q", "v", "ffn.0"],  # noqa: B006 - shown as the default in --help
        rslora: bool = False,
        **kwargs,
    ):
        """
        Args:
            lora_rank: rank r of each LoRA update.
            lora_alpha: LoRA scale numerator (scale alpha / r); defaults to the rank.
            lora_dropout: dropout on the LoRA branch while training.
            lora_targets: module-name patterns of the linear layers to adapt.
            rslora: rank-stabilised scaling alpha / sqrt(r).
        """
        self.flat = _flat(locals())
        spec = peft.LoRA(rank=lora_rank, targets=lora_targets, alpha=lora_alpha, dropout=lora_dropout, rslora=rslora)
        super().__init__(methods=[spec], **kwargs)


class PromptOnly(Preset):
    """Soft prompt tuning: learned tokens in front of the grid's tokens."""

    def __init__(self, prompt_length: int = 100, prompt_init: str = "random", prompt_targets: list[str] = ["embed"], **kwargs):  # noqa: B006
        """
        Args:
            prompt_length: number of soft prompt tokens.
            prompt_init: random or vocab (transformers models only).
            prompt_targets: the token-embedding module.
        """
        self.flat = _flat(locals())
        super().__init__(methods=[peft.Prompt(length=prompt_length, init=prompt_init, targets=prompt_targets)], **kwargs)


class PrefixOnly(Preset):
    """Prefix tuning: learned key/value vectors in every attention layer."""

    def __init__(self, prefix_length: int = 10, prefix_reparam_hidden: int = 0, prefix_targets: list[str] = ["k", "v"], **kwargs):  # noqa: B006
        """
        Args:
            prefix_length: extra key/value positions per layer.
            prefix_reparam_hidden: width of the reparameterisation MLP while training (0: none).
            prefix_targets: key and value projections.
        """
        self.flat = _flat(locals())
        spec = peft.Prefix(length=prefix_length, reparam_hidden=prefix_reparam_hidden, targets=prefix_targets)
        super().__init__(methods=[spec], **kwargs)


class AdapterOnly(Preset):
    """Bottleneck adapters (Houlsby by default; Pfeiffer, parallel or scaled parallel)."""

    def __init__(
        self,
        adapter_kind: str = "houlsby",
        adapter_size: int | None = None,
        adapter_reduction_factor: float = 16,
        adapter_activation: str = "relu",
        adapter_scale: float | None = None,
        adapter_targets: list[str] | None = None,
        **kwargs,
    ):
        """
        Args:
            adapter_kind: one of houlsby, pfeiffer, parallel, scaled_parallel.
            adapter_size: bottleneck width (default: width / reduction factor).
            adapter_reduction_factor: width / bottleneck, when adapter_size is not given.
            adapter_activation: relu, gelu, silu, tanh or identity.
            adapter_scale: branch scale (default 4 for scaled_parallel, else 1).
            adapter_targets: module patterns (default: the kind's places).
        """
        self.flat = _flat(locals())
        spec = peft.Adapter(kind=adapter_kind, size=adapter_size, reduction_factor=adapter_reduction_factor,
                            activation=adapter_activation, scale=adapter_scale, targets=adapter_targets)
        super().__init__(methods=[spec], **kwargs)


class IA3Only(Preset):
    """IA3: learned rescaling of keys, values and the FFN's inner activation."""

    def __init__(self, ia3_targets: list[str] = ["k", "v", "ffn.2"], ia3_feedforward: list[str] = ["ffn.2"], **kwargs):  # noqa: B006
        """
        Args:
            ia3_targets: linear layers to rescale.
            ia3_feedforward: those (among the targets) whose input is rescaled.
        """
        self.flat = _flat(locals())
        super().__init__(methods=[peft.IA3(targets=ia3_targets, feedforward=ia3_feedforward)], **kwargs)


class BitFitOnly(Preset):
    """BitFit: only bias terms train."""

    def __init__(self, bitfit_targets: list[str] = ["*"], **kwargs):  # noqa: B006
        """
        Args:
            bitfit_targets: module patterns whose biases train (default: every linear and LayerNorm).
        """
        self.flat = _flat(locals())
        super().__init__(methods=[peft.BitFit(targets=bitfit_targets)], **kwargs)


class CompacterOnly(Preset):
    """Compacter (after attention and FFN) or Compacter++ (after the FFN): PHM adapters."""

    def __init__(
        self,
        compacter_kind: str = "compacter",
        phm_dim: int = 4,
        phm_rank: int = 1,
        compacter_size: int | None = None,
        compacter_reduction_factor: float = 32,
        **kwargs,
    ):
        """
        Args:
            compacter_kind: compacter or compacter++.
            phm_dim: number of Kronecker terms n.
            phm_rank: rank of each fast weight.
            compacter_size: bottleneck width (default: width / reduction factor, a multiple of n).
            compacter_reduction_factor: width / bottleneck, when compacter_size is not given.
        """
        self.flat = _flat(locals())
        spec = peft.Compacter(kind=compacter_kind, phm_dim=phm_dim, phm_rank=phm_rank, size=compacter_size,
                              reduction_factor=compacter_reduction_factor)
        super().__init__(methods=[spec], **kwargs)


class SparseAdapterOnly(Preset):
    """SparseAdapter: a large adapter pruned at initialisation (fixed mask)."""

    def __init__(
        self,
        adapter_kind: str = "houlsby",
        sparsity: float = 0.4,
        adapter_size: int | None = None,
        adapter_reduction_factor: float = 4,
        **kwargs,
    ):
        """
        Args:
            adapter_kind: placement (houlsby, pfeiffer, parallel, scaled_parallel).
            sparsity: fraction of each projection pruned at initialisation.
            adapter_size: bottleneck width (default: width / reduction factor).
            adapter_reduction_factor: width / bottleneck, when adapter_size is not given.
        """
        self.flat = _flat(locals())
        spec = peft.SparseAdapter(kind=adapter_kind, sparsity=sparsity, size=adapter_size, reduction_factor=adapter_reduction_factor)
        super().__init__(methods=[spec], **kwargs)


class HybridPromptLoRA(Preset):
    """Seed 000's hybrid: soft prompt tokens and LoRA on Q, V and FFN linear1, trained jointly."""

    def __init__(
        self,
        prompt_length: int = 50,
        lora_rank: int = 10,
        lora_alpha: float | None = None,
        lora_targets: list[str] = ["q", "v", "ffn.0"],  # noqa: B006
        prompt_init: str = "random",
        prompt_lr: float | None = None,
        lora_lr: float | None = None,
        lora_freeze_steps: int = 0,
        **kwargs,
    ):
        """
        Args:
            prompt_length: number of soft prompt tokens.
            lora_rank: LoRA rank.
            lora_alpha: LoRA scale numerator (default: the rank).
            lora_targets: LoRA's linear layers.
            prompt_init: random (or vocab on transformers models).
            prompt_lr: the prompt's learning rate (default: lr).
            lora_lr: LoRA's learning rate (default: lr).
            lora_freeze_steps: LoRA stays unchanged for this many first steps (the prompt trains alone).
        """
        self.flat = _flat(locals())
        method_lr = {k: v for k, v in (("prompt", prompt_lr), ("lora", lora_lr)) if v is not None}
        kwargs.setdefault("method_lr", method_lr or None)
        kwargs.setdefault("method_freeze_steps", {"lora": lora_freeze_steps} if lora_freeze_steps else None)
        specs = [peft.Prompt(length=prompt_length, init=prompt_init), peft.LoRA(rank=lora_rank, alpha=lora_alpha, targets=lora_targets)]
        super().__init__(methods=specs, **kwargs)


class HybridUniPELT(Preset):
    """UniPELT: gated LoRA, prefix and adapter."""

    def __init__(
        self,
        lora_rank: int = 8,
        prefix_length: int = 10,
        adapter_size: int | None = None,
        adapter_reduction_factor: float = 16,
        **kwargs,
    ):
        """
        Args:
            lora_rank: rank of the gated LoRA on Q and V.
            prefix_length: length of the gated prefix.
            adapter_size: bottleneck of the gated adapter after the FFN (default: width / reduction factor).
            adapter_reduction_factor: width / bottleneck, when adapter_size is not given.
        """
        self.flat = _flat(locals())
        spec = peft.UniPELT(lora_rank=lora_rank, prefix_length=prefix_length, adapter_size=adapter_size,
                            adapter_reduction_factor=adapter_reduction_factor)
        super().__init__(methods=[spec], **kwargs)


class HybridMAM(Preset):
    """MAM adapter: prefix tuning plus a scaled parallel adapter beside the FFN."""

    def __init__(
        self,
        prefix_length: int = 30,
        prefix_reparam_hidden: int = 0,
        adapter_size: int | None = None,
        adapter_reduction_factor: float = 4,
        adapter_scale: float = 4.0,
        **kwargs,
    ):
        """
        Args:
            prefix_length: prefix length per attention layer.
            prefix_reparam_hidden: width of the prefix's reparameterisation MLP while training (0: none).
            adapter_size: parallel adapter bottleneck (default: width / reduction factor).
            adapter_reduction_factor: width / bottleneck, when adapter_size is not given.
            adapter_scale: scale of the parallel adapter's branch.
        """
        self.flat = _flat(locals())
        spec = peft.MAM(prefix_length=prefix_length, prefix_reparam_hidden=prefix_reparam_hidden, adapter_size=adapter_size,
                        adapter_reduction_factor=adapter_reduction_factor, adapter_scale=adapter_scale)
        super().__init__(methods=[spec], **kwargs)


RANK_ALLOCATIONS = ("uniform", "importance")


class HybridLoRAAdapter(Preset):
    """Seed 003: LoRA on attention, adapters on the FFN, optional sharing and importance-based ranks.

    With rank_allocation "importance", before training one batch of training data scores each layer
    by sum |W * dL/dW| of its LoRA-targeted weights and each layer gets a rank between min_rank and
    max_rank linear in its score (peft.allocate_ranks). The ranks are kept in the checkpoint, so a
    resumed or tested checkpoint gets them back, and in summary.json's hparams."""

    def __init__(
        self,
        lora_rank: int = 8,
        lora_targets: list[str] = ["q", "k", "v", "o"],  # noqa: B006
        adapter_kind: str = "pfeiffer",
        adapter_size: int | None = None,
        adapter_reduction_factor: float = 16,
        share_adapters: bool = False,
        rank_allocation: str = "uniform",
        min_rank: int = 2,
        max_rank: int = 16,
        **kwargs,
    ):
        """
        Args:
            lora_rank: LoRA rank (every layer, with rank_allocation uniform).
            lora_targets: attention projections LoRA adapts.
            adapter_kind: adapter placement on the FFN (pfeiffer, parallel, scaled_parallel, houlsby).
            adapter_size: bottleneck width (default: width / reduction factor).
            adapter_reduction_factor: width / bottleneck, when adapter_size is not given.
            share_adapters: one adapter shared by every layer (cross-layer parameter sharing).
            rank_allocation: uniform, or importance (ranks from min_rank to max_rank by layer importance).
            min_rank: smallest rank under importance allocation.
            max_rank: largest rank under importance allocation.
        """
        if rank_allocation not in RANK_ALLOCATIONS:
            raise ValueError(f"rank_allocation={rank_allocation!r}; valid: {list(RANK_ALLOCATIONS)}")
        if adapter_kind not in ADAPTER_KINDS:
            raise ValueError(f"adapter_kind={adapter_kind!r}; valid kinds: {sorted(ADAPTER_KINDS)}")
        if rank_allocation == "importance":
            peft.allocate_ranks({0: 0.0}, min_rank, max_rank)  # validates the range before anything is built
        self.flat = _flat(locals())
        self.layer_ranks: dict[int, int] | None = None
        self.importance: dict[int, float] | None = None
        spec = peft.LoRAAdapter(lora_rank=lora_rank, lora_targets=lora_targets, adapter_kind=adapter_kind, adapter_size=adapter_size,
                                adapter_reduction_factor=adapter_reduction_factor, share_adapters=share_adapters)
        super().__init__(methods=[spec], **kwargs)

    def prepare_methods(self) -> None:
        if self.flat["rank_allocation"] != "importance" or self.layer_ranks is not None:
            return
        if self.trainer.datamodule is None:
            raise ValueError("rank_allocation='importance' scores layers on a batch of the data module's training data; "
                             "fit with a data module (or set rank_allocation: uniform)")
        batch = next(iter(self.trainer.datamodule.train_dataloader()))
        batch = {k: v.to(self.device) for k, v in batch.items()}
        lora = self._lora()
        targets = [peft.core.logical_name(n) for n, layer in peft.peft_layers(self.model) if layer.spec is lora]
        was_training = self.model.training
        self.model.eval()  # no dropout: the scores are a property of the weights and the batch
        try:
            scores = peft.module_importance(self.model, lambda: self.training_loss(batch), names=targets)
        finally:
            self.model.train(was_training)
        importance = peft.layer_scores(scores)
        ranks = peft.allocate_ranks(importance, self.flat["min_rank"], self.flat["max_rank"])
        # Under DDP every process saw its own batch: all take rank 0's allocation so the shapes agree.
        ranks, importance = self.trainer.strategy.broadcast((ranks, importance), src=0)
        self._use_ranks(ranks, importance)

    def _lora(self):
        return next(s for s in peft.applied_specs(self.model) if s.name == "lora")

    def _use_ranks(self, ranks: dict[int, int], importance: dict[int, float]) -> None:
        """Re-inject LoRA with these per-layer ranks (before training, or from a checkpoint)."""
        lora = self._lora()
        peft.remove(self.model, [lora])
        spec = peft.core.spec_from_config({**lora.config(), "layer_ranks": ranks})
        peft.apply(self.model, [spec], freeze_base=not self.hparams.train_base)
        self.layer_ranks, self.importance = ranks, importance

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.layer_ranks is not None:
            checkpoint["hpeft_layer_ranks"] = {"ranks": self.layer_ranks, "importance": self.importance}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Runs before the weights are loaded (and, on resume, before the optimizer is made): the LoRA
        # shapes must be the checkpoint's, whatever a new calibration in setup found.
        saved = checkpoint.get("hpeft_layer_ranks")
        if saved is not None:
            ranks = {int(k): int(v) for k, v in saved["ranks"].items()}
            if ranks != self.layer_ranks:
                self._use_ranks(ranks, {int(k): float(v) for k, v in saved["importance"].items()})

    def variant_hparams(self) -> dict:
        return {**super().variant_hparams(), "layer_ranks": self.layer_ranks, "layer_importance": self.importance}


class HybridS4(Preset):
    """S4: layers split into 4 groups (spindle: middle groups larger), each group its own methods."""

    def __init__(
        self,
        group_methods: list[str] = ["adapter+lora", "adapter+prefix", "adapter+prefix+bitfit", "prefix+bitfit+lora"],  # noqa: B006
        group_pattern: str = "spindle",
        lora_rank: int = 8,
        lora_targets: list[str] = ["q", "v"],  # noqa: B006
        adapter_kind: str = "pfeiffer",
        adapter_reduction_factor: float = 16,
        prefix_length: int = 10,
        bitfit_targets: list[str] = ["*"],  # noqa: B006
        **kwargs,
    ):
        """
        Args:
            group_methods: per group (first to last layer), "+"-joined methods among adapter, lora, prefix, bitfit, ia3.
            group_pattern: spindle or uniform group sizes.
            lora_rank: LoRA rank where a group has lora.
            lora_targets: LoRA's linear layers.
            adapter_kind: adapter placement where a group has adapter.
            adapter_reduction_factor: width / adapter bottleneck.
            prefix_length: prefix length where a group has prefix.
            bitfit_targets: modules whose biases train where a group has bitfit.
        """
        self.flat = _flat(locals())
        makers = {
            "adapter": lambda: peft.Adapter(kind=adapter_kind, reduction_factor=adapter_reduction_factor),
            "lora": lambda: peft.LoRA(rank=lora_rank, targets=lora_targets),
            "prefix": lambda: peft.Prefix(length=prefix_length),
            "bitfit": lambda: peft.BitFit(targets=bitfit_targets),
            "ia3": lambda: peft.IA3(),
        }
        groups = []
        for entry in group_methods:
            names = [n.strip() for n in entry.split("+") if n.strip()]
            unknown = [n for n in names if n not in makers]
            if unknown or not names:
                raise ValueError(f"group_methods entry {entry!r}: unknown methods {unknown}; valid: {sorted(makers)} joined by '+'")
            groups.append([makers[n]() for n in names])
        super().__init__(methods=[peft.S4(groups=groups, pattern=group_pattern)], **kwargs)
