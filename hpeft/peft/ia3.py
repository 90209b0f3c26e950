"""IA3 (Liu et al. 2022, "Few-shot PEFT is better and cheaper than in-context learning"): learned vectors
rescale activations. On attention projections (keys, values) the output is scaled, y = l * (W x + b); on
feed-forward modules the input is scaled, y = W (l * x) + b, which is the paper's rescaling of the FFN's
inner activation when the target is the FFN's second linear layer. Vectors start at one (neutral) and
fold into the weights exactly (`merge`)."""

from __future__ import annotations

import torch
from torch import nn

from hpeft.peft.core import LinearLike, MethodSpec, PeftLayer, is_transposed_linear, linear_dims, match, raw_module, require_unstacked, weight_options


class IA3Linear(PeftLayer):
    method = "ia3"
    level = 0

    def __init__(self, base_layer: nn.Module, feedforward: bool):
        super().__init__()
        self.base_layer = base_layer
        self.feedforward = feedforward
        in_features, out_features = linear_dims(raw_module(base_layer))
        self.ia3_l = nn.Parameter(torch.ones(in_features if feedforward else out_features, **weight_options(base_layer)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.feedforward:
            return self.base_layer(x * self.ia3_l)
        return self.base_layer(x) * self.ia3_l

    @torch.no_grad()
    def merge(self) -> None:
        require_unstacked(self)
        base = self.base_layer
        w = base.weight  # [out, in] for nn.Linear, [in, out] for Conv1D
        in_axis = 0 if is_transposed_linear(base) else 1
        shape = [1, 1]
        shape[in_axis if self.feedforward else 1 - in_axis] = -1
        w.mul_(self.ia3_l.view(shape).to(w.dtype))
        if not self.feedforward and base.bias is not None:
            base.bias.mul_(self.ia3_l.to(base.bias.dtype))

    def extra_repr(self) -> str:
        return f"scales={'input' if self.feedforward else 'output'}"


class IA3(MethodSpec):
    """Learned rescaling vectors on linear layers' outputs (or inputs, for feed-forward modules)."""

    name = "ia3"
    layer_types = (LinearLike,)
    level = 0

    def __init__(
        self,
        targets: list[str] = ["k", "v", "ffn.2"],  # noqa: B006 - shown in --help
        feedforward: list[str] = ["ffn.2"],  # noqa: B006
        layers: list[int] | None = None,
    ):
        """
        Args:
            targets: module-name patterns of the linear layers to rescale.
            feedforward: patterns (among the targets) whose input, not output, is rescaled.
            layers: only modules of these layer indices.
        """
        super().__init__(targets, layers)
        self.feedforward = list(feedforward)

    def is_feedforward(self, module_name: str) -> bool:
        return any(match(p, module_name) for p in self.feedforward)

    def wrap(self, module: nn.Module, module_name: str) -> IA3Linear:
        return IA3Linear(module, self.is_feedforward(module_name))

    @staticmethod
    def parameter_count(in_features: int, out_features: int, feedforward: bool) -> int:
        return in_features if feedforward else out_features
