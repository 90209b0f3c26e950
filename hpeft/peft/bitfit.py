"""BitFit (Ben Zaken et al. 2022): train only the bias terms. Here a frozen module's bias is trained
as a learned offset added to its output (starting at zero, so the output is unchanged at step 0); it is
the same function as training the bias itself, keeps the base weights untouched for save/load, gives
a bias to layers built without one (Llama-style), and folds into the bias exactly (`merge`)."""

from __future__ import annotations

import torch
from torch import nn

from hpeft.peft.core import LinearLike, MethodSpec, PeftLayer, linear_dims, raw_module, require_unstacked, weight_options


def output_features(module: nn.Module) -> int:
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
        return module.normalized_shape[-1] if isinstance(module, nn.LayerNorm) else module.num_channels
    if isinstance(module, nn.Conv1d):
        return module.out_channels
    if type(module).__name__.endswith("RMSNorm") and getattr(module, "weight", None) is not None:
        return module.weight.shape[-1]
    return linear_dims(module)[1]


class BitFitLayer(PeftLayer):
    method = "bitfit"
    level = 0

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.base_layer = base_layer
        raw = raw_module(base_layer)
        self.channel_axis = 1 if isinstance(raw, nn.Conv1d) else -1  # Conv1d outputs [B, C, L]
        self.bias_delta = nn.Parameter(torch.zeros(output_features(raw), **weight_options(raw)))

    def forward(self, *args, **kwargs):
        y = self.base_layer(*args, **kwargs)
        return y + (self.bias_delta[:, None] if self.channel_axis == 1 else self.bias_delta)

    @torch.no_grad()
    def merge(self) -> None:
        require_unstacked(self)
        base = self.base_layer
        if getattr(base, "bias", None) is None:
            base.bias = nn.Parameter(self.bias_delta.detach().clone(), requires_grad=False)
        else:
            base.bias.add_(self.bias_delta.to(base.bias.dtype))


class BitFit(MethodSpec):
    """Train bias terms only (as zero-initialised output offsets)."""

    name = "bitfit"
    layer_types = (LinearLike, nn.LayerNorm, nn.Conv1d)
    level = 0

    def __init__(self, targets: list[str] = ["*"], layers: list[int] | None = None):  # noqa: B006
        """
        Args:
            targets: module-name patterns; the default "*" takes every linear, LayerNorm and Conv1d layer.
            layers: only modules of these layer indices.
        """
        super().__init__(targets, layers)

    def wrap(self, module: nn.Module, module_name: str) -> BitFitLayer:
        return BitFitLayer(module)

    @staticmethod
    def parameter_count(module: nn.Module) -> int:
        return output_features(module)
