"""Exact parameter accounting: every parameter counted once, attributed to the method that owns it
or to the base model (trainable or frozen)."""

from __future__ import annotations

from torch import nn

from hpeft.peft.core import peft_layers


def parameter_report(model: nn.Module) -> dict:
    """{"total", "trainable", "base", "trainable_pct", "methods": [{name, params, trainable}],
    "layers": [{module, method, params}], "base_trainable"}.

    `base` counts parameters that belong to no method (frozen or not); `base_trainable` those of them
    that still train (full fine-tuning, or a head left trainable)."""
    method_params: dict[int, tuple[str, str]] = {}
    layers: list[dict] = []
    for layer_name, layer in peft_layers(model):
        count = 0
        for pname, p in layer.method_parameters():
            if id(p) not in method_params:
                method_params[id(p)] = (layer.method, f"{layer_name}.{pname}")
                count += p.numel()
        layers.append({"module": layer_name, "method": layer.method, "params": count})

    seen: set[int] = set()
    total = trainable = base = base_trainable = 0
    per_method: dict[str, dict] = {}
    for p in model.parameters():  # parameters() already yields shared parameters once
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = p.numel()
        total += n
        trainable += n if p.requires_grad else 0
        if id(p) in method_params:
            entry = per_method.setdefault(method_params[id(p)][0], {"params": 0, "trainable": 0})
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
