"""LoRA (Hu et al. 2021): y = W x + (alpha / r) * B A x, with A random and B zero so training starts
at the base model. rsLoRA (Kalajdzievski 2023) scales by alpha / sqrt(r) instead, which keeps the
update's magnitude stable as the rank grows. `gated` scales the branch by a learned gate (UniPELT);
`layer_ranks` gives some layers their own rank (per-layer allocation, see hybrid.allocate_ranks)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hpeft.peft.core import LinearLike, MethodSpec, PeftLayer, is_transposed_linear, layer_index, linear_dims, raw_module, weight_options
from hpeft.peft.delta_merge import DeltaMerge
from hpeft.peft.gating import Gate
from hpeft.peft.lora_fused import fusable, fused_lora_linear


class LoRALinear(DeltaMerge, PeftLayer):
    method = "lora"
    level = 0

    def __init__(self, base_layer: nn.Module, rank: int, alpha: float, dropout: float, rslora: bool, gated: bool = False):
        super().__init__()
        self.base_layer = base_layer
        self.rank = rank
        self.scaling = alpha / math.sqrt(rank) if rslora else alpha / rank
        in_features, out_features = linear_dims(raw_module(base_layer))
        opts = weight_options(base_layer)
        self.lora_A = nn.Parameter(torch.empty(rank, in_features, **opts))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, **opts))
        # Same init as the LoRA paper's reference code: Kaiming-uniform A, zero B.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.gate = Gate(in_features).to(**opts) if gated else None
        self.merged = False
        # The one-node path of hpeft/peft/lora_fused.py where it applies; False forces the F.linear composition
        # (the reference the fused path is tested against).
        self.fused = True

    @property
    def mergeable(self) -> bool:
        return self.gate is None  # a gate depends on the input, so a gated update has no fixed weight

    def delta_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """(alpha / r) B A, [out, in], computed in `dtype` (default: the parameters')."""
        return (self.lora_B.to(dtype) @ self.lora_A.to(dtype)) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.merged and self.gate is None and self.fused and fusable(self.base_layer, x, self.lora_A):
            x_lora = None if isinstance(self.dropout, nn.Identity) or not self.training else self.dropout(x)
            base = self.base_layer
            return fused_lora_linear(x, x_lora, base.weight, base.bias, self.lora_A, self.lora_B, self.scaling,
                                     is_transposed_linear(base))
        y = self.base_layer(x)
        if self.merged:
            return y
        # The scaling goes onto B (out x r), not onto the update (batch x tokens x out): one full-width pass
        # less, which benchmarks/peft_methods.py showed to be a few % of a small model's step.
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B * self.scaling)
        return y + (self.gate(x) * update if self.gate is not None else update)

    def check_mergeable(self) -> None:
        if self.gate is not None:
            raise ValueError("a gated LoRA layer cannot be merged: its gate depends on the input")

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scaling={self.scaling:g}, merged={self.merged}"


def check_low_rank_args(method: str, rank: int, alpha: float | None, dropout: float) -> None:
    """The hyperparameter checks LoRA and its relatives (DoRA) share: a positive rank and alpha, dropout in [0, 1)."""
    if rank < 1:
        raise ValueError(f"{method} rank={rank} must be a positive integer (valid ranks: 1..min(in, out) of each target)")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"{method} dropout={dropout} must be in [0, 1)")
    if alpha is not None and not alpha > 0:  # a negative alpha flips the update's sign; zero switches it off
        raise ValueError(f"{method} alpha={alpha} must be positive (the update is scaled by alpha / rank)")


def check_rank_fits(method: str, rank: int, module: nn.Module, module_name: str) -> None:
    i, o = linear_dims(module)
    if rank > min(i, o):
        raise ValueError(f"{method} rank={rank} exceeds the smaller side of {module_name} ({i}x{o}); valid ranks: 1..{min(i, o)}")


class LoRA(MethodSpec):
    """Low-rank adaptation of linear layers."""

    name = "lora"
    layer_types = (LinearLike,)
    level = 0

    def __init__(
        self,
        rank: int = 8,
        targets: list[str] = ["q", "v"],  # noqa: B006 - jsonargparse shows this default in --help
        alpha: float | None = None,
        dropout: float = 0.0,
        rslora: bool = False,
        gated: bool = False,
        layer_ranks: dict[int, int] | None = None,
        layers: list[int] | None = None,
    ):
        """
        Args:
            rank: rank r of the update B A.
            targets: module-name patterns of the linear layers to adapt (see hpeft.peft.core).
            alpha: scale numerator; the update is scaled by alpha / r (or alpha / sqrt(r) with rslora).
                Defaults to the rank, i.e. a scale of 1. Layers with their own rank keep this alpha.
            dropout: dropout on the LoRA branch's input while training.
            rslora: use rank-stabilised scaling alpha / sqrt(r).
            gated: scale the branch by a learned gate sigma(W x) of the layer input (UniPELT).
            layer_ranks: rank per layer index, overriding `rank` for those layers.
            layers: adapt only modules of these layer indices.
        """
        check_low_rank_args("LoRA", rank, alpha, dropout)
        for i, r in (layer_ranks or {}).items():
            if int(r) < 1:
                raise ValueError(f"LoRA layer_ranks[{i}]={r} must be a positive integer")
        super().__init__(targets, layers)
        self.rank, self.alpha, self.dropout, self.rslora = rank, float(rank if alpha is None else alpha), dropout, rslora
        self.gated = gated
        self.layer_ranks = None if layer_ranks is None else {int(i): int(r) for i, r in layer_ranks.items()}

    def rank_for(self, module_name: str) -> int:
        return (self.layer_ranks or {}).get(layer_index(module_name), self.rank)

    def check(self, module: nn.Module, module_name: str) -> None:
        check_rank_fits("LoRA", self.rank_for(module_name), module, module_name)

    def wrap(self, module: nn.Module, module_name: str) -> LoRALinear:
        # alpha stays the spec's for every layer, as with HF peft's rank_pattern: a layer given a larger rank
        # gets a smaller scale alpha / r (alpha / sqrt(r) with rslora).
        return LoRALinear(module, self.rank_for(module_name), self.alpha, self.dropout, self.rslora, self.gated)

    @staticmethod
    def parameter_count(in_features: int, out_features: int, rank: int) -> int:
        """Trainable parameters LoRA adds to one in x out linear layer."""
        return rank * (in_features + out_features)
