"""DoRA (Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation"): the weight is split into a magnitude
and a direction, and LoRA adapts the direction:

    W' = m * (W + s B A) / ||W + s B A||_c

||.||_c is the norm of each output row over the input dimension (HF peft's `use_dora=True`), s = alpha / r (or
alpha / sqrt(r) with rsLoRA), and the vector m trains. A is random and B zero as in LoRA, and m starts at ||W||_c,
so the layer starts as the base. As the paper (section 4.3) and HF peft do, the norm is a constant in the
backward pass (detached): gradients reach A and B through the numerator only, which keeps the memory of
differentiating through the norm off the graph. The output is computed as HF peft does,
y = W x + b + (m / n - 1) W x + (m / n) s B A x, with dropout (when training) on the input of the last two terms.

DoRA sits at level -1: always directly on the base module, whatever was applied before it, since its output
depends on the base's weight itself and not only on the base's output. LoRA, IA3 or BitFit on the same module
therefore wrap around it, and peft.merge folds DoRA first, then them, in the order in which they compute."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hpeft.peft.core import LinearLike, MethodSpec, PeftLayer, is_transposed_linear, linear_dims, raw_module, require_unstacked, weight_options
from hpeft.peft.lora import check_low_rank_args, check_rank_fits


def out_in(weight: torch.Tensor, transposed: bool) -> torch.Tensor:
    """A linear weight as [out, in] (transformers' Conv1D stores [in, out])."""
    return weight.T if transposed else weight


def column_norm(weight: torch.Tensor) -> torch.Tensor:
    """||W||_c of an [out, in] weight: one norm per output row, over the input dimension."""
    return torch.linalg.norm(weight, dim=1)


class DoRALinear(PeftLayer):
    method = "dora"
    level = -1

    def __init__(self, base_layer: nn.Module, rank: int, alpha: float, dropout: float, rslora: bool):
        super().__init__()
        self.base_layer = base_layer
        self.rank = rank
        self.scaling = alpha / math.sqrt(rank) if rslora else alpha / rank
        self.transposed = is_transposed_linear(base_layer)
        in_features, out_features = linear_dims(base_layer)
        opts = weight_options(base_layer)
        self.lora_A = nn.Parameter(torch.empty(rank, in_features, **opts))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, **opts))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # LoRA's init: Kaiming-uniform A, zero B
        with torch.no_grad():  # in float32 at least: a bf16 sum of squares would round m off the base's norm
            w = out_in(base_layer.weight, self.transposed)
            self.magnitude = nn.Parameter(column_norm(w.to(torch.promote_types(w.dtype, torch.float32))).to(**opts))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self._merged_norm: torch.Tensor | None = None

    def delta_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """s B A, [out, in], computed in `dtype` (default: the parameters')."""
        return (self.lora_B.to(dtype) @ self.lora_A.to(dtype)) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.merged:
            return y
        base = self.base_layer
        weight = out_in(base.weight, self.transposed).to(x.dtype)
        norm = column_norm(weight + self.delta_weight().detach().to(x.dtype)).detach()
        scale = self.magnitude / norm
        if isinstance(self.dropout, nn.Identity) or not self.training:
            plain = y if base.bias is None else y - base.bias  # W x, from the base's own output: no second pass
        else:
            x = self.dropout(x)
            plain = F.linear(x, weight)
        update = F.linear(F.linear(x, self.lora_A), self.lora_B)
        return y + (scale - 1) * plain + scale * update * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the exact weight m * V / ||V||_c (V = W + s B A) into the base; the bias stays. `unmerge` undoes it."""
        if self.merged:
            return
        require_unstacked(self)
        w = self.base_layer.weight
        if not w.is_floating_point():
            raise ValueError("DoRA cannot merge into quantised weights; dequantize the base first "
                             "(hpeft.models.quantize.dequantize) and merge into its full-precision weights")
        work = torch.promote_types(w.dtype, torch.float32)
        v = out_in(w.to(work), self.transposed) + self.delta_weight(work)
        # unmerge needs the norm of the unmerged weight, which the merged weight no longer tells.
        self._merged_norm = column_norm(v)
        merged = (self.magnitude.to(work) / self._merged_norm)[:, None] * v
        w.copy_(out_in(merged, self.transposed).to(w.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        w = self.base_layer.weight
        work = torch.promote_types(w.dtype, torch.float32)
        factor = (self.magnitude.to(work) / self._merged_norm.to(w.device))[:, None]  # a plain attribute: .to() skips it
        base = out_in(w.to(work), self.transposed) / factor - self.delta_weight(work)
        w.copy_(out_in(base, self.transposed).to(w.dtype))
        self.merged, self._merged_norm = False, None

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scaling={self.scaling:g}, merged={self.merged}"


class DoRA(MethodSpec):
    """Weight-decomposed low-rank adaptation of linear layers: a trained magnitude per output and a LoRA-adapted
    direction."""

    name = "dora"
    layer_types = (LinearLike,)
    level = -1

    def __init__(
        self,
        rank: int = 8,
        targets: list[str] = ["q", "v"],  # noqa: B006 - jsonargparse shows this default in --help
        alpha: float | None = None,
        dropout: float = 0.0,
        rslora: bool = False,
        layers: list[int] | None = None,
    ):
        """
        Args:
            rank: rank r of the direction's update B A.
            targets: module-name patterns of the linear layers to adapt (see hpeft.peft.core).
            alpha: scale numerator; the update is scaled by alpha / r (or alpha / sqrt(r) with rslora).
                Defaults to the rank, i.e. a scale of 1.
            dropout: dropout on the input of the update (and of the rescaled base term) while training.
            rslora: use rank-stabilised scaling alpha / sqrt(r).
            layers: adapt only modules of these layer indices.
        """
        check_low_rank_args("DoRA", rank, alpha, dropout)
        super().__init__(targets, layers)
        self.rank, self.alpha, self.dropout, self.rslora = rank, float(rank if alpha is None else alpha), dropout, rslora

    def check(self, module: nn.Module, module_name: str) -> None:
        check_rank_fits("DoRA", self.rank, module, module_name)
        if not raw_module(module).weight.is_floating_point():
            raise ValueError(f"DoRA needs {module_name}'s weight in floating point to take its norms, but it is "
                             f"{raw_module(module).weight.dtype} (quantised); use LoRA on quantised bases")

    def wrap(self, module: nn.Module, module_name: str) -> DoRALinear:
        return DoRALinear(module, self.rank, self.alpha, self.dropout, self.rslora)

    @staticmethod
    def parameter_count(in_features: int, out_features: int, rank: int) -> int:
        """Trainable parameters DoRA adds to one in x out linear layer: LoRA's A and B, and the magnitude."""
        return rank * (in_features + out_features) + out_features
