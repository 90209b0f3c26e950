"""Exact parameter accounting: every parameter counted once, attributed to the method that owns it
or to the base model (trainable or frozen)."""

from __future__ import annotations

import torch
from torch import nn

from hpeft.peft.core import logical_name, peft_layers


def parameter_report(model: nn.Module) -> dict:
    """{"total", "trainable", "base", "base_trainable", "trainable_pct",
    "methods": [{name, params, trainable, deployed}], "layers": [{module, method, params, deployed}]}.

    `base` counts parameters that belong to no method (frozen or not); `base_trainable` those of them
    that still train (full fine-tuning, or a head left trainable). A parameter shared by several layers
    (Compacter's rule, shared adapters) is counted once, at the first layer that holds it. `deployed` is
    what a deployed model keeps: non-zeros of pruned weights, a reparameterised prefix flattened."""
    method_params: dict[int, str] = {}
    layers: list[dict] = []
    for path, layer in peft_layers(model):
        own = []
        for pname, p in layer.method_parameters():
            if id(p) not in method_params:
                method_params[id(p)] = layer.method
                own.append((pname, p))
        layers.append({"module": logical_name(path), "method": layer.method, "params": sum(p.numel() for _, p in own),
                       "deployed": layer.deployed_params(own)})

    seen: set[int] = set()
    total = trainable = base = base_trainable = 0
    per_method: dict[str, dict] = {}
    for row in layers:
        entry = per_method.setdefault(row["method"], {"params": 0, "trainable": 0, "deployed": 0})
        entry["deployed"] += row["deployed"]
    for p in model.parameters():  # parameters() already yields shared parameters once
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = logical_numel(p)
        total += n
        trainable += n if p.requires_grad else 0
        if id(p) in method_params:
            entry = per_method[method_params[id(p)]]
            entry["params"] += n
            entry["trainable"] += n if p.requires_grad else 0
        else:
            base += n
            base_trainable += n if p.requires_grad else 0
    return {
        "total": total,
        "trainable": trainable,
        "base": base,
        "base_trainable": base_trainable,
        "trainable_pct": round(100.0 * trainable / total, 4) if total else 0.0,
        "methods": [{"name": k, **v} for k, v in per_method.items()],
        "layers": layers,
    }


def logical_numel(p: torch.Tensor) -> int:
    """How many parameters `p` stands for: a 4-bit weight (bitsandbytes Params4bit) packs two codes per byte
    in a flat tensor, and counts as the weight it encodes."""
    state = getattr(p, "quant_state", None)
    shape = getattr(state, "shape", None)
    return int(torch.Size(shape).numel()) if shape is not None else p.numel()
