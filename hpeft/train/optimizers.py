"""Optimizers beyond AdamW. GaLore (Zhao et al. 2024, galore-torch): the gradients of 2-D weights are
projected onto a rank-r subspace (refreshed every `update_proj_gap` steps) before Adam's moments, so the
optimizer state of an m x n weight is r x n (or m x r) instead of m x n; every other parameter gets plain
AdamW in the same optimizer."""

from __future__ import annotations

import torch
from torch import nn

PROJ_TYPES = ("std", "reverse_std", "left", "right", "full")


def galore_adamw(model: nn.Module, lr: float = 5e-5, rank: int = 128, update_proj_gap: int = 200, scale: float = 0.25,
                 proj_type: str = "std", weight_decay: float = 0.0, targets: list[str] | None = None):
    """GaLoreAdamW over the trainable 2-D weights of `model`'s linear layers (those matching `targets`, default
    all but an output head), AdamW over the rest. The rank must not exceed any projected weight's smaller side."""
    from galore_torch import GaLoreAdamW

    from hpeft.peft.core import LinearLike, logical_name, match

    if rank < 1 or update_proj_gap < 1 or scale <= 0:
        raise ValueError(f"GaLore rank={rank}, update_proj_gap={update_proj_gap} must be positive integers and scale={scale} positive")
    if proj_type not in PROJ_TYPES:
        raise ValueError(f"GaLore proj_type={proj_type!r}; valid: {list(PROJ_TYPES)}")
    projected, names = [], []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(module, LinearLike) or weight is None or not weight.requires_grad or weight.dim() != 2:
            continue
        logical = logical_name(name)
        if (targets is None and not match("head", logical) and not match("lm_head", logical)) or (
                targets is not None and any(match(p, logical) for p in targets)):
            if rank > min(weight.shape):
                raise ValueError(f"GaLore rank={rank} exceeds the smaller side of {logical} {tuple(weight.shape)}; "
                                 f"valid ranks: 1..{min(weight.shape)} (or leave {logical} out of targets)")
            projected.append(weight)
            names.append(logical)
    if not projected:
        raise ValueError(f"GaLore found no trainable 2-D linear weight to project (targets={targets})")
    ids = {id(p) for p in projected}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    groups = [{"params": rest}] if rest else []
    groups.append({"params": projected, "rank": rank, "update_proj_gap": update_proj_gap, "scale": scale, "proj_type": proj_type})
    optimizer = GaLoreAdamW(groups, lr=lr, weight_decay=weight_decay, no_deprecation_warning=True)
    optimizer.galore_targets = names
    return optimizer


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of an optimizer's tensor state (moments; GaLore's projection matrices included)."""
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            tensors = [value] if torch.is_tensor(value) else [v for v in vars(value).values() if torch.is_tensor(v)] \
                if hasattr(value, "__dict__") else []
            total += sum(t.numel() * t.element_size() for t in tensors)
    return total
