"""Bottleneck adapters: a small down-projection, a non-linearity and an up-projection placed at a module.

  sequential (Houlsby et al. 2019; Pfeiffer et al. 2021):  y = h + s * up(act(down(h))),  h = module(x)
  parallel   (He et al. 2022, "Towards a unified view"):   y = h + s * up(act(down(x)))
Houlsby puts sequential adapters after the attention output projection and after the FFN's output,
Pfeiffer after the FFN only; the (scaled) parallel adapter sits beside the FFN, from the FFN input linear's
input to its output linear's output, with scale s = 4 for MAM's. The defaults are the roles "role:attn" and
"role:ffn" (placement.py), which put them there on every mapped family: a module where the sublayer is one
(GPT-2's `mlp`), else a span (BART's fc1->fc2). On a span a sequential adapter goes after the `to` module's
output and a parallel one reads the `from` module's input (see span.py). The up-projection starts at zero,
so every adapter starts as the identity. A target may be a linear layer or a whole block (`attn`, `ffn`):
the adapter's widths are read from the block's first and last linear layers.

`shared`: all layers of equal widths use one bottleneck (cross-layer sharing, seed 003).
`gated`: the branch is scaled by a learned gate of its input (UniPELT).
The projections are made by `make_projection`, which Compacter and SparseAdapter replace."""

from __future__ import annotations

import torch
from torch import nn

from hpeft.peft.core import (LinearLike, MethodSpec, PeftLayer, PlacementError, first_tensor, linear_dims, raw_module,
                             weight_options)
from hpeft.peft.gating import Gate

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh, "identity": nn.Identity}
KINDS = {  # kind -> (placement, default targets (roles, see placement.py), default scale)
    "houlsby": ("sequential", ["role:attn", "role:ffn"], 1.0),
    "pfeiffer": ("sequential", ["role:ffn"], 1.0),
    "parallel": ("parallel", ["role:ffn"], 1.0),
    "scaled_parallel": ("parallel", ["role:ffn"], 4.0),
}


def block_dims(module: nn.Module, module_name: str) -> tuple[int, int]:
    """(input width, output width) of a linear layer, or of a block from its first and last linear layers."""
    module = raw_module(module)
    if isinstance(module, LinearLike):
        return linear_dims(module)
    linears = [m for m in module.modules() if isinstance(m, LinearLike)]
    if not linears:
        raise ValueError(f"adapter target {module_name} ({type(module).__name__}) has no linear layer to read its "
                         f"widths from; target a linear layer or a block that contains one")
    return linear_dims(linears[0])[0], linear_dims(linears[-1])[1]


class Bottleneck(nn.Module):
    def __init__(self, down: nn.Module, up: nn.Module, activation: str):
        super().__init__()
        self.down, self.act, self.up = down, ACTIVATIONS[activation](), up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x)))


class AdapterLayer(PeftLayer):
    method = "adapter"
    level = 1

    def __init__(self, base_layer: nn.Module, bottleneck: Bottleneck, placement: str, scale: float, gate: Gate | None,
                 source: PeftLayer | None = None):
        super().__init__()
        self.base_layer, self.bottleneck, self.placement, self.scale, self.gate = base_layer, bottleneck, placement, scale, gate
        # A span's SpanInput (on its `from` module), whose kept input a parallel branch reads. Kept out of the
        # module tree (it is registered where it sits), so its base is neither listed nor saved twice.
        self.__dict__["source"] = source

    def forward(self, *args, **kwargs):
        out = self.base_layer(*args, **kwargs)
        # Blocks of transformers models return tuples (hidden states first).
        h = out[0] if isinstance(out, tuple) else out
        if self.placement == "sequential":
            x = h
        else:
            x = self.source.take() if self.source is not None else first_tensor(args, kwargs)
        branch = self.scale * self.bottleneck(x)
        if self.gate is not None:
            branch = self.gate(x) * branch
        h = h + branch
        return (h, *out[1:]) if isinstance(out, tuple) else h

    def extra_repr(self) -> str:
        source = f", input from {self.source.source_name}" if self.source is not None else ""
        return f"placement={self.placement}, scale={self.scale:g}{source}"


class Adapter(MethodSpec):
    """Bottleneck adapters: Houlsby, Pfeiffer, parallel or scaled parallel."""

    name = "adapter"
    level = 1
    spans = True
    layer_class: type[AdapterLayer] = AdapterLayer

    def __init__(
        self,
        kind: str = "houlsby",
        size: int | None = None,
        reduction_factor: float = 16,
        activation: str = "relu",
        scale: float | None = None,
        targets: list[str | dict] | None = None,
        zero_init: bool = True,
        shared: bool = False,
        gated: bool = False,
        layers: list[int] | None = None,
    ):
        """
        Args:
            kind: houlsby (after attention and FFN), pfeiffer (after FFN), parallel or scaled_parallel (beside FFN).
            size: bottleneck width; defaults to the module's output width / reduction_factor.
            reduction_factor: output width / bottleneck width, when size is not given.
            activation: non-linearity between the projections.
            scale: branch scale s; defaults to 4 for scaled_parallel, else 1.
            targets: module-name patterns, roles ("role:attn", "role:ffn") or spans ({from: fc1, to: fc2}, also "fc1->fc2");
                defaults to the kind's places (["role:attn", "role:ffn"] or ["role:ffn"]).
            zero_init: start the up-projection at zero (the adapter starts as the identity).
            shared: layers with the same widths share one bottleneck (cross-layer parameter sharing).
            gated: scale the branch by a learned gate sigma(W x) (UniPELT).
            layers: only modules of these layer indices.
        """
        if kind not in KINDS:
            raise ValueError(f"adapter kind={kind!r}; valid kinds: {sorted(KINDS)}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"adapter activation={activation!r}; valid activations: {sorted(ACTIVATIONS)}")
        if size is not None and size < 1:
            raise ValueError(f"adapter size={size} must be a positive integer")
        if reduction_factor <= 0:
            raise ValueError(f"adapter reduction_factor={reduction_factor} must be positive")
        if scale is not None and not scale > 0:  # a negative scale is a sign flip the up-projection can learn
            raise ValueError(f"adapter scale={scale} must be positive (He et al.'s scaled parallel adapter uses 4)")
        placement, default_targets, default_scale = KINDS[kind]
        super().__init__(default_targets if targets is None else targets, layers)
        self.kind, self.size, self.reduction_factor, self.activation = kind, size, reduction_factor, activation
        self.scale = default_scale if scale is None else float(scale)
        self.placement, self.zero_init, self.shared, self.gated = placement, zero_init, shared, gated
        self._shared: dict[tuple[int, int, int], Bottleneck] = {}

    def config(self) -> dict:
        config = super().config()
        config["targets"] = self.targets  # the resolved default, so a reload targets the same modules
        return config

    def start_apply(self) -> None:
        self._shared = {}

    def bottleneck_size(self, out_features: int) -> int:
        return self.size if self.size is not None else max(1, round(out_features / self.reduction_factor))

    def span_input(self) -> bool:
        return self.placement == "parallel"  # a sequential adapter reads only the `to` module's output

    def check(self, module: nn.Module, module_name: str) -> None:
        in_features, out_features = block_dims(module, module_name)
        if self.placement == "parallel" and in_features != out_features:
            raise PlacementError(f"a parallel adapter adds a branch of {module_name}'s input to its output, but {module_name} "
                                 f"maps {in_features} -> {out_features} features; target a sublayer whose input and output "
                                 f"widths match (a module, or a span from the sublayer's input linear to its output linear)")

    def check_span(self, source: nn.Module, source_name: str, module: nn.Module, module_name: str) -> None:
        in_features, out_features = block_dims(source, source_name)[0], block_dims(module, module_name)[1]
        if in_features != out_features:
            raise PlacementError(f"a parallel adapter on the span {source_name} -> {module_name} adds a branch of "
                                 f"{source_name}'s input ({in_features} features) to {module_name}'s output ({out_features}); "
                                 f"a span must start and end at equal widths, as a sublayer does")

    def make_projection(self, in_features: int, out_features: int, up: bool, module_name: str) -> nn.Module:
        proj = nn.Linear(in_features, out_features)
        if up and self.zero_init:
            nn.init.zeros_(proj.weight)
            nn.init.zeros_(proj.bias)
        return proj

    def wrap(self, module: nn.Module, module_name: str) -> AdapterLayer:
        in_features, out_features = block_dims(module, module_name)
        return self._layer(module, module_name, in_features, out_features, None)

    def wrap_span(self, module: nn.Module, module_name: str, source: PeftLayer) -> AdapterLayer:
        in_features = block_dims(source, source.source_name)[0]
        return self._layer(module, module_name, in_features, block_dims(module, module_name)[1], source)

    def _layer(self, module: nn.Module, module_name: str, in_features: int, out_features: int,
               source: PeftLayer | None) -> AdapterLayer:
        x_features = out_features if self.placement == "sequential" else in_features
        m = self.bottleneck_size(out_features)
        key = (x_features, m, out_features)
        bottleneck = self._shared.get(key) if self.shared else None
        if bottleneck is None:
            bottleneck = Bottleneck(
                self.make_projection(x_features, m, False, module_name),
                self.make_projection(m, out_features, True, module_name),
                self.activation,
            )
            if self.shared:
                self._shared[key] = bottleneck
        gate = Gate(x_features) if self.gated else None
        bottleneck.to(**weight_options(module))
        if gate is not None:
            gate.to(**weight_options(module))
        return self.layer_class(module, bottleneck, self.placement, self.scale, gate, source)

    @staticmethod
    def parameter_count(x_features: int, out_features: int, size: int) -> int:
        """Parameters of one adapter: down (x -> size, with bias) and up (size -> out, with bias)."""
        return x_features * size + size + size * out_features + out_features
