"""4-bit base weights (QLoRA, Dettmers et al. 2023) with bitsandbytes, QLoRA's own library (its
Linear4bit runs on the CPU too): linear layers become `bnb.nn.Linear4bit` holding NF4 (or FP4) codes
and per-block scales, optionally double-quantised. PEFT methods wrap them like any linear layer.

`dequantize` puts full-precision `nn.Linear` layers back (the weights the 4-bit codes stand for) and drops
the quantised copies; merging LoRA happens into those, never into 4-bit codes (LoRALinear refuses)."""

from __future__ import annotations

import torch
from torch import nn

from hpeft.peft.core import is_transposed_linear, logical_name, match, set_submodule

QUANT_TYPES = ("nf4", "fp4")


def _is_4bit(module: nn.Module) -> bool:
    return type(module).__name__ == "Linear4bit"


def quantize_4bit(model: nn.Module, targets: list[str] | None = None, exclude: list[str] = ("lm_head", "head"),
                  quant_type: str = "nf4", double_quant: bool = True, compute_dtype: torch.dtype = torch.float32) -> list[str]:
    """Replace the linear layers of `model` (those matching `targets`, default all, minus `exclude`) by 4-bit
    ones in place; return their names. The output head is left in full precision by default, as in QLoRA."""
    import bitsandbytes as bnb

    if quant_type not in QUANT_TYPES:
        raise ValueError(f"quant_type={quant_type!r}; valid: {list(QUANT_TYPES)}")
    chosen = quantizable(model, targets, exclude)
    for name, module in chosen:
        weight = module.weight.detach()
        weight = weight.T if is_transposed_linear(module) else weight  # Conv1D stores [in, out]
        out_features, in_features = weight.shape
        q = bnb.nn.Linear4bit(in_features, out_features, bias=module.bias is not None, compute_dtype=compute_dtype,
                              compress_statistics=double_quant, quant_type=quant_type, device="meta")
        # On a CPU with AVX512-BF16, bitsandbytes (>= 0.49) repacks the codes in place at the first no-grad eval
        # forward into a bf16-scaled layout for its CPU kernel. That repack breaks on layers whose in_features is
        # not a multiple of the block size (reshape to K // 64 = 0 columns) and, where it works, changes the
        # numbers and the layout that dequantize, the checkpoint and the fingerprint read. Keep the plain layout.
        q.support_avx512bf16_for_cpu = False
        q.weight = bnb.nn.Params4bit(weight.float().contiguous().cpu(), requires_grad=False, quant_type=quant_type,
                                     compress_statistics=double_quant)
        if module.bias is not None:
            q.bias = nn.Parameter(module.bias.detach().float().clone(), requires_grad=False)
        set_submodule(model, name, q.to(weight.device))  # moving the Params4bit quantises it
    return [name for name, _ in chosen]


def quantizable(model: nn.Module, targets: list[str] | None = None, exclude: list[str] = ("lm_head", "head")) -> list:
    """The (name, module) pairs quantize_4bit would replace; raises when there are none."""
    chosen = []
    for name, module in model.named_modules():
        linear = isinstance(module, nn.Linear) or is_transposed_linear(module)
        if not linear or _is_4bit(module) or any(match(p, logical_name(name)) for p in exclude):
            continue
        if targets is None or any(match(p, logical_name(name)) for p in targets):
            chosen.append((name, module))
    if not chosen:
        kinds = sorted({type(m).__name__ for _, m in model.named_modules()})[:12]
        raise ValueError(f"quantisation found no linear layer to quantise (targets={targets}, exclude={list(exclude)}); "
                         f"the model's module types: {kinds}")
    return chosen


def dequantize(model: nn.Module, dtype: torch.dtype = torch.float32) -> list[str]:
    """Replace every 4-bit layer by an nn.Linear with the weights its codes stand for; return their names."""
    import bitsandbytes as bnb

    done = []
    for name, module in [(n, m) for n, m in model.named_modules() if _is_4bit(m)]:
        weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state).to(dtype)
        linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device=weight.device, dtype=dtype)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if module.bias is not None:
                linear.bias.copy_(module.bias.to(dtype))
        linear.requires_grad_(False)
        set_submodule(model, name, linear)
        done.append(name)
    return done


def weight_bytes(model: nn.Module, quantised_only: bool = False) -> int:
    """Bytes the weights of the (4-bit, or all) linear layers take, 4-bit codes with their scales."""
    total = 0
    for module in model.modules():
        if _is_4bit(module):
            state = module.weight.quant_state
            total += module.weight.data.numel() * module.weight.data.element_size()
            total += state.absmax.numel() * state.absmax.element_size()
            if getattr(state, "state2", None) is not None:  # double quantisation: the scales' own scales (the
                # 256-entry code table is one constant shared by every layer, so it is not counted per layer)
                total += state.state2.absmax.numel() * state.state2.absmax.element_size()
        elif not quantised_only and (isinstance(module, nn.Linear) or is_transposed_linear(module)):
            total += module.weight.numel() * module.weight.element_size()
    return total


def model_bytes(model: nn.Module) -> int:
    """Bytes of all of `model`'s parameters and buffers as stored: 4-bit layers by their codes and scales."""
    seen, total = set(), 0
    for module in model.modules():
        if _is_4bit(module):
            seen.add(id(module.weight))
            total += weight_bytes(module, quantised_only=True)
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor.numel() * tensor.element_size()
    return total
