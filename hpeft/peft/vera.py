"""VeRA (Kopiczko et al. 2024, "VeRA: Vector-based Random Matrix Adaptation"): one pair of frozen random matrices
shared by all layers a spec adapts, and per layer two trained vectors:

    y = W x + b + lambda_b * (B (lambda_d * (A x)))

A is [r, in_max] and B [out_max, r], in_max and out_max the widest input and output among the spec's targets; a
narrower layer uses A's first `in` columns and B's first `out` rows (HF peft slices its shared pair the same way).
lambda_b [out] starts at zero, so the layer starts as the base, and lambda_d [r] at `d_initial`. A layer trains
r + out numbers; the rank may exceed the layer's widths (the paper uses r = 1024 on RoBERTa-base's 768-wide
layers), since A and B are fixed random directions that lambda_d selects among, not a learned factorisation.

The projections are regenerated, not saved: a CPU torch.Generator seeded with `projection_seed` draws A, then B,
Kaiming-uniform over each matrix's second dimension, as HF peft does from its `projection_prng_key` (equal seeds
give HF's very matrices). The adapter file then holds only the vectors, VeRA's point, and `load` rebuilds the
spec from its config, seed included. They are non-persistent buffers of one module that every layer of the spec
holds, so moving the model moves one copy."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hpeft.peft.core import LinearLike, MethodSpec, PeftLayer, linear_dims, raw_module, weight_options
from hpeft.peft.delta_merge import DeltaMerge

MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed's range (negative seeds wrap around; refused for clarity)


def kaiming_uniform(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """U(-bound, bound) with bound = sqrt(3) * gain / sqrt(fan_in), gain sqrt(2) (ReLU's), fan_in = shape[1].
    The bound is computed in the order HF peft computes it, so the draws match its bit for bit."""
    bound = math.sqrt(3.0) * (math.sqrt(2) / math.sqrt(shape[1]))
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


class RandomProjections(nn.Module):
    """VeRA's frozen shared pair: A [r, in_max], B [out_max, r], regenerated from `seed`."""

    def __init__(self, rank: int, in_max: int, out_max: int, seed: int):
        super().__init__()
        generator = torch.Generator(device="cpu").manual_seed(seed)
        a = kaiming_uniform((rank, in_max), generator)
        b = kaiming_uniform((out_max, rank), generator)  # drawn second: the order fixes the values
        self.register_buffer("A", a, persistent=False)
        self.register_buffer("B", b, persistent=False)


class VeRALinear(DeltaMerge, PeftLayer):
    method = "vera"
    level = 0

    def __init__(self, base_layer: nn.Module, rank: int, dropout: float, d_initial: float):
        super().__init__()
        self.base_layer = base_layer
        self.rank = rank
        self.in_features, self.out_features = linear_dims(raw_module(base_layer))
        opts = weight_options(base_layer)
        self.vera_lambda_d = nn.Parameter(torch.full((rank,), float(d_initial), **opts))
        self.vera_lambda_b = nn.Parameter(torch.zeros(self.out_features, **opts))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # Set by VeRA.after_apply once every layer of the spec is known (the pair's size is the widest layer's).
        self.projections: RandomProjections | None = None
        self.merged = False

    def projection_slices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's parts of the shared pair: A[:, :in] and B[:out, :]."""
        if self.projections is None:
            raise RuntimeError("VeRA layer has no projections yet: apply it with peft.apply, which sets them")
        return self.projections.A[:, : self.in_features], self.projections.B[: self.out_features, :]

    def delta_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """(lambda_b B) (lambda_d A), [out, in], computed in `dtype` (default: the parameters')."""
        a, b = (t.to(dtype) for t in self.projection_slices())
        return (self.vera_lambda_b.to(dtype)[:, None] * b) @ (self.vera_lambda_d.to(dtype)[:, None] * a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.merged:
            return y
        a, b = self.projection_slices()
        h = self.vera_lambda_d * F.linear(self.dropout(x), a)
        return y + self.vera_lambda_b * F.linear(h, b)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, merged={self.merged}"


class VeRA(MethodSpec):
    """Vector-based random matrix adaptation: shared frozen random A, B and two trained vectors per layer."""

    name = "vera"
    layer_types = (LinearLike,)
    level = 0

    def __init__(
        self,
        rank: int = 256,
        targets: list[str] = ["q", "v"],  # noqa: B006 - jsonargparse shows this default in --help
        dropout: float = 0.0,
        d_initial: float = 0.1,
        projection_seed: int = 0,
        layers: list[int] | None = None,
    ):
        """
        Args:
            rank: rows of the shared random A (columns of B); may exceed the layers' widths.
            targets: module-name patterns of the linear layers to adapt (see hpeft.peft.core).
            dropout: dropout on the branch's input while training.
            d_initial: starting value of every lambda_d (the paper recommends <= 0.1).
            projection_seed: seed the shared A and B are drawn from (HF peft's projection_prng_key); saved in
                the adapter's config, so `load` regenerates the same matrices.
            layers: adapt only modules of these layer indices.
        """
        if rank < 1:
            raise ValueError(f"VeRA rank={rank} must be a positive integer (valid ranks: 1 and up)")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"VeRA dropout={dropout} must be in [0, 1)")
        # lambda_b starts at zero: with lambda_d zero too both gradients are zero and training never starts; a
        # negative start is a sign flip lambda_b learns anyway.
        if not 0.0 < d_initial < math.inf:
            raise ValueError(f"VeRA d_initial={d_initial} must be positive and finite (the paper uses <= 0.1)")
        if not 0 <= projection_seed <= MAX_SEED:
            raise ValueError(f"VeRA projection_seed={projection_seed} must be in [0, 2**64 - 1]")
        super().__init__(targets, layers)
        self.rank, self.dropout, self.d_initial, self.projection_seed = rank, dropout, d_initial, projection_seed

    def wrap(self, module: nn.Module, module_name: str) -> VeRALinear:
        return VeRALinear(module, self.rank, self.dropout, self.d_initial)

    def after_apply(self, model: nn.Module, layers: list[tuple[str, PeftLayer]]) -> None:
        """Draw the shared pair at the widest target's size and hand it to every layer of this spec."""
        dims = [(layer.in_features, layer.out_features) for _, layer in layers]
        projections = RandomProjections(self.rank, max(i for i, _ in dims), max(o for _, o in dims), self.projection_seed)
        projections.to(**weight_options(layers[0][1].base_layer))
        for _, layer in layers:
            layer.projections = projections

    @staticmethod
    def parameter_count(in_features: int, out_features: int, rank: int) -> int:
        """Trainable parameters VeRA adds to one in x out linear layer: lambda_d [r] and lambda_b [out]."""
        return rank + out_features
