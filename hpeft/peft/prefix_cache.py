"""Prefix tuning on transformers models through their key/value cache (as HF peft does).

hpeft's projection route (prefix.py) puts the prefix in front of a key and value projection's output; that
fails on transformers models: GPT-2 fuses q, k and v into one `c_attn`, Llama-family models rotate keys by
position after the projection, T5 adds relative position biases sized by the key length, and every model
builds its attention mask from the input length. What every decoder there does accept is a cache of earlier
keys and values: so the prefix goes into the cache before the first token, as keys and values already
projected (and, on Llama, not rotated), and the model attends to it like to earlier tokens. The route is
the one HF peft takes, with its layout (one [length, layers * 2 * kv_heads * head_dim] table, layer i's key
and value in columns i*2 and i*2+1), so weights carry over between the two and the logits agree.

`PrefixCacheLayer` wraps a decoder *stack* (GPT2Model `transformer`, LlamaModel `model`, T5's `decoder`,
BART's `model.decoder`): on a call with no cache, or an empty one (the first step of `generate`), it fills
the prefix into the cache; it extends a 2-D attention mask by `length` ones where the caller's mask does not
count the prefix, and moves explicit position ids and cache positions on by `length`, because the model
counts the prefix as earlier tokens (HF peft does the same). Encoder stacks (BERT, the T5 and BART
encoders) take no cache; their self-attention gets its prefix from prefix_attention.py.

Reparameterisation (Li & Liang 2021) is shared across layers, as in the paper and HF peft: an embedding
[length, kv_width] through one MLP to all layers' keys and values; saving and the deployed count keep only
the flattened table. `gated` (UniPELT) scales each layer's prefix keys and values by a learned gate of that
layer's input at the first token (pooling over the sequence, as encoders do, would let later tokens change what
earlier positions see), set on the call that fills the cache."""

from __future__ import annotations

import inspect

import torch
from torch import nn

from hpeft.peft.core import MethodSpec, PeftLayer, TransparentLayer, find_transformers_model, raw_module
from hpeft.peft.gating import Gate
from hpeft.peft.prefix import FlattenedPrefix


# ---------------------------------------------------------------------------------------- finding stacks


def transformers_model(model: nn.Module) -> nn.Module | None:
    """The outermost transformers PreTrainedModel inside `model`, or None."""
    found = find_transformers_model(model)
    return found[1] if found else None


def _cache_arg(module: nn.Module) -> str | None:
    params = inspect.signature(module.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in params), None)


def decoder_stack(hf_model: nn.Module) -> nn.Module | None:
    """The module of `hf_model` that runs the decoder layers and takes a cache, or None (encoder-only models)."""
    config = hf_model.config
    causal = bool(getattr(config, "is_encoder_decoder", False)) or any(
        k in type(hf_model).__name__ for k in ("CausalLM", "LMHead", "ConditionalGeneration")
    ) or type(hf_model).__name__.endswith(("Model",)) and bool(getattr(config, "is_decoder", False))
    if not causal:
        return None
    try:
        stack = hf_model.get_decoder()
    except (AttributeError, NotImplementedError):
        return None
    if stack is None or _cache_arg(raw_module(stack)) is None or _layer_list(raw_module(stack)) is None:
        return None
    if _query_heads(_text_config(raw_module(stack))) is None:  # a cache of another kind (Mamba's states): no attention
        return None
    return stack


def _layer_list(stack: nn.Module) -> nn.ModuleList | None:
    for module in stack.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            return module
    return None


def stack_paths(model: nn.Module) -> list[str]:
    """Module paths (in `model`) of the stacks the cache route puts a prefix on; [] where it does not apply."""
    hf_model = transformers_model(model)
    stack = decoder_stack(hf_model) if hf_model is not None else None
    if stack is None:
        return []
    return [name for name, module in model.named_modules() if raw_module(module) is raw_module(stack)][:1]


def _first(config, *names):
    for name in names:
        value = getattr(config, name, None)
        if value:
            return int(value)
    return None


def _text_config(stack: nn.Module):
    config = getattr(stack, "config", None)
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _query_heads(config) -> int | None:
    # Decoder-side names first: BART aliases num_attention_heads to the encoder's heads.
    return _first(config, "decoder_attention_heads", "num_heads", "n_head", "num_attention_heads")


def kv_shape(stack: nn.Module) -> tuple[int, int, int]:
    """(layers, key/value heads, head width) of a decoder stack's self-attention, from its config."""
    config = _text_config(stack)
    layers = len(_layer_list(stack))
    query_heads = _query_heads(config)
    kv_heads = _first(config, "num_key_value_heads") or query_heads
    head_dim = _first(config, "head_dim", "d_kv")
    if head_dim is None:
        width = _first(config, "d_model", "hidden_size", "n_embd")
        head_dim = width // query_heads
    return layers, kv_heads, head_dim


# --------------------------------------------------------------------------------------------- the layer


def _position_capacity(stack: nn.Module) -> int | None:
    """How many positions a stack with learned absolute position embeddings can embed (GPT-2's `wpe`, BART's
    `embed_positions`, less BART's offset of 2); None for relative or rotary positions, which have no table."""
    for name in ("wpe", "embed_positions"):
        table = getattr(stack, name, None)
        if isinstance(table, nn.Embedding):
            return table.num_embeddings - int(getattr(table, "offset", 0))
    return None


def _bound(module: nn.Module, args: tuple, kwargs: dict) -> dict:
    """The call's arguments by name (extra keyword arguments flattened in)."""
    sig = inspect.signature(module.forward)
    arguments = dict(sig.bind_partial(*args, **kwargs).arguments)
    for name, p in sig.parameters.items():
        if p.kind is inspect.Parameter.VAR_KEYWORD and name in arguments:
            arguments |= arguments.pop(name)
    return arguments


class PrefixCacheLayer(TransparentLayer, FlattenedPrefix, PeftLayer):
    method = "prefix"
    level = 2

    def __init__(self, base_layer: nn.Module, length: int, reparam_hidden: int, gated: bool):
        super().__init__()
        self.base_layer = base_layer
        stack = raw_module(base_layer)
        self.length = length
        self.num_layers, self.kv_heads, self.head_dim = kv_shape(stack)
        self.kv_width = self.kv_heads * self.head_dim
        self.cache_arg = _cache_arg(stack)
        self.encoder_decoder = bool(getattr(stack.config, "is_encoder_decoder", False))
        self.position_capacity = _position_capacity(stack)
        weight = next(stack.parameters())
        opts = {"device": weight.device, "dtype": weight.dtype if weight.is_floating_point() else torch.float32}
        width = self.num_layers * 2 * self.kv_width
        if reparam_hidden:
            self.prefix_embed = nn.Parameter(torch.randn(length, self.kv_width, **opts))
            self.reparam = nn.Sequential(
                nn.Linear(self.kv_width, reparam_hidden), nn.Tanh(), nn.Linear(reparam_hidden, width)
            ).to(**opts)
        else:
            self.prefix = nn.Parameter(torch.randn(length, width, **opts) * 0.02)
        self.gate = None
        if gated:
            hidden = _first(_text_config(stack), "d_model", "hidden_size", "n_embd")
            self.gate = nn.ModuleList(Gate(hidden, pooled=True) for _ in range(self.num_layers)).to(**opts)

    def prefix_vectors(self) -> torch.Tensor:
        """[length, layers * 2 * kv_width]: HF peft's prefix table."""
        return self.reparam(self.prefix_embed) if hasattr(self, "reparam") else self.prefix

    def key_values(self, batch: int, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, the prefix keys and values [batch, kv_heads, length, head_dim]."""
        table = self.prefix_vectors().to(dtype).view(self.length, self.num_layers * 2, self.kv_heads, self.head_dim)
        table = table.permute(1, 2, 0, 3).unsqueeze(1).expand(-1, batch, -1, -1, -1)
        return [(table[2 * i], table[2 * i + 1]) for i in range(self.num_layers)]

    def _new_cache(self, config):
        from transformers import DynamicCache, EncoderDecoderCache

        if self.encoder_decoder:
            return EncoderDecoderCache(DynamicCache(config=config), DynamicCache(config=config))
        return DynamicCache(config=config)

    def forward(self, *args, **kwargs):
        from transformers import EncoderDecoderCache

        stack = raw_module(self.base_layer)
        arguments = _bound(stack, args, kwargs)
        cache = arguments.pop("cache", None)
        cache = arguments.pop("past_key_values", None) if cache is None else cache
        tokens = arguments.get("input_ids")
        tokens = arguments.get("inputs_embeds") if tokens is None else tokens
        batch, q_len = tokens.shape[:2]
        if cache is None:
            cache = self._new_cache(stack.config)
        self_cache = cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
        cached = self_cache.get_seq_length()
        end = (cached or self.length) + q_len
        if self.position_capacity is not None and end > self.position_capacity:
            # Checked before the cache is filled or gates hooked, so the error leaves neither behind. The tokens'
            # positions start after the prefix (as in HF peft), so a learned position table must hold length +
            # sequence positions; past it the model would fail with an embedding IndexError.
            raise ValueError(
                f"prefix tuning on {type(stack).__name__}: {self.length} prefix positions + {end - self.length} "
                f"input positions (tokens, and a prompt's if there is one) = {end}, but its learned position "
                f"embeddings hold {self.position_capacity}; give at most {self.position_capacity - self.length}, "
                "or a shorter prefix (length)")
        hooks = []
        if cached == 0:
            dtype = arguments["inputs_embeds"].dtype if arguments.get("inputs_embeds") is not None else self.prefix_vectors().dtype
            for i, (k, v) in enumerate(self.key_values(batch, dtype)):
                self_cache.update(k, v, i)
            if self.gate is not None:
                # Registered for this call only (a hook kept on the layers would outlive `remove` and, in a deep
                # copy of the model, call the original's gates).
                hooks = [layer.register_forward_pre_hook(self._gate_hook(i, self_cache), with_kwargs=True)
                         for i, layer in enumerate(_layer_list(stack))]
        mask = arguments.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape[1] == self_cache.get_seq_length() + q_len - self.length:
            arguments["attention_mask"] = torch.cat([mask.new_ones(batch, self.length), mask], dim=1)
        for key in ("position_ids", "cache_position"):
            if isinstance(arguments.get(key), torch.Tensor):
                arguments[key] = arguments[key] + self.length
        arguments[self.cache_arg] = cache
        try:
            return self.base_layer(**arguments)
        finally:
            for hook in hooks:
                hook.remove()

    def _gate_hook(self, index: int, cache):
        """Before decoder layer `index` runs: scale its prefix keys and values by its gate of the layer input."""
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            # One value per sequence, from its first token: a causal decoder's positions all see that one, and
            # generate's first step has it, so no position's gate depends on tokens after it.
            g = self.gate[index](x[:, :1]).unsqueeze(1)  # [batch, 1, 1, 1]
            layer = cache.layers[index]
            n = self.length
            layer.keys = torch.cat([g * layer.keys[:, :, :n], layer.keys[:, :, n:]], dim=2)
            layer.values = torch.cat([g * layer.values[:, :, :n], layer.values[:, :, n:]], dim=2)
            return None
        return hook

    def flat_size(self) -> int:
        return self.length * self.num_layers * 2 * self.kv_width

    def extra_repr(self) -> str:
        return f"length={self.length}, layers={self.num_layers}, kv_heads={self.kv_heads}, head_dim={self.head_dim}"


class PrefixCache(MethodSpec):
    """Prefix tuning through a transformers decoder's key/value cache. `Prefix` becomes this on transformers
    models by itself; name it directly to choose the stack."""

    name = "prefix_cache"
    level = 2

    def __init__(
        self,
        length: int = 10,
        targets: list[str] | None = None,
        reparam_hidden: int = 0,
        gated: bool = False,
    ):
        """
        Args:
            length: prefix length (extra key/value positions in every decoder layer).
            targets: the decoder stack (e.g. ["transformer"] on GPT-2, ["model.decoder"] on BART); defaults to
                the model's decoder.
            reparam_hidden: hidden width of the shared reparameterisation MLP used while training; 0 trains the
                prefix directly.
            gated: scale each layer's prefix by a learned gate of that layer's input (UniPELT).
        """
        if length < 1:
            raise ValueError(f"prefix length={length} must be a positive integer")
        if reparam_hidden < 0:
            raise ValueError(f"prefix reparam_hidden={reparam_hidden} must be >= 0 (0 turns reparameterisation off)")
        self.targets, self.layers = (None if targets is None else list(targets)), None
        self.length, self.reparam_hidden, self.gated = length, reparam_hidden, gated

    def expand(self, model: nn.Module | None) -> list[MethodSpec]:
        # The model's stack goes into a new spec: this one stays reusable on a model of another family.
        if model is not None and self.targets is None:
            paths = stack_paths(model)
            if not paths:
                raise ValueError(no_route_message(model))
            return [PrefixCache(length=self.length, targets=paths, reparam_hidden=self.reparam_hidden, gated=self.gated)]
        return [self]

    def check(self, module: nn.Module, module_name: str) -> None:
        if _cache_arg(module) is None or _layer_list(module) is None or getattr(module, "config", None) is None:
            raise ValueError(f"prefix_cache target {module_name} ({type(module).__name__}) is not a transformers decoder "
                             f"stack that takes a cache; target the model's decoder (e.g. transformer, model, decoder)")

    def wrap(self, module: nn.Module, module_name: str) -> PrefixCacheLayer:
        return PrefixCacheLayer(module, self.length, self.reparam_hidden, self.gated)

    def exported_config(self) -> dict:
        return {**self.config(), "reparam_hidden": 0}

    @staticmethod
    def parameter_count(layers: int, kv_heads: int, head_dim: int, length: int) -> int:
        """Deployed (flattened) parameters: one key and one value vector per layer and prefix position."""
        return length * layers * 2 * kv_heads * head_dim


def no_route_message(model: nn.Module) -> str:
    hf_model = transformers_model(model)
    kind = type(hf_model).__name__ if hf_model is not None else type(model).__name__
    return (f"prefix tuning has no route into {kind}: it goes through a decoder's key/value cache on transformers "
            f"causal and sequence-to-sequence models (GPT-2, Llama, Gemma, Mistral, Qwen, T5, BART), through the "
            f"self-attention of encoder-only ones (BERT, RoBERTa), and through separate key and value projections on "
            f"hpeft's own models; {kind} has no attention that takes a cache")
