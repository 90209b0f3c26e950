"""Optimizers beyond AdamW. GaLore (Zhao et al. 2024, galore-torch): the gradients of 2-D weights are
projected onto a rank-r subspace (refreshed every `update_proj_gap` steps) before Adam's moments, so the
optimizer state of an m x n weight is r x n (or m x r) instead of m x n; every other parameter gets plain
AdamW in the same optimizer."""

from __future__ import annotations

import torch
from torch import nn

PROJ_TYPES = ("std", "reverse_std", "left", "right", "full")


def galore_weights(model: nn.Module, rank: int, targets: list[str] | None = None,
                   trainable_only: bool = True) -> list[tuple[str, nn.Parameter]]:
    """The (logical name, weight) pairs GaLore projects: 2-D weights of `model`'s linear layers matching
    `targets` (default: all but an output head), trainable ones only unless asked otherwise. Raises if
    `rank` exceeds a weight's smaller side, naming the weight and the valid ranks."""
    from hpeft.peft.core import LinearLike, logical_name, match

    chosen, seen = [], set()
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(module, LinearLike) or not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            continue
        if not weight.is_floating_point() or (trainable_only and not weight.requires_grad) or id(weight) in seen:
            continue  # 4-bit codes are not trainable weights
        logical = logical_name(name)
        if (targets is None and not match("head", logical) and not match("lm_head", logical)) or (
                targets is not None and any(match(p, logical) for p in targets)):
            if rank > min(weight.shape):
                raise ValueError(f"GaLore rank={rank} exceeds the smaller side of {logical} {tuple(weight.shape)}; "
                                 f"valid ranks: 1..{min(weight.shape)} (or leave {logical} out of targets)")
            chosen.append((logical, weight))
            seen.add(id(weight))
    return chosen


def check_galore_options(rank: int, update_proj_gap: int, scale: float, proj_type: str) -> None:
    if rank < 1 or update_proj_gap < 1 or scale <= 0:
        raise ValueError(f"GaLore rank={rank}, update_proj_gap={update_proj_gap} must be positive integers and scale={scale} positive")
    if proj_type not in PROJ_TYPES:
        raise ValueError(f"GaLore proj_type={proj_type!r}; valid: {list(PROJ_TYPES)}")


def galore_adamw(model: nn.Module, lr: float = 5e-5, rank: int = 128, update_proj_gap: int = 200, scale: float = 0.25,
                 proj_type: str = "std", weight_decay: float = 0.0, targets: list[str] | None = None):
    """GaLoreAdamW over the trainable 2-D weights of `model`'s linear layers (those matching `targets`, default
    all but an output head), AdamW over the rest. The rank must not exceed any projected weight's smaller side.
    Its state_dict holds only tensors and plain values (see `_projectors_to_plain`), so checkpoints load with
    torch.load(weights_only=True) and a resumed run keeps its projection matrices."""
    from galore_torch import GaLoreAdamW

    check_galore_options(rank, update_proj_gap, scale, proj_type)
    chosen = galore_weights(model, rank, targets)
    if not chosen:
        raise ValueError(f"GaLore found no trainable 2-D linear weight to project (targets={targets})")
    ids = {id(p) for _, p in chosen}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    groups = [{"params": rest}] if rest else []
    groups.append({"params": [p for _, p in chosen], "rank": rank, "update_proj_gap": update_proj_gap, "scale": scale,
                   "proj_type": proj_type})
    optimizer = GaLoreAdamW(groups, lr=lr, weight_decay=weight_decay, no_deprecation_warning=True)
    optimizer.galore_targets = [name for name, _ in chosen]
    optimizer.register_state_dict_post_hook(_projectors_to_plain)
    optimizer.register_load_state_dict_post_hook(_projectors_from_plain)
    return optimizer


# galore-torch keeps each weight's projector as a Python object (GaLoreProjector) in the optimizer state.
# Pickling it would tie checkpoints to galore-torch's class and need torch.load(weights_only=False), so the
# state_dict holds only its projection matrix; its settings come back from the param group on load. (Not
# its strings either: Optimizer.load_state_dict rebuilds every iterable value, which turns a str into junk.)
_PROJECTOR_KEY = "galore_projector"


def _projectors_to_plain(optimizer, state_dict: dict) -> dict:
    state = {}
    for index, entry in state_dict["state"].items():
        projector = entry.get("projector")
        if projector is not None and not isinstance(projector, dict):
            # A copy: the live state keeps its projector object.
            entry = {**entry, "projector": {_PROJECTOR_KEY: True, "ortho_matrix": projector.ortho_matrix}}
        state[index] = entry
    return {**state_dict, "state": state}


def _projectors_from_plain(optimizer) -> None:
    from galore_torch.galore_projector import GaLoreProjector

    for group in optimizer.param_groups:
        for p in group["params"]:
            entry = optimizer.state.get(p, {})
            plain = entry.get("projector")
            if isinstance(plain, dict) and plain.get(_PROJECTOR_KEY):
                projector = GaLoreProjector(group["rank"], update_proj_gap=group["update_proj_gap"], scale=group["scale"],
                                            proj_type=group["proj_type"])
                projector.ortho_matrix = plain["ortho_matrix"]
                entry["projector"] = projector


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of an optimizer's tensor state (moments; GaLore's projection matrices included)."""
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            tensors = [value] if torch.is_tensor(value) else [v for v in vars(value).values() if torch.is_tensor(v)] \
                if hasattr(value, "__dict__") else []
            total += sum(t.numel() * t.element_size() for t in tensors)
    return total
