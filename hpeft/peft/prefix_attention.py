"""Prefix tuning on encoder self-attention of transformers models: the encoder of a sequence-to-sequence model
(T5, BART; Li & Liang's encoder-decoder form, z = [PREFIX; x], which HF peft leaves out, prefixing the decoder
only) and every layer of an encoder-only model (BERT, RoBERTa; UniPELT's setting).

An encoder stack takes no cache (T5's drops it, BART's has no argument for it), so the cache route of
prefix_cache.py cannot reach it. Each encoder self-attention module does take one, though, and reads keys
and values through it: `PrefixEncoderLayer` wraps the module and hands it, per call, a one-layer cache that
already holds this layer's prefix, and widens the attention mask by the prefix (those positions are never
masked). No library object does just that (a transformers DynamicCache needs every layer's index and keeps
what it is given across calls), hence the small `_PrefixOnlyCache` below. T5 computes its relative
position bias in the first layer from the key length, so every encoder layer gets a prefix of one length.

`Prefix(encoder=True)` on a sequence-to-sequence model adds this beside the decoder's cache-route prefix;
`Prefix` on an encoder-only model is this alone. `gated` (UniPELT) scales each attention's prefix by a gate
of that attention's input, pooled over the sequence."""

from __future__ import annotations

import inspect

import torch
from torch import nn

from hpeft.peft.core import MethodSpec, PeftLayer, TransparentLayer, positions, raw_module, weight_options
from hpeft.peft.gating import Gate
from hpeft.peft.prefix_cache import _bound, decoder_stack, transformers_model


class _PrefixOnlyCache:
    """The part of the transformers Cache interface an attention module calls, for one layer and one call:
    `update` puts the prefix in front of the keys and values the module computed."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        self.keys, self.values = keys, values

    def get_seq_length(self, layer_idx: int | None = 0) -> int:
        return self.keys.shape[-2]

    def update(self, key_states, value_states, layer_idx=None, *args, **kwargs):
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


def attention_dims(module: nn.Module) -> tuple[int, int]:
    """(heads, head width) of a T5, BART or BERT-style self-attention module."""
    heads = next((getattr(module, n) for n in ("n_heads", "num_heads", "num_attention_heads") if getattr(module, n, None)), None)
    head_dim = next((getattr(module, n) for n in ("key_value_proj_dim", "head_dim", "attention_head_size")
                     if getattr(module, n, None)), None)
    if not heads or not head_dim:
        raise ValueError(f"{type(module).__name__} does not say its heads and head width (n_heads/num_heads/num_attention_heads "
                         f"and key_value_proj_dim/head_dim/attention_head_size); the encoder prefix supports T5, BART and "
                         f"BERT-style attention")
    return int(heads), int(head_dim)


KEY_VALUE_NAMES = ({"k", "v"}, {"k_proj", "v_proj"}, {"key", "value"})  # T5, BART, BERT/RoBERTa


def encoder_attention_paths(model: nn.Module) -> list[str]:
    """Logical names (in `model`) of the encoder's self-attention modules: a sequence-to-sequence model's
    encoder, or the whole of an encoder-only model (BERT, RoBERTa); [] for a decoder-only model."""
    hf_model = transformers_model(model)
    if hf_model is None:
        return []
    if getattr(hf_model.config, "is_encoder_decoder", False):
        encoder = raw_module(hf_model.get_encoder())
    elif decoder_stack(hf_model) is None and not getattr(hf_model.config, "is_decoder", False):
        encoder = hf_model
    else:
        return []
    wanted = set()
    for module in encoder.modules():
        kids = set(dict(module.named_children()))
        if any(names <= kids for names in KEY_VALUE_NAMES) and _takes_cache(module):
            wanted.add(id(module))
    return [name for name, path in positions(model).items() if id(raw_module(model.get_submodule(path))) in wanted]


class AttentionPrefixLayer(TransparentLayer, PeftLayer):
    """A prefix held by one attention module: [2, heads, length, head_dim] (keys, then values, as the module's
    cache holds them), optionally scaled by a gate of the attention's input (UniPELT)."""

    method = ""
    level = 2
    # A decoder's gate reads the first token only (every position sees it); an encoder's pools the sequence.
    causal = False

    def __init__(self, base_layer: nn.Module, length: int, gated: bool = False):
        super().__init__()
        self.base_layer = base_layer
        self.heads, self.head_dim = attention_dims(raw_module(base_layer))
        self.length = length
        opts = weight_options(base_layer)
        self.prefix = nn.Parameter(torch.randn(2, self.heads, length, self.head_dim, **opts) * 0.02)
        self.gate = Gate(_input_width(raw_module(base_layer)), pooled=True).to(**opts) if gated else None

    def key_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The prefix keys and values for a batch of inputs x [batch, tokens, width]: [batch, heads, length, head_dim]."""
        k, v = (t.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1, -1) for t in self.prefix)
        if self.gate is not None:  # one gate value per sequence, from this attention's input
            g = self.gate(x[:, :1] if self.causal else x).unsqueeze(1)  # [batch, 1, 1, 1]
            k, v = g * k, g * v
        return k, v

    def widen_masks(self, arguments: dict) -> None:
        """Put `length` always-attended columns in front of a 4-D mask's keys (bool masks attend where True,
        additive float masks where 0)."""
        for key in ("mask", "attention_mask"):
            mask = arguments.get(key)
            if isinstance(mask, torch.Tensor) and mask.dim() == 4:
                fill = mask.new_ones if mask.dtype == torch.bool else mask.new_zeros
                arguments[key] = torch.cat([fill(*mask.shape[:-1], self.length), mask], dim=-1)

    def extra_repr(self) -> str:
        return f"length={self.length}, heads={self.heads}, head_dim={self.head_dim}"


class PrefixEncoderLayer(AttentionPrefixLayer):
    """On an encoder's self-attention: a one-layer cache holding the prefix, per call."""

    method = "prefix_encoder"

    def forward(self, *args, **kwargs):
        attention = raw_module(self.base_layer)
        arguments = _bound(attention, args, kwargs)
        k, v = self.key_values(arguments["hidden_states"])
        arguments[_cache_name(attention)] = _PrefixOnlyCache(k, v)
        self.widen_masks(arguments)
        return self.base_layer(**arguments)


class PrefixCrossLayer(AttentionPrefixLayer):
    """On a decoder's cross-attention. Under the decoder's EncoderDecoderCache (which the cache-route prefix and
    `generate` pass) the prefix goes into the cross-attention cache before the module first fills it, so later
    steps reuse encoder keys and prefix alike; without a cache, a one-layer cache as on the encoder."""

    method = "prefix_cross"
    causal = True

    def forward(self, *args, **kwargs):
        from transformers import EncoderDecoderCache

        attention = raw_module(self.base_layer)
        arguments = _bound(attention, args, kwargs)
        name = _cache_name(attention)
        cache = arguments.get(name)
        if isinstance(cache, EncoderDecoderCache):
            if not cache.is_updated.get(attention.layer_idx):
                cache.cross_attention_cache.update(*self.key_values(arguments["hidden_states"]), attention.layer_idx)
        else:
            arguments[name] = _PrefixOnlyCache(*self.key_values(arguments["hidden_states"]))
        self.widen_masks(arguments)
        return self.base_layer(**arguments)


def _cache_name(attention: nn.Module) -> str:
    return "cache" if "cache" in _bound_names(attention) else "past_key_values"


def _bound_names(module: nn.Module) -> set[str]:
    return set(inspect.signature(module.forward).parameters)


def _takes_cache(module: nn.Module) -> bool:
    names = _bound_names(module)
    return bool({"cache", "past_key_values"} & names) and "hidden_states" in names


def _input_width(attention: nn.Module) -> int:
    """The width of the attention's input: the in-features of its key projection."""
    for name in ("k", "k_proj", "key"):
        key = getattr(attention, name, None)
        if isinstance(key, nn.Module):
            return raw_module(key).in_features
    raise ValueError(f"{type(attention).__name__} has no key projection (k, k_proj or key) to read its width from")


class PrefixEncoder(MethodSpec):
    """Prefix tuning on a sequence-to-sequence model's encoder self-attention (T5, BART). `Prefix(encoder=True)`
    adds it; name it directly to choose the modules."""

    name = "prefix_encoder"
    level = 2

    def __init__(self, length: int = 10, targets: list[str] | None = None, gated: bool = False):
        """
        Args:
            length: prefix length (extra key/value positions in every encoder self-attention).
            targets: the encoder's self-attention modules; defaults to all of them.
            gated: scale each attention's prefix by a learned gate of its input (UniPELT).
        """
        if length < 1:
            raise ValueError(f"prefix length={length} must be a positive integer")
        self.targets, self.layers, self.length, self.gated = (None if targets is None else list(targets)), None, length, gated

    def expand(self, model: nn.Module | None) -> list[MethodSpec]:
        if model is not None and self.targets is None:
            paths = encoder_attention_paths(model)
            if not paths:
                raise ValueError(f"prefix_encoder needs a transformers model with an encoder (T5, BART, BERT, RoBERTa); "
                                 f"{type(transformers_model(model) or model).__name__} has no encoder self-attention to prefix")
            return [PrefixEncoder(length=self.length, targets=paths, gated=self.gated)]  # this spec stays reusable
        return [self]

    def check(self, module: nn.Module, module_name: str) -> None:
        if not _takes_cache(module):
            raise ValueError(f"prefix_encoder target {module_name} ({type(module).__name__}) is not an attention module "
                             f"that takes a cache; target the encoder's self-attention modules")
        attention_dims(module)

    def wrap(self, module: nn.Module, module_name: str) -> PrefixEncoderLayer:
        return PrefixEncoderLayer(module, self.length, self.gated)

    @staticmethod
    def parameter_count(layers: int, heads: int, head_dim: int, length: int) -> int:
        return length * layers * 2 * heads * head_dim


class PrefixCross(MethodSpec):
    """Prefix tuning on a sequence-to-sequence decoder's cross-attention (T5, BART): extra keys and values beside
    the encoder's, as in Li & Liang's implementation and AdapterHub's `cross_prefix`. `Prefix` adds it on those
    models by default (`cross`); name it directly to choose the modules."""

    name = "prefix_cross"
    level = 2

    def __init__(self, length: int = 10, targets: list[str] = ["role:cross_attn"], gated: bool = False):  # noqa: B006
        """
        Args:
            length: prefix length (extra key/value positions in every cross-attention).
            targets: the decoder's cross-attention modules; "role:cross_attn" finds them per family.
            gated: scale each cross-attention's prefix by a learned gate of its (decoder-side) input.
        """
        if length < 1:
            raise ValueError(f"prefix length={length} must be a positive integer")
        self.targets, self.layers, self.length, self.gated = list(targets), None, length, gated

    def check(self, module: nn.Module, module_name: str) -> None:
        if not (_takes_cache(module) and "key_value_states" in _bound_names(module)) or getattr(module, "layer_idx", None) is None:
            raise ValueError(f"prefix_cross target {module_name} ({type(module).__name__}) is not a cross-attention module "
                             f"that takes encoder states and a cache; target the decoder's cross-attention (role:cross_attn)")
        attention_dims(module)

    def wrap(self, module: nn.Module, module_name: str) -> PrefixCrossLayer:
        return PrefixCrossLayer(module, self.length, self.gated)
