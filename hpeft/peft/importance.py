"""Module importance from one calibration batch: the first-order Taylor score sum |W * dL/dW| of each
linear layer's weight (how much the loss would change if the weight were removed; Molchanov et al. 2019).
Used to give important layers more capacity (LoRA ranks in LoRAAdapter) before training starts.

`score="fisher"` scores sum (dL/dW)^2 instead: the trace of the weight's (empirical, batch-gradient) Fisher
information, how sharply the loss reacts to the weight moving; it ignores the weight's own size."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from hpeft.peft.core import LinearLike, layer_index, logical_name, raw_module


SCORES = {
    "grad_x_weight": lambda w, g: (w * g).abs().sum(),
    "fisher": lambda w, g: g.float().pow(2).sum(),
}


def module_importance(model: nn.Module, loss_fn: Callable[[], torch.Tensor], names: list[str] | None = None,
                      score: str = "grad_x_weight") -> dict[str, float]:
    """|W * grad W| (or, `score="fisher"`, grad W^2) summed per linear layer (all of them, or the logical
    `names`), from one backward pass of `loss_fn()`. Gradients are switched on for the scored weights only
    for the pass and restored after."""
    if score not in SCORES:
        raise ValueError(f"importance score={score!r} is not valid; valid: {list(SCORES)}")
    weights = {}
    for path, module in model.named_modules():
        name = logical_name(path)
        if isinstance(module, LinearLike) and raw_module(module) is module and (names is None or name in names):
            weights.setdefault(name, module.weight)
    saved = {n: (w.requires_grad, w.grad) for n, w in weights.items()}
    try:
        for w in weights.values():
            w.requires_grad_(True)
            w.grad = None
        model.zero_grad(set_to_none=True)
        loss_fn().backward()
        scores = {n: float(SCORES[score](w.detach(), w.grad)) if w.grad is not None else 0.0 for n, w in weights.items()}
    finally:
        model.zero_grad(set_to_none=True)
        for n, w in weights.items():
            w.requires_grad_(saved[n][0])
            w.grad = saved[n][1]
    return scores


def layer_scores(scores: dict[str, float]) -> dict[int, float]:
    """Module scores summed per layer index (modules outside the layers are left out)."""
    per_layer: dict[int, float] = {}
    for name, score in scores.items():
        index = layer_index(name)
        if index is not None:
            per_layer[index] = per_layer.get(index, 0.0) + score
    return per_layer
