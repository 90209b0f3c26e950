"""Compacter and Compacter++ (Karimi Mahabadi et al. 2021): adapters whose projections are
parameterised hypercomplex multiplication (PHM) layers,

    W = sum_{i=1..n} A_i (x) B_i,   A_i in R^{n x n},   B_i = s_i t_i^T in R^{(in/n) x (out/n)}  (rank r),

with the "slow" A_i shared by every PHM layer of a spec, down- and up-projections alike (one [n, n, n]
tensor: the paper's "shared across all layers" and AdapterHub's shared_phm_rule), and the low-rank "fast"
B_i per layer. A projection has n*r*(in/n + out/n) fast weights and an `out` bias; the rule adds n^3 once.
Compacter places adapters like Houlsby (after the attention output and the FFN output), Compacter++ like
Pfeiffer (after the FFN output only), through the roles "role:attn" and "role:ffn" on every mapped family. The
up-projection's fast weights start at zero, so the adapter starts as the identity."""

from __future__ import annotations

import math

import torch
from torch import nn

from hpeft.peft.adapter import Adapter, AdapterLayer

KINDS = {"compacter": "houlsby", "compacter++": "pfeiffer"}


class PHMLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, rule: nn.Parameter, rank: int, zero: bool):
        super().__init__()
        n = rule.shape[0]
        self.in_features, self.out_features, self.n = in_features, out_features, n
        self.rule = rule  # [n, n, n], shared across layers
        std = (1.0 / (in_features * rank)) ** 0.25
        self.s = nn.Parameter(torch.randn(n, in_features // n, rank) * std)
        self.t = nn.Parameter(torch.zeros(n, rank, out_features // n) if zero else torch.randn(n, rank, out_features // n) * std)
        self.bias = nn.Parameter(torch.zeros(out_features))

    def weight(self) -> torch.Tensor:
        """[in, out] = sum_i kron(A_i, s_i t_i)."""
        b = self.s @ self.t  # [n, in/n, out/n]
        return torch.einsum("iab,icd->acbd", self.rule, b).reshape(self.in_features, self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight().to(x.dtype) + self.bias


class CompacterLayer(AdapterLayer):
    method = "compacter"


class Compacter(Adapter):
    """Compacter / Compacter++: adapters with shared-Kronecker low-rank (PHM) projections."""

    name = "compacter"
    layer_class = CompacterLayer

    def __init__(
        self,
        kind: str = "compacter",
        phm_dim: int = 4,
        phm_rank: int = 1,
        size: int | None = None,
        reduction_factor: float = 32,
        activation: str = "gelu",
        targets: list[str | dict] | None = None,
        layers: list[int] | None = None,
    ):
        """
        Args:
            kind: compacter (after attention and FFN) or compacter++ (after the FFN only).
            phm_dim: n, the number of Kronecker terms; must divide the widths and the bottleneck.
            phm_rank: rank r of each fast weight B_i.
            size: bottleneck width; defaults to the output width / reduction_factor (rounded to a multiple of n).
            reduction_factor: output width / bottleneck width, when size is not given.
            activation: non-linearity between the projections.
            targets: module-name patterns, roles or spans (see Adapter); defaults to the kind's places.
            layers: only modules of these layer indices.
        """
        if kind not in KINDS:
            raise ValueError(f"compacter kind={kind!r}; valid kinds: {sorted(KINDS)}")
        if phm_dim < 1 or phm_rank < 1:
            raise ValueError(f"compacter phm_dim={phm_dim} and phm_rank={phm_rank} must be positive integers")
        super().__init__(kind=KINDS[kind], size=size, reduction_factor=reduction_factor, activation=activation,
                         targets=targets, layers=layers)
        self.kind, self.phm_dim, self.phm_rank = kind, phm_dim, phm_rank
        self._rule: nn.Parameter | None = None

    def start_apply(self) -> None:
        self._rule = None

    def bottleneck_size(self, out_features: int) -> int:
        if self.size is not None:
            return self.size
        n = self.phm_dim
        return max(n, n * round(out_features / self.reduction_factor / n))

    def check(self, module: nn.Module, module_name: str) -> None:
        from hpeft.peft.adapter import block_dims

        _, out_features = block_dims(module, module_name)
        m = self.bottleneck_size(out_features)
        for what, width in (("output width", out_features), ("bottleneck size", m)):
            if width % self.phm_dim:
                valid = [d for d in range(1, math.gcd(out_features, m) + 1) if out_features % d == 0 and m % d == 0]
                raise ValueError(f"compacter phm_dim={self.phm_dim} does not divide {module_name}'s {what} {width}; "
                                 f"valid phm_dim here: {valid}")

    def make_projection(self, in_features: int, out_features: int, up: bool, module_name: str) -> nn.Module:
        if self._rule is None:
            n = self.phm_dim
            self._rule = nn.Parameter(torch.randn(n, n, n) / math.sqrt(n))
        return PHMLinear(in_features, out_features, self._rule, self.phm_rank, zero=up)

    @staticmethod
    def parameter_count(in_features: int, out_features: int, n: int, rank: int) -> int:
        """Per-layer parameters of one PHM projection (fast weights and bias; the shared rule adds n^3 once)."""
        return n * rank * (in_features // n + out_features // n) + out_features
