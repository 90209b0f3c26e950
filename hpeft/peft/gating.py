"""Learned gates (UniPELT, Mao et al. 2022): a method's branch is scaled by sigma(W x + b) of the layer
input, so training can turn each method up or down per layer. Gates remember their last mean value
so the training loop can log how much each method is used."""

from __future__ import annotations

import torch
from torch import nn


class Gate(nn.Module):
    def __init__(self, in_features: int, pooled: bool = False):
        """`pooled`: one gate value per sequence from the mean token (for branches that have no token axis
        of their own, such as prefix vectors); otherwise one per token."""
        super().__init__()
        self.proj = nn.Linear(in_features, 1)
        self.pooled = pooled
        self.register_buffer("last", torch.zeros(()), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pooled and x.dim() > 2:
            x = x.mean(dim=-2, keepdim=True)
        g = torch.sigmoid(self.proj(x))
        self.last = g.detach().mean()
        return g


def gate_values(model: nn.Module) -> dict[str, float]:
    """Mean gate value per method over the model's gated layers, from the last forward pass."""
    from hpeft.peft.core import peft_layers

    values: dict[str, list[float]] = {}
    for _, layer in peft_layers(model):
        gate = getattr(layer, "gate", None)
        # One gate per layer, or (the cache route's prefix, which sits on the whole decoder) one per decoder layer.
        for g in (gate if isinstance(gate, nn.ModuleList) else [gate]):
            if isinstance(g, Gate):
                values.setdefault(layer.method, []).append(float(g.last))
    return {method: sum(v) / len(v) for method, v in values.items()}
