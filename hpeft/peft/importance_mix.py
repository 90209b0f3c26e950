"""Importance-driven LoRA / IA3 mix (seed 002's pillar 3): score candidate linear modules on calibration
data, give the top `theta` share of them LoRA (expressive, more parameters) and the rest IA3 (a scaling
vector each, almost free).

    scores = calibrate(model, [lambda: loss(b) for b in batches], candidates(model, ["in_proj", "out_proj"]))
    lora, ia3 = allocate(scores, theta=0.2)
    specs = mix_specs(lora, ia3, rank=8, feedforward=["out_proj"])

Scores are means over the calibration batches of peft.module_importance's per-batch score: grad_x_weight
(sum |W dL/dW|, the first-order estimate of the loss change if the weight were removed) or fisher (sum
(dL/dW)^2). Both are sums over a module's weights, so a large module (in_proj) tends to score above a small
one (dt_proj): importance here is what a module contributes as a whole, not per parameter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from hpeft.peft.core import LinearLike, MethodSpec, layer_index, match, positions, raw_module
from hpeft.peft.ia3 import IA3
from hpeft.peft.importance import SCORES, module_importance
from hpeft.peft.lora import LoRA


def check_theta(theta: float, name: str = "importance_theta") -> None:
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not 0.0 < theta < 1.0:
        raise ValueError(f"{name}={theta!r} is not valid: the share of modules that get LoRA must be in (0, 1) "
                         f"(seed grid 0.1, 0.2, 0.3)")


def candidates(model: nn.Module, patterns: list[str]) -> list[str]:
    """Logical names of the linear modules matching `patterns`, in model order."""
    found = [n for n, path in positions(model).items()
             if isinstance(raw_module(model.get_submodule(path)), LinearLike) and any(match(p, n) for p in patterns)]
    if not found:
        raise ValueError(f"importance targets {patterns} match no linear module of the model")
    return found


def calibrate(model: nn.Module, losses: Iterable[Callable[[], torch.Tensor]], names: list[str],
              score: str = "grad_x_weight") -> dict[str, float]:
    """Mean over `losses` (one closure per calibration batch) of each module's importance score."""
    if score not in SCORES:
        raise ValueError(f"importance={score!r} is not valid; valid: {list(SCORES)}")
    total = dict.fromkeys(names, 0.0)
    count = 0
    for loss_fn in losses:
        for name, value in module_importance(model, loss_fn, names=names, score=score).items():
            total[name] += value
        count += 1
    if count == 0:
        raise ValueError("importance calibration got no batch: the training data loader is empty")
    return {n: v / count for n, v in total.items()}


def lora_count(theta: float, modules: int) -> int:
    """How many modules get LoRA: round(theta * modules), half up, at least 1."""
    return max(1, min(modules, math.floor(theta * modules + 0.5)))


def allocate(scores: dict[str, float], theta: float) -> tuple[list[str], list[str]]:
    """(LoRA modules, IA3 modules): the lora_count(theta, n) highest scores, ties going to the module first
    in `scores`' order; both lists keep that order."""
    check_theta(theta)
    order = list(scores)
    ranked = sorted(order, key=lambda n: (-scores[n], order.index(n)))
    top = set(ranked[: lora_count(theta, len(order))])
    return [n for n in order if n in top], [n for n in order if n not in top]


def mix_specs(lora: list[str], ia3: list[str], rank: int, alpha: float | None = None,
              feedforward: list[str] = ["out_proj"]) -> list[MethodSpec]:  # noqa: B006
    """A LoRA spec on exactly the `lora` modules and an IA3 spec on exactly the `ia3` ones (full logical
    names are patterns that match only themselves)."""
    specs: list[MethodSpec] = []
    if lora:
        specs.append(LoRA(rank=rank, alpha=alpha, targets=list(lora)))
    if ia3:
        specs.append(IA3(targets=list(ia3), feedforward=list(feedforward)))
    return specs


def layer_table(scores: dict[str, float], allocation: dict[str, str]) -> dict[int, dict[str, dict]]:
    """{layer index: {module's own name (in_proj ...): {"method", "score"}}}: the per-layer view for the
    run record and `hpeft inspect` (the seed's layer-contribution heatmap)."""
    table: dict[int, dict[str, dict]] = {}
    for name, value in scores.items():
        index = layer_index(name)
        if index is not None:
            table.setdefault(index, {})[name.rpartition(".")[2]] = {"method": allocation[name], "score": value}
    return table
