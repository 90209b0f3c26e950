"""Pillar 1, the variable-aware scan: the order in which a Mamba scans its tokens follows the input's variables.

A scan is causal along its order, so the order decides which tokens a token's state has seen. Text has
one variable (position), so its orders are "forward" and, for a bidirectional (non-causal) model, also
"reverse". A 2-D input, such as the channel grid of symbols (time) x subcarriers (frequency) cut into a grid
of patch tokens, can be scanned along either variable:

    forward          the tokens' own order: row-major over (symbol, subcarrier) patches, the same as "time"
    reverse          forward backwards
    time             symbol-major: every subcarrier of symbol 0, then of symbol 1, ...: the scan advances in
                     time as a receiver sees OFDM symbols arrive
    frequency        subcarrier-major: every symbol of subcarrier 0, then of subcarrier 1, ...
    snake            "time" as a boustrophedon: odd symbols run their subcarriers backwards, so consecutive
                     tokens are always grid neighbours (no jump from the last subcarrier to the first)
    snake_frequency  "frequency" as a boustrophedon

Several directions joined by "+" (e.g. "time+frequency", "snake+snake_frequency") are scanned separately and
fused (mean or sum) in every layer; "bidirectional" is "forward+reverse". The directions share the layer's
weights (each direction's tokens are stacked along the batch and go through the same mixer), so the number of
parameters does not change with the order, only compute does (x directions).

An order is a permutation `p` of the token positions: the scan sees x[p], and y[inverse(p)] puts its outputs
back in place. Tokens in front of the grid's tokens (soft prompts) are not permuted: they stay first, so every
direction starts from them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

ORDERS_1D = ("forward", "reverse")
ORDERS_2D = ("forward", "reverse", "time", "frequency", "snake", "snake_frequency")
ALIASES = {"bidirectional": "forward+reverse"}
FUSES = ("mean", "sum")


def valid_orders(grid: tuple[int, int] | None) -> list[str]:
    """The single-direction orders of a 1-D (grid None) or 2-D input, and the aliases."""
    return [*(ORDERS_1D if grid is None else ORDERS_2D), *ALIASES]


def parse_order(order: str, grid: tuple[int, int] | None = None) -> list[str]:
    """The directions of `order` for a 1-D input (grid None) or a grid of tokens; ValueError if it does not fit."""
    names = ALIASES.get(order, order).split("+")
    allowed = ORDERS_1D if grid is None else ORDERS_2D
    shape = "1-D sequence" if grid is None else f"{grid[0]}x{grid[1]} token grid"
    wrong = [n for n in names if n not in allowed]
    if wrong or len(set(names)) != len(names):
        why = f"{wrong[0]!r} is not an order of a {shape}" if wrong else "it names a direction twice"
        raise ValueError(f"scan_order={order!r} does not fit the input ({why}); valid orders for a {shape}: "
                         f"{valid_orders(grid)}, or several joined by '+' (e.g. "
                         f"{'forward+reverse' if grid is None else 'time+frequency'})")
    return names


def permutation(direction: str, grid: tuple[int, int]) -> Tensor:
    """Token positions in scan order: p[i] is the row-major position of the i-th token scanned."""
    rows, cols = grid
    index = torch.arange(rows * cols).view(rows, cols)
    if direction in ("forward", "time"):
        return index.flatten()
    if direction == "reverse":
        return index.flatten().flip(0)
    if direction == "frequency":
        return index.t().flatten()
    if direction == "snake":
        index[1::2] = index[1::2].flip(1)
        return index.flatten()
    if direction == "snake_frequency":
        index = index.t().contiguous()
        index[1::2] = index[1::2].flip(1)
        return index.flatten()
    raise ValueError(f"unknown scan direction {direction!r}; valid: {list(ORDERS_2D)}")


def inverse(p: Tensor) -> Tensor:
    out = torch.empty_like(p)
    out[p] = torch.arange(p.numel(), device=p.device)
    return out


class ScanPath(nn.Module):
    """Runs a token mixer along one or several scan orders and fuses the results.

    `grid` is the token grid (rows, cols) of a 2-D input, None for a 1-D sequence (whose orders then apply to
    any length). The permutations are non-persistent buffers: they follow the model across devices but are
    not weights (the state dict stays that of the plain model)."""

    def __init__(self, order: str = "forward", grid: tuple[int, int] | None = None, fuse: str = "mean"):
        super().__init__()
        if fuse not in FUSES:
            raise ValueError(f"scan fuse={fuse!r}; valid: {list(FUSES)}")
        self.order, self.fuse, self.grid = order, fuse, None if grid is None else tuple(grid)
        self.directions = parse_order(order, self.grid)
        if self.grid is not None:
            perms = torch.stack([permutation(d, self.grid) for d in self.directions])
            self.register_buffer("perms", perms, persistent=False)
            self.register_buffer("inverses", torch.stack([inverse(p) for p in perms]), persistent=False)

    @property
    def identity(self) -> bool:
        return self.directions in (["forward"], ["time"])

    def _positions(self, k: int, length: int, inverted: bool, device: torch.device) -> Tensor | None:
        """Full-length index of direction k (prefix tokens in front stay in place); None for identity."""
        direction = self.directions[k]
        if direction in ("forward", "time"):
            return None
        if self.grid is None:
            return torch.arange(length - 1, -1, -1, device=device)  # "reverse" is its own inverse
        index = (self.inverses if inverted else self.perms)[k]
        prefix = length - index.numel()
        if prefix < 0:
            raise ValueError(f"{length} tokens do not hold the {self.grid[0]}x{self.grid[1]} token grid of scan "
                             f"order {self.order!r}")
        if prefix == 0:
            return index
        return torch.cat([torch.arange(prefix, device=index.device), index + prefix])

    def forward(self, mixer: nn.Module, x: Tensor) -> Tensor:
        """mixer applied along every direction of the order to x [B, L, d], fused, in x's token order."""
        if self.identity:
            return mixer(x)
        batch, length = x.shape[:2]
        ks = range(len(self.directions))
        index = [self._positions(k, length, False, x.device) for k in ks]
        scanned = torch.cat([x if i is None else x.index_select(1, i) for i in index])
        out = mixer(scanned).split(batch)
        back = [self._positions(k, length, True, x.device) for k in ks]
        fused = sum(y if i is None else y.index_select(1, i) for y, i in zip(out, back))
        return fused / len(self.directions) if self.fuse == "mean" else fused

    def extra_repr(self) -> str:
        return f"order={self.order!r}, grid={self.grid}, fuse={self.fuse!r}"
