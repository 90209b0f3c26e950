"""LoRA (Hu et al. 2021): y = W x + (alpha / r) * B A x, with A random and B zero so training starts
at the base model. rsLoRA (Kalajdzievski 2023) scales by alpha / sqrt(r) instead, which keeps the
update's magnitude stable as the rank grows."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hpeft.peft.core import MethodSpec, PeftLayer


class LoRALinear(PeftLayer):
    method = "lora"

    def __init__(self, base_layer: nn.Linear, rank: int, alpha: float, dropout: float, rslora: bool):
        super().__init__()
        self.base_layer = base_layer
        self.rank = rank
        self.scaling = alpha / math.sqrt(rank) if rslora else alpha / rank
        w = base_layer.weight
        self.lora_A = nn.Parameter(torch.empty(rank, base_layer.in_features, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(base_layer.out_features, rank, dtype=w.dtype, device=w.device))
        # Same init as the LoRA paper's reference code: Kaiming-uniform A, zero B.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.merged:
            return y
        return y + F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scaling

    @torch.no_grad()
    def _shift(self, sign: float) -> None:
        # In float32 whatever the weights' dtype, so that unmerge restores bf16/fp16 weights as closely as it can.
        w = self.base_layer.weight
        w.copy_((w.float() + sign * (self.lora_B.float() @ self.lora_A.float()) * self.scaling).to(w.dtype))

    def merge(self) -> None:
        """Fold B A into the base weight (outputs unchanged); `unmerge` undoes it."""
        if not self.merged:
            self._shift(1.0)
            self.merged = True

    def unmerge(self) -> None:
        if self.merged:
            self._shift(-1.0)
            self.merged = False

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scaling={self.scaling:g}, merged={self.merged}"


class LoRA(MethodSpec):
    """Low-rank adaptation of linear layers."""

    name = "lora"
    layer_types = (nn.Linear,)

    def __init__(
        self,
        rank: int = 8,
        targets: list[str] = ["q", "v"],  # noqa: B006 - jsonargparse shows this default in --help
        alpha: float | None = None,
        dropout: float = 0.0,
        rslora: bool = False,
    ):
        """
        Args:
            rank: rank r of the update B A.
            targets: module-name patterns of the linear layers to adapt (see hpeft.peft.core).
            alpha: scale numerator; the update is scaled by alpha / r (or alpha / sqrt(r) with rslora).
                Defaults to the rank, i.e. a scale of 1.
            dropout: dropout on the LoRA branch's input while training.
            rslora: use rank-stabilised scaling alpha / sqrt(r).
        """
        if rank < 1:
            raise ValueError(f"LoRA rank={rank} must be a positive integer")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA dropout={dropout} must be in [0, 1)")
        if not targets:
            raise ValueError("LoRA targets is empty; give module-name patterns such as ['q', 'v', 'ffn.0']")
        super().__init__(targets)
        self.rank, self.alpha, self.dropout, self.rslora = rank, float(rank if alpha is None else alpha), dropout, rslora

    def wrap(self, module: nn.Module, module_name: str) -> LoRALinear:
        if self.rank > min(module.in_features, module.out_features):
            raise ValueError(
                f"LoRA rank={self.rank} exceeds the smaller side of {module_name} "
                f"({module.in_features}x{module.out_features}); valid ranks: 1..{min(module.in_features, module.out_features)}"
            )
        return LoRALinear(module, self.rank, self.alpha, self.dropout, self.rslora)

    @staticmethod
    def parameter_count(in_features: int, out_features: int, rank: int) -> int:
        """Trainable parameters LoRA adds to one in x out linear layer."""
        return rank * (in_features + out_features)
