"""ChannelTransformer: a pre-norm transformer encoder that maps pilot observations on an OFDM grid
to the channel on the whole grid.

The grid (symbols x subcarriers) is cut into `tokens` rectangular patches; each patch's real and
imaginary parts become one token. Module names are short and stable because PEFT targets them by
pattern: `embed` (token embeddings, where prompts go), `blocks.{i}.attn.{q,k,v,o}` and `blocks.{i}.ffn.{0,2}`
(ffn.0 is the seed's "FFN linear1"); `blocks.{i}.attn` and `blocks.{i}.ffn` are the blocks adapters wrap.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hpeft.models.backbone import BackboneConfig


def token_patch(grid_shape: tuple[int, int], tokens: int) -> tuple[int, int]:
    """Patch (symbols, subcarriers) that cuts `grid_shape` into exactly `tokens` patches.

    Patches spanning all symbols of a few subcarriers are preferred: each token then holds every
    DMRS symbol of its subcarriers, which keeps the pilots of a token together.
    """
    symbols, subcarriers = grid_shape
    options = valid_token_counts(grid_shape)
    if tokens not in options:
        raise ValueError(
            f"tokens={tokens} does not fit the {symbols}x{subcarriers} grid (symbols x subcarriers); "
            f"valid token counts for this grid: {sorted(options)}"
        )
    return options[tokens]


def valid_token_counts(grid_shape: tuple[int, int]) -> dict[int, tuple[int, int]]:
    """Every token count the grid can be cut into, each with its patch (largest symbol extent first)."""
    symbols, subcarriers = grid_shape
    options: dict[int, tuple[int, int]] = {}
    for ps in sorted((d for d in range(1, symbols + 1) if symbols % d == 0), reverse=True):
        for pf in (d for d in range(1, subcarriers + 1) if subcarriers % d == 0):
            options.setdefault((symbols // ps) * (subcarriers // pf), (ps, pf))
    return options


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q, k, v, o projections so each can be targeted."""

    def __init__(self, d_model: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.o = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        split = lambda y: y.view(b, -1, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.o(y.transpose(1, 2).reshape(b, -1, d))


class TokenEmbedding(nn.Module):
    """Patch vectors -> token embeddings with learned positions. A module of its own (with
    `embedding_dim`) so that prompt tuning can target it by name and put tokens in front of its output."""

    def __init__(self, patch_features: int, d_model: int, tokens: int):
        super().__init__()
        self.embedding_dim = d_model
        self.proj = nn.Linear(patch_features, d_model)
        self.pos = nn.Parameter(torch.randn(tokens, d_model) * 0.02)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.proj(patches) + self.pos


class Block(nn.Module):
    def __init__(self, d_model: int, heads: int, d_ff: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, heads, dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.drop(self.ffn(self.norm2(x)))


class ChannelTransformer(nn.Module):
    """Transformer channel estimator: [B, in_channels, S, F] pilots -> [B, out_channels, S, F] channel."""

    def __init__(
        self,
        grid_shape: tuple[int, int],
        tokens: int,
        d_model: int,
        layers: int,
        heads: int,
        d_ff: int,
        dropout: float = 0.0,
        in_channels: int = 2,
        out_channels: int = 2,
    ):
        super().__init__()
        self.grid_shape = tuple(grid_shape)
        self.patch = token_patch(self.grid_shape, tokens)
        self.tokens = tokens
        self.in_channels, self.out_channels = in_channels, out_channels
        ps, pf = self.patch
        self.embed = TokenEmbedding(in_channels * ps * pf, d_model, tokens)
        self.blocks = nn.ModuleList(Block(d_model, heads, d_ff, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, out_channels * ps * pf)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        b, c, s, f = x.shape
        ps, pf = self.patch
        x = x.reshape(b, c, s // ps, ps, f // pf, pf).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, self.tokens, c * ps * pf)

    def unpatchify(self, t: torch.Tensor) -> torch.Tensor:
        b = t.shape[0]
        (s, f), (ps, pf) = self.grid_shape, self.patch
        t = t.reshape(b, s // ps, f // pf, self.out_channels, ps, pf).permute(0, 3, 1, 4, 2, 5)
        return t.reshape(b, self.out_channels, s, f)

    def embed_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Grid -> token embeddings [B, tokens, d_model]; prompt-style methods hook in after this."""
        return self.embed(self.patchify(x))

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            h = block(h)
        return self.norm(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encode(self.embed_tokens(x))
        # Tokens added in front of the grid's tokens (soft prompts) carry no grid position: drop them.
        return self.unpatchify(self.head(h[:, -self.tokens :]))


class ChannelTransformerConfig(BackboneConfig):
    """ChannelTransformer hyperparameters; the grid shape comes from the data at build time."""

    def __init__(
        self,
        tokens: int = 18,
        d_model: int = 64,
        layers: int = 2,
        heads: int = 4,
        d_ff: int = 128,
        dropout: float = 0.0,
    ):
        """
        Args:
            tokens: number of grid patches (tokens); must cut the grid evenly.
            d_model: token embedding width.
            layers: number of transformer blocks.
            heads: attention heads; must divide d_model.
            d_ff: hidden width of each block's feed-forward network.
            dropout: dropout inside blocks and attention while training.
        """
        for name, value in (("tokens", tokens), ("d_model", d_model), ("layers", layers), ("heads", heads), ("d_ff", d_ff)):
            if value < 1:
                raise ValueError(f"ChannelTransformer {name}={value} must be a positive integer")
        if d_model % heads:
            divisors = [h for h in range(1, d_model + 1) if d_model % h == 0]
            raise ValueError(f"heads={heads} does not divide d_model={d_model}; valid heads for d_model={d_model}: {divisors}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout} must be in [0, 1)")
        self.tokens, self.d_model, self.layers, self.heads, self.d_ff, self.dropout = tokens, d_model, layers, heads, d_ff, dropout

    def check(self, grid_shape: tuple[int, int]) -> None:
        token_patch(grid_shape, self.tokens)

    def build(self, grid_shape: tuple[int, int], in_channels: int = 2, out_channels: int = 2) -> ChannelTransformer:
        return ChannelTransformer(grid_shape, in_channels=in_channels, out_channels=out_channels, **self.as_dict())
