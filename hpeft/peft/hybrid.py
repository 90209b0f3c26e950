"""Named hybrids: composite specs that expand into plain method specs (see MethodSpec.expand), and the
helpers they use (layer groups, per-layer rank allocation).

  UniPELT (Mao et al. 2022)    gated LoRA on Q and V + gated prefix + gated sequential adapter
  MAM (He et al. 2022)         prefix tuning + scaled parallel adapter beside the FFN
  LoRAAdapter (seed 003)       LoRA on attention projections + adapters on the FFN, optionally shared
                               across layers, optionally a rank per layer from importance scores
  S4 (Chen et al. 2023)        layers split into groups (spindle: the middle groups larger), each group
                               its own set of methods
Prompt+LoRA needs no composite: `apply(model, [Prompt(...), LoRA(...)])`.
"""

from __future__ import annotations

from torch import nn

from hpeft.peft.adapter import Adapter
from hpeft.peft.bitfit import BitFit
from hpeft.peft.core import MethodSpec, count_layers, spec_from_config
from hpeft.peft.lora import LoRA
from hpeft.peft.prefix import Prefix


class Composite(MethodSpec):
    """A spec that stands for several plain specs; it never wraps a module itself."""

    def __init__(self, layers: list[int] | None = None):
        self.targets, self.layers = [], None if layers is None else sorted(int(i) for i in layers)

    def expand(self, model: nn.Module) -> list[MethodSpec]:
        raise NotImplementedError


class UniPELT(Composite):
    """UniPELT: LoRA, prefix tuning and an adapter, each scaled by a learned gate of its layer input."""

    name = "unipelt"

    def __init__(
        self,
        lora_rank: int = 8,
        lora_targets: list[str] = ["role:q", "role:v"],  # noqa: B006 - shown in --help
        prefix_length: int = 10,
        prefix_targets: list[str] = ["k", "v"],  # noqa: B006
        adapter_size: int | None = None,
        adapter_reduction_factor: float = 16,
        adapter_targets: list[str | dict] = ["role:ffn"],  # noqa: B006
        layers: list[int] | None = None,
    ):
        """
        Args:
            lora_rank: rank of the gated LoRA.
            lora_targets: LoRA's linear layers (Q and V in the paper; roles resolve per family, see
                hpeft.peft.placement).
            prefix_length: length of the gated prefix.
            prefix_targets: key and value projections (on transformers models the prefix goes through the
                attention's cache instead, see hpeft.peft.prefix).
            adapter_size: bottleneck width of the gated sequential adapter (default: width / reduction factor).
            adapter_reduction_factor: width / bottleneck, when adapter_size is not given.
            adapter_targets: where the adapter goes: after the FFN output ("role:ffn", see hpeft.peft.placement).
            layers: only these layer indices.
        """
        super().__init__(layers)
        self.lora_rank, self.lora_targets = lora_rank, list(lora_targets)
        self.prefix_length, self.prefix_targets = prefix_length, list(prefix_targets)
        self.adapter_size, self.adapter_reduction_factor = adapter_size, adapter_reduction_factor
        self.adapter_targets = list(adapter_targets)
        self.expand(None)  # validate the parts now, before any model is built

    def expand(self, model: nn.Module | None) -> list[MethodSpec]:
        return [
            LoRA(rank=self.lora_rank, targets=self.lora_targets, gated=True, layers=self.layers),
            Prefix(length=self.prefix_length, targets=self.prefix_targets, gated=True, layers=self.layers),
            Adapter(kind="pfeiffer", size=self.adapter_size, reduction_factor=self.adapter_reduction_factor,
                    targets=self.adapter_targets, gated=True, layers=self.layers),
        ]


class MAM(Composite):
    """MAM adapter: prefix tuning on attention plus a scaled parallel adapter beside the FFN."""

    name = "mam"

    def __init__(
        self,
        prefix_length: int = 30,
        prefix_targets: list[str] = ["k", "v"],  # noqa: B006
        prefix_reparam_hidden: int = 0,
        adapter_size: int | None = None,
        adapter_reduction_factor: float = 4,
        adapter_scale: float = 4.0,
        adapter_targets: list[str | dict] = ["role:ffn"],  # noqa: B006
        layers: list[int] | None = None,
    ):
        """
        Args:
            prefix_length: prefix length per attention layer (30 in the paper).
            prefix_targets: key and value projections.
            prefix_reparam_hidden: width of the prefix's reparameterisation MLP while training (0: none).
            adapter_size: parallel adapter bottleneck (default: width / reduction factor).
            adapter_reduction_factor: width / bottleneck, when adapter_size is not given.
            adapter_scale: scale s of the parallel adapter's branch (4 in the paper).
            adapter_targets: the FFN the adapter sits beside: "role:ffn", the FFN module or the span from the FFN input
                linear's input to its output linear's output (BART: fc1->fc2), per family (see hpeft.peft.placement).
            layers: only these layer indices.
        """
        super().__init__(layers)
        self.prefix_length, self.prefix_targets, self.prefix_reparam_hidden = prefix_length, list(prefix_targets), prefix_reparam_hidden
        self.adapter_size, self.adapter_reduction_factor, self.adapter_scale = adapter_size, adapter_reduction_factor, adapter_scale
        self.adapter_targets = list(adapter_targets)
        self.expand(None)

    def expand(self, model: nn.Module | None) -> list[MethodSpec]:
        return [
            Prefix(length=self.prefix_length, targets=self.prefix_targets, reparam_hidden=self.prefix_reparam_hidden,
                   layers=self.layers),
            Adapter(kind="scaled_parallel", size=self.adapter_size, reduction_factor=self.adapter_reduction_factor,
                    scale=self.adapter_scale, targets=self.adapter_targets, layers=self.layers),
        ]


class LoRAAdapter(Composite):
    """LoRA on the attention projections and bottleneck adapters on the FFN (seed 003)."""

    name = "lora_adapter"

    def __init__(
        self,
        lora_rank: int = 8,
        lora_targets: list[str] = ["q", "k", "v", "o"],  # noqa: B006
        layer_ranks: dict[int, int] | None = None,
        adapter_kind: str = "pfeiffer",
        adapter_size: int | None = None,
        adapter_reduction_factor: float = 16,
        adapter_targets: list[str | dict] | None = None,
        share_adapters: bool = False,
        layers: list[int] | None = None,
    ):
        """
        Args:
            lora_rank: LoRA rank (for layers not in layer_ranks).
            lora_targets: attention projections LoRA adapts.
            layer_ranks: rank per layer index (see allocate_ranks).
            adapter_kind: adapter placement (pfeiffer: after the FFN; parallel: beside it; ...).
            adapter_size: bottleneck width (default: width / reduction factor).
            adapter_reduction_factor: width / bottleneck, when adapter_size is not given.
            adapter_targets: where adapters go; defaults to the kind's places.
            share_adapters: one adapter shared by all layers (cross-layer parameter sharing).
            layers: only these layer indices.
        """
        super().__init__(layers)
        self.lora_rank, self.lora_targets, self.layer_ranks = lora_rank, list(lora_targets), layer_ranks
        self.adapter_kind, self.adapter_size, self.adapter_reduction_factor = adapter_kind, adapter_size, adapter_reduction_factor
        self.adapter_targets, self.share_adapters = adapter_targets, share_adapters
        self.expand(None)

    def expand(self, model: nn.Module | None) -> list[MethodSpec]:
        return [
            LoRA(rank=self.lora_rank, targets=self.lora_targets, layer_ranks=self.layer_ranks, layers=self.layers),
            Adapter(kind=self.adapter_kind, size=self.adapter_size, reduction_factor=self.adapter_reduction_factor,
                    targets=self.adapter_targets, shared=self.share_adapters, layers=self.layers),
        ]


GROUP_PATTERNS = ("spindle", "uniform")


def layer_groups(num_layers: int, num_groups: int = 4, pattern: str = "spindle") -> list[list[int]]:
    """Consecutive layer indices split into groups. "spindle" sizes grow towards the middle (weights
    1, 2, ..., 2, 1: 24 layers in 4 groups give 4, 8, 8, 4, as in S4); "uniform" splits evenly."""
    if pattern not in GROUP_PATTERNS:
        raise ValueError(f"layer group pattern={pattern!r}; valid patterns: {list(GROUP_PATTERNS)}")
    if num_groups < 1 or num_layers < num_groups:
        raise ValueError(f"cannot split {num_layers} layers into {num_groups} groups; need at least one layer per group")
    weights = [min(i + 1, num_groups - i) if pattern == "spindle" else 1 for i in range(num_groups)]
    exact = [num_layers * w / sum(weights) for w in weights]
    sizes = [int(e) for e in exact]
    by_remainder = sorted(range(num_groups), key=lambda i: exact[i] - sizes[i], reverse=True)
    for g in by_remainder[: num_layers - sum(sizes)]:
        sizes[g] += 1
    for g in range(num_groups):  # every group gets a layer, taken from the largest group
        if sizes[g] == 0:
            sizes[sizes.index(max(sizes))] -= 1
            sizes[g] = 1
    groups, start = [], 0
    for size in sizes:
        groups.append(list(range(start, start + size)))
        start += size
    return groups


def allocate_ranks(scores: dict[int, float], min_rank: int, max_rank: int) -> dict[int, int]:
    """A LoRA rank per layer, linear in its importance score: the least important layer gets min_rank,
    the most important max_rank (all get the midpoint when the scores are equal)."""
    if not 1 <= min_rank <= max_rank:
        raise ValueError(f"rank range min_rank={min_rank}, max_rank={max_rank} must satisfy 1 <= min_rank <= max_rank")
    if not scores:
        raise ValueError("allocate_ranks needs at least one layer's importance score")
    lo, hi = min(scores.values()), max(scores.values())
    if hi == lo:
        return {layer: round((min_rank + max_rank) / 2) for layer in scores}
    return {layer: round(min_rank + (s - lo) / (hi - lo) * (max_rank - min_rank)) for layer, s in scores.items()}


class S4(Composite):
    """S4 design space: the layers split into groups (spindle by default), each group its own methods."""

    name = "s4"

    def __init__(
        self,
        groups: list[list[MethodSpec]] | None = None,
        pattern: str = "spindle",
    ):
        """
        Args:
            groups: one list of method specs per layer group (from first to last layer). Defaults to
                S4's: adapter+LoRA, adapter+prefix, adapter+prefix+BitFit, prefix+BitFit+LoRA.
            pattern: spindle (middle groups larger) or uniform.
        """
        if pattern not in GROUP_PATTERNS:
            raise ValueError(f"S4 pattern={pattern!r}; valid patterns: {list(GROUP_PATTERNS)}")
        super().__init__(None)
        if groups is None:
            adapter, lora, prefix, bitfit = Adapter(kind="pfeiffer"), LoRA(rank=8, targets=["q", "v"]), Prefix(length=10), BitFit()
            groups = [[adapter, lora], [adapter, prefix], [adapter, prefix, bitfit], [prefix, bitfit, lora]]
        groups = [[spec_from_config(s) if isinstance(s, dict) else s for s in g] for g in groups]
        if not groups or any(not g for g in groups):
            raise ValueError("S4 groups must be a non-empty list of non-empty method lists")
        for spec in (s for g in groups for s in g):
            if "layers" not in spec.config():
                raise ValueError(f"{spec.name} cannot be limited to a layer group (it has no `layers` option); "
                                 f"apply it beside the S4 spec instead")
        self.groups, self.pattern = groups, pattern

    def config(self) -> dict:
        return {"name": self.name, "groups": [[s.config() for s in g] for g in self.groups], "pattern": self.pattern}

    def expand(self, model: nn.Module) -> list[MethodSpec]:
        layer_sets = layer_groups(count_layers(model), len(self.groups), self.pattern)
        return [spec_from_config({**spec.config(), "layers": layers}) for specs, layers in zip(self.groups, layer_sets) for spec in specs]
