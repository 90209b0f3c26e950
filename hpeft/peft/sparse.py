"""SparseAdapter (He et al. 2022): a large bottleneck adapter whose projections are pruned once, at
initialisation, and trained under that fixed mask ("Large-Sparse"). The paper's pruning scores need
data (SNIP); here the score is the weight magnitude at initialisation with a random tie-break, so the
zero-initialised up-projection is pruned at random. The parameter report counts both the dense
parameters (what training stores) and the non-zeros (`deployed`, what a sparse format would keep)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hpeft.peft.adapter import Adapter, AdapterLayer


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (masked entries get no gradient)."""

    def __init__(self, in_features: int, out_features: int, sparsity: float, zero: bool):
        super().__init__(in_features, out_features)
        if zero:
            nn.init.zeros_(self.weight)
            nn.init.zeros_(self.bias)
        score = self.weight.detach().abs() + 1e-6 * torch.rand_like(self.weight)
        pruned = round(sparsity * score.numel())
        mask = torch.ones_like(score)
        mask.view(-1)[score.view(-1).argsort()[:pruned]] = 0.0
        self.register_buffer("mask", mask)
        with torch.no_grad():
            self.weight.mul_(mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class SparseAdapterLayer(AdapterLayer):
    method = "sparse_adapter"

    def deployed_params(self, own: list[tuple[str, nn.Parameter]]) -> int:
        masks = {id(m.weight): int(m.mask.sum()) for m in self.bottleneck.modules() if isinstance(m, MaskedLinear)}
        return sum(masks.get(id(p), p.numel()) for _, p in own)


class SparseAdapter(Adapter):
    """A large bottleneck adapter pruned at initialisation with a fixed mask."""

    name = "sparse_adapter"
    layer_class = SparseAdapterLayer

    def __init__(
        self,
        kind: str = "houlsby",
        sparsity: float = 0.4,
        size: int | None = None,
        reduction_factor: float = 4,
        activation: str = "relu",
        targets: list[str | dict] | None = None,
        layers: list[int] | None = None,
    ):
        """
        Args:
            kind: placement, as for Adapter (houlsby, pfeiffer, parallel, scaled_parallel).
            sparsity: fraction of each projection's weights pruned at initialisation, in [0, 1).
            size: bottleneck width; defaults to the output width / reduction_factor (large: 4).
            reduction_factor: output width / bottleneck width, when size is not given.
            activation: non-linearity between the projections.
            targets: module-name patterns, roles or spans (see Adapter); defaults to the kind's places.
            layers: only modules of these layer indices.
        """
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparse_adapter sparsity={sparsity} must be in [0, 1)")
        super().__init__(kind=kind, size=size, reduction_factor=reduction_factor, activation=activation,
                         targets=targets, layers=layers)
        self.sparsity = sparsity

    def make_projection(self, in_features: int, out_features: int, up: bool, module_name: str) -> nn.Module:
        return MaskedLinear(in_features, out_features, self.sparsity, zero=up)
