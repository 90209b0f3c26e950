"""Prefix tuning (Li & Liang 2021): every targeted key and value projection gets `length` learned
vectors in front of its output, so each attention layer attends to extra key/value positions.

It needs attention that accepts more keys than queries: hpeft's ChannelTransformer does (its q, k, v, o
are separate and nothing masks by length). Fused projections (GPT-2's c_attn) and attention that adds
rotary or relative position terms to keys (Llama, T5) do not; HF peft reaches those through
past_key_values, which hpeft does not do.

While training, the prefix may be reparameterised, P = MLP(E) with E [length, width] (the paper found
direct optimisation unstable); saving and the deployed count keep only the flattened P."""

from __future__ import annotations

import torch
from torch import nn

from hpeft.peft.core import LinearLike, MethodSpec, PeftLayer, linear_dims, raw_module, weight_options
from hpeft.peft.gating import Gate


class PrefixLinear(PeftLayer):
    method = "prefix"
    level = 2

    def __init__(self, base_layer: nn.Module, length: int, reparam_hidden: int, gated: bool):
        super().__init__()
        self.base_layer = base_layer
        in_features, out_features = linear_dims(raw_module(base_layer))
        opts = weight_options(base_layer)
        self.length, self.out_features = length, out_features
        if reparam_hidden:
            self.prefix_embed = nn.Parameter(torch.randn(length, out_features, **opts))
            self.reparam = nn.Sequential(
                nn.Linear(out_features, reparam_hidden), nn.Tanh(), nn.Linear(reparam_hidden, out_features)
            ).to(**opts)
        else:
            self.prefix = nn.Parameter(torch.randn(length, out_features, **opts) * 0.02)
        self.gate = Gate(in_features, pooled=True).to(**opts) if gated else None

    def prefix_vectors(self) -> torch.Tensor:
        return self.reparam(self.prefix_embed) if hasattr(self, "reparam") else self.prefix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        p = self.prefix_vectors().to(y.dtype).expand(y.shape[0], -1, -1)
        if self.gate is not None:
            p = self.gate(x) * p
        return torch.cat([p, y], dim=1)

    def deployed_params(self, own: list[tuple[str, nn.Parameter]]) -> int:
        if not hasattr(self, "reparam"):
            return super().deployed_params(own)
        gate = {id(p) for p in self.gate.parameters()} if self.gate is not None else set()
        return self.length * self.out_features + sum(p.numel() for _, p in own if id(p) in gate)

    def exported_state(self) -> dict[str, torch.Tensor] | None:
        """The layer's parameters as a flattened (non-reparameterised) layer names them."""
        if not hasattr(self, "reparam"):
            return None
        state = {"prefix": self.prefix_vectors().detach()}
        if self.gate is not None:
            state |= {f"gate.{n}": p.detach() for n, p in self.gate.named_parameters()}
        return state


class Prefix(MethodSpec):
    """Prefix tuning: learned key/value vectors in front of each targeted projection's output."""

    name = "prefix"
    layer_types = (LinearLike,)
    level = 2

    def __init__(
        self,
        length: int = 10,
        targets: list[str] = ["k", "v"],  # noqa: B006 - shown in --help
        reparam_hidden: int = 0,
        gated: bool = False,
        layers: list[int] | None = None,
    ):
        """
        Args:
            length: prefix length (extra key/value positions per layer).
            targets: the key and value projections.
            reparam_hidden: hidden width of the reparameterisation MLP used while training; 0 trains the
                prefix directly.
            gated: scale the prefix by a learned gate of the layer input (UniPELT).
            layers: only modules of these layer indices.
        """
        if length < 1:
            raise ValueError(f"prefix length={length} must be a positive integer")
        if reparam_hidden < 0:
            raise ValueError(f"prefix reparam_hidden={reparam_hidden} must be >= 0 (0 turns reparameterisation off)")
        super().__init__(targets, layers)
        self.length, self.reparam_hidden, self.gated = length, reparam_hidden, gated

    def wrap(self, module: nn.Module, module_name: str) -> PrefixLinear:
        return PrefixLinear(module, self.length, self.reparam_hidden, self.gated)

    def exported_config(self) -> dict:
        return {**self.config(), "reparam_hidden": 0}

    @staticmethod
    def parameter_count(out_features: int, length: int) -> int:
        """Deployed (flattened) parameters per targeted projection."""
        return length * out_features

