"""Fused LoRA linear: y = x W^T + b + s (x_d A^T) B^T as one autograd node, x_d the (dropped-out) LoRA input.

Why by hand: written with F.linear, a LoRA layer is five autograd nodes (base linear, x A^T, s B, h B^T, add)
and two full-width adds (y + update forward, dx from the two branches backward). At the sizes PEFT runs on a
CPU (a ChannelTransformer layer is 1152 x 128 x 128), that per-node and per-add cost is what kept LoRA at
0.96-0.98 of a full fine-tuning step although it skips every frozen dW. Here the update is added into the base
output in place (addmm_), dx of both branches is one addmm_, and the scale goes into the small matrices.
No library provides it: HF peft composes F.linear calls as hpeft's unfused path does.

The fused node computes exactly the unfused formula (tests/peft/test_lora_fused.py checks outputs and every
gradient in float64 and gradcheck); LoRALinear falls back to the unfused path wherever this one does not
apply (see `fusable`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.modules import module as _module_hooks

from hpeft.peft.core import is_transposed_linear


class FusedLoRALinear(torch.autograd.Function):
    """forward(x, x_lora, weight, bias, lora_A, lora_B, scaling, transposed) on 2-D inputs; x_lora None means x.

    weight is [out, in] (nn.Linear) or [in, out] when `transposed` (transformers' Conv1D)."""

    @staticmethod
    def forward(ctx, x, x_lora, weight, bias, lora_A, lora_B, scaling: float, transposed: bool):
        # x, x_lora: [N, in] (the caller flattens and unflattens, so the output is no view made in here, which
        # autograd would refuse to let a later in-place op such as ReLU(inplace=True) modify).
        w_t = weight if transposed else weight.t()  # [in, out]
        xl = x if x_lora is None else x_lora
        h = xl @ lora_A.t()  # [N, r]
        y = x @ w_t if bias is None else torch.addmm(bias, x, w_t)
        y.addmm_(h, lora_B.t(), alpha=scaling)
        ctx.save_for_backward(x, x_lora, h, weight, lora_A, lora_B)
        ctx.scaling, ctx.transposed = scaling, transposed
        return y

    @staticmethod
    @once_differentiable  # the backward below is not itself differentiable: double backward raises, not lies
    def backward(ctx, grad):
        x, xl, h, weight, lora_A, lora_B = ctx.saved_tensors
        s, transposed = ctx.scaling, ctx.transposed
        need_x, need_xl, need_w, need_b, need_a, need_bb = ctx.needs_input_grad[:6]
        gB = grad @ lora_B  # [N, r]; dL/dh = s * gB
        dx = dxl = dw = db = da = dbb = None
        if need_x:
            dx = grad @ (weight.t() if transposed else weight)
            if xl is None:  # both branches read x: one accumulation in place instead of an autograd add
                dx.addmm_(gB, lora_A, alpha=s)
        if xl is not None and need_xl:
            dxl = torch.mm(gB, lora_A).mul_(s)
        if need_w:
            dw = x.t() @ grad if transposed else grad.t() @ x
        if need_b:
            db = grad.sum(0)
        if need_a:
            da = torch.mm(gB.t(), x if xl is None else xl).mul_(s)
        if need_bb:
            dbb = torch.mm(grad.t(), h).mul_(s)
        return dx, dxl, dw, db, da, dbb, None, None


def fused_lora_linear(x, x_lora, weight, bias, lora_A, lora_B, scaling: float, transposed: bool) -> torch.Tensor:
    """The fused node on inputs of any leading shape [..., in] -> [..., out]."""
    n_in = lora_A.shape[1]
    y = FusedLoRALinear.apply(x.reshape(-1, n_in), None if x_lora is None else x_lora.reshape(-1, n_in),
                              weight, bias, lora_A, lora_B, scaling, transposed)
    return y.view(*x.shape[:-1], y.shape[-1])


def _hooked(module: nn.Module) -> bool:
    """Hooks on the base layer (or global module hooks) must still run: the fused node bypasses its __call__."""
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or getattr(module, "_backward_pre_hooks", None)
                or _module_hooks._global_forward_hooks or _module_hooks._global_forward_pre_hooks
                or _module_hooks._global_backward_hooks
                or getattr(_module_hooks, "_global_backward_pre_hooks", None))


def fusable(base: nn.Module, x: torch.Tensor, lora_A: torch.Tensor) -> bool:
    """The fused node applies to a plain float nn.Linear or Conv1D, in the input's dtype, without autocast
    (which picks per-op dtypes a custom node would not see) and without hooks on the base layer."""
    if not (type(base) is nn.Linear or is_transposed_linear(base)):  # quantised subclasses, stacked methods: unfused
        return False
    w = base.weight
    return (w.is_floating_point() and w.dtype == x.dtype == lora_A.dtype and w.device == x.device
            and not torch.is_autocast_enabled(x.device.type) and not _hooked(base))
