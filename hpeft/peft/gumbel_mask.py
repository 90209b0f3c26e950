"""Learned channel masking (seed 002's pillar 2): a Gumbel-Sigmoid gate on each output channel of a
convolution, trained towards a target keep ratio, then made hard and cut out of the model.

The gate of channel c has one logit l_c. Its keep probability is p_c = sigmoid(l_c).
- Training: g_c = sigmoid((l_c + n) / tau), n ~ Logistic(0, 1) drawn per sample and channel. P(g_c > 1/2) =
  P(l_c + n > 0) = p_c whatever tau is; tau only sets how binary the gate is (low tau: nearly 0/1, noisier
  gradients). `straight_through` passes the 0/1 value forward and the soft gate's gradient backward.
- Evaluation: deterministic and binary. "topk" keeps exactly round(keep_ratio * C) channels, the largest
  logits; "threshold" keeps those with p_c > 1/2 (at least one).
- `mask_penalty`: per layer (mean_c p_c - keep_ratio)^2, averaged over layers. A training loss adds it, times
  a weight, so the soft gates keep about the share of channels the hard mask will keep.

Where it sits in Mamba: on `conv1d`, the mixer's depthwise convolution. A zero there is a removed inner
channel (SiLU(0) = 0: the channel feeds nothing into x_proj, its scan state stays 0, out_proj gets 0 from it),
so `harden` can slice the channel out of every mixer weight (MambaMixer.keep_channels) and the hardened
model computes exactly what the gated one computes in evaluation. A zero just before out_proj would not be:
x_proj would still read the channel.

`harden(model)` is the deployment step: it merges the mergeable methods (LoRA, IA3; keep_channels slices
plain layers only), puts each masked convolution back and has the module that holds it (duck-typed: one
with `keep_channels(index)`) drop the channels the mask removes. FLOPs and latency drop for real.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from hpeft.peft.core import MethodSpec, PeftLayer, logical_name, peft_layers, set_submodule, weight_options

HARD_RULES = ("topk", "threshold")


def kept_count(keep_ratio: float, channels: int) -> int:
    """Channels the "topk" rule keeps: round(keep_ratio * channels), half up, at least 1."""
    return max(1, min(channels, math.floor(keep_ratio * channels + 0.5)))


def check_keep_ratio(value: float, name: str = "keep_ratio") -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise ValueError(f"{name}={value!r} is not valid: the share of channels kept must be in (0, 1]")


def check_temperature(value: float, name: str = "temperature") -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0.0 or not math.isfinite(value):
        raise ValueError(f"{name}={value!r} is not valid: the Gumbel-Sigmoid temperature must be > 0 (seed grid 0.3, 0.5, 0.8)")


class GumbelSigmoidMask(PeftLayer):
    """A Conv1d whose output channels are scaled by learned Gumbel-Sigmoid gates."""

    method = "gumbel_mask"
    level = 1  # scales the output, like an adapter: outside weight-level methods

    def __init__(self, base_layer: nn.Module, keep_ratio: float, temperature: float, init_keep: float,
                 straight_through: bool, hard_rule: str):
        super().__init__()
        self.base_layer = base_layer
        channels = base_layer.out_channels
        self.keep_ratio, self.straight_through, self.hard_rule = keep_ratio, straight_through, hard_rule
        opts = weight_options(base_layer)
        # Every channel starts at keep probability init_keep: near-dense, so training starts from the base
        # model's behaviour and the penalty, not chance, decides how fast channels go.
        self.mask_logits = nn.Parameter(torch.full((channels,), math.log(init_keep / (1 - init_keep)), **opts))
        # A buffer, so checkpoints and adapter files carry the annealed value.
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        self.bypass = False  # set by `bypassed`: the gate is 1 (importance calibration on the unmasked model)

    def keep_probs(self) -> torch.Tensor:
        return torch.sigmoid(self.mask_logits)

    def kept_index(self) -> torch.Tensor:
        """Sorted indices of the channels the hard mask keeps."""
        logits = self.mask_logits.detach()
        if self.hard_rule == "topk":
            index = logits.topk(kept_count(self.keep_ratio, logits.numel())).indices
        else:
            index = (logits > 0).nonzero().flatten()
            index = logits.argmax().view(1) if index.numel() == 0 else index
        return index.sort().values

    def hard_mask(self) -> torch.Tensor:
        mask = torch.zeros_like(self.mask_logits)
        mask[self.kept_index()] = 1.0
        return mask

    def gate(self, batch: int) -> torch.Tensor:
        """[batch, channels, 1] gate values: sampled while training, the hard mask in evaluation."""
        if not self.training:
            return self.hard_mask().detach()[None, :, None]
        u = torch.rand(batch, self.mask_logits.numel(), 1, device=self.mask_logits.device, dtype=self.mask_logits.dtype)
        u = u.clamp(1e-6, 1 - 1e-6)
        soft = torch.sigmoid((self.mask_logits[None, :, None] + torch.log(u) - torch.log1p(-u)) / self.temperature)
        if not self.straight_through:
            return soft
        return (soft > 0.5).to(soft.dtype) + (soft - soft.detach())  # exactly 0/1 forward: x - x is 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.bypass:
            return y
        return y * self.gate(y.shape[0]).to(y.dtype)

    def extra_repr(self) -> str:
        return (f"keep_ratio={self.keep_ratio}, temperature={float(self.temperature):g}, hard_rule={self.hard_rule!r}, "
                f"straight_through={self.straight_through}")


class GumbelMask(MethodSpec):
    """Gumbel-Sigmoid gates on convolution output channels (Mamba: `conv1d`, the inner channels)."""

    name = "gumbel_mask"
    layer_types = (nn.Conv1d,)
    level = GumbelSigmoidMask.level

    def __init__(
        self,
        keep_ratio: float = 0.5,
        temperature: float = 0.5,
        targets: list[str] = ["conv1d"],  # noqa: B006 - shown in --help
        init_keep: float = 0.9,
        straight_through: bool = False,
        hard_rule: str = "topk",
        layers: list[int] | None = None,
    ):
        """
        Args:
            keep_ratio: share of each layer's channels the hard mask keeps, in (0, 1] (seed grid 0.3, 0.5, 0.7).
            temperature: Gumbel-Sigmoid temperature tau > 0 at the start (seed grid 0.3, 0.5, 0.8); an
                annealing callback (hpeft.train.annealing) may lower it while training.
            targets: module-name patterns of the Conv1d layers to gate.
            init_keep: every gate's keep probability at initialisation, in (0, 1).
            straight_through: forward the 0/1 gate while training, backward the soft gate's gradient.
            hard_rule: topk (exactly round(keep_ratio * channels) kept) or threshold (keep probability > 1/2).
            layers: only modules of these layer indices.
        """
        check_keep_ratio(keep_ratio)
        check_temperature(temperature)
        if isinstance(init_keep, bool) or not 0.0 < init_keep < 1.0:
            raise ValueError(f"init_keep={init_keep!r} is not valid: a keep probability in (0, 1)")
        if hard_rule not in HARD_RULES:
            raise ValueError(f"hard_rule={hard_rule!r} is not valid; valid: {list(HARD_RULES)}")
        super().__init__(targets, layers)
        self.keep_ratio, self.temperature, self.init_keep = float(keep_ratio), float(temperature), float(init_keep)
        self.straight_through, self.hard_rule = bool(straight_through), hard_rule

    def wrap(self, module: nn.Module, module_name: str) -> GumbelSigmoidMask:
        return GumbelSigmoidMask(module, self.keep_ratio, self.temperature, self.init_keep, self.straight_through,
                                 self.hard_rule)


# ----------------------------------------------------------------------------------- helpers


def mask_layers(model: nn.Module) -> list[tuple[str, GumbelSigmoidMask]]:
    return [(n, m) for n, m in peft_layers(model) if isinstance(m, GumbelSigmoidMask)]


def mask_penalty(model: nn.Module) -> torch.Tensor:
    """Mean over mask layers of (mean keep probability - the layer's keep_ratio)^2; 0 without masks."""
    layers = [m for _, m in mask_layers(model)]
    if not layers:
        return torch.zeros(())
    return torch.stack([(m.keep_probs().mean() - m.keep_ratio) ** 2 for m in layers]).mean()


def keep_probability(model: nn.Module) -> float:
    """Mean keep probability over every gated channel (what the penalty pulls towards keep_ratio)."""
    probs = [m.keep_probs().detach() for _, m in mask_layers(model)]
    return float(torch.cat(probs).mean()) if probs else float("nan")


def set_temperature(model: nn.Module, temperature: float) -> None:
    check_temperature(temperature)
    for _, m in mask_layers(model):
        m.temperature.fill_(temperature)


@contextlib.contextmanager
def bypassed(model: nn.Module):
    """Every gate open (1) inside the block: the model as if it had no masks."""
    layers = [m for _, m in mask_layers(model)]
    try:
        for m in layers:
            m.bypass = True
        yield model
    finally:
        for m in layers:
            m.bypass = False


def kept_channels(model: nn.Module) -> dict[str, list[int]]:
    """Logical name of each gated module's owner (the Mamba mixer) -> the channels its hard mask keeps."""
    return {logical_name(path).rpartition(".")[0]: m.kept_index().tolist() for path, m in mask_layers(model)}


@torch.no_grad()
def harden(model: nn.Module, kept: dict[str, list[int]] | None = None) -> dict[str, list[int]]:
    """Make the masks hard and physical, in place: merge the mergeable methods, then, for every mask layer,
    put its convolution back and let the owner module keep only the mask's channels (`kept`, by owner name,
    overrides the mask's choice: re-slicing a model to channels recorded earlier). Returns what was kept."""
    from hpeft.peft.io import merge  # io imports core only; a module-level import would be circular via __init__

    owners = sorted(logical_name(path).rpartition(".")[0] for path, _ in mask_layers(model))
    if kept is not None and sorted(kept) != owners:
        raise ValueError(f"harden: channels are recorded for {sorted(kept)[:3]}... ({len(kept)} modules) but the model's "
                         f"masks are on {owners[:3]}... ({len(owners)}); was the checkpoint made with another mask or depth?")
    merge(model)
    done: dict[str, list[int]] = {}
    for path, layer in mask_layers(model):  # merge may have moved nothing, but look again to be safe
        owner_path, _, child = path.rpartition(".")
        owner = model.get_submodule(owner_path)
        if not hasattr(owner, "keep_channels"):
            raise ValueError(f"harden: {owner_path} ({type(owner).__name__}) holds the mask on {child} but cannot remove "
                             f"channels (no keep_channels); hard masks are physical only in modules that can slice themselves")
        name = logical_name(owner_path)
        index = layer.kept_index() if kept is None else torch.as_tensor(kept[name], dtype=torch.long)
        set_submodule(model, path, layer.base_layer)
        owner.keep_channels(index)
        done[name] = index.tolist()
    model.hpeft_hardened = {**getattr(model, "hpeft_hardened", {}), **done}
    return done

