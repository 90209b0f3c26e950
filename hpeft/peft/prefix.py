"""Prefix tuning (Li & Liang 2021): every targeted key and value projection gets `length` learned
vectors in front of its output, so each attention layer attends to extra key/value positions.

It needs attention that accepts more keys than queries: hpeft's ChannelTransformer does (its q, k, v, o
are separate and nothing masks by length). Fused projections (GPT-2's c_attn) and attention that adds
rotary or relative position terms to keys (Llama, T5) do not: on transformers models `Prefix` therefore
becomes `PrefixCache` (prefix_cache.py), which puts the prefix into the decoder's key/value cache as HF
peft does; its `targets` then name the decoder stack, and the defaults ["k", "v"] stand for the decoder.
An encoder's self-attention (T5, BART, BERT) gets its prefix from `PrefixEncoder` (prefix_attention.py).

While training, the prefix may be reparameterised, P = MLP(E) with E [length, width] (the paper found
direct optimisation unstable); saving and the deployed count keep only the flattened P."""

from __future__ import annotations

import torch
from torch import nn

from hpeft.peft.core import LinearLike, MethodSpec, PeftLayer, linear_dims, raw_module, weight_options
from hpeft.peft.gating import Gate


class FlattenedPrefix:
    """Mixin for prefix layers that may be reparameterised while training (a `reparam` MLP making the table from
    `prefix_embed`): a deployed model and a saved adapter keep only the flattened table, `prefix`, and any gate."""

    def flat_size(self) -> int:
        """Numbers in the flattened prefix table."""
        raise NotImplementedError

    def deployed_params(self, own: list[tuple[str, nn.Parameter]]) -> int:
        if not hasattr(self, "reparam"):
            return super().deployed_params(own)
        gate = {id(p) for p in self.gate.parameters()} if self.gate is not None else set()
        return self.flat_size() + sum(p.numel() for _, p in own if id(p) in gate)

    def exported_state(self) -> dict[str, torch.Tensor] | None:
        """The parameters as a flattened (non-reparameterised) layer names them."""
        if not hasattr(self, "reparam"):
            return None
        state = {"prefix": self.prefix_vectors().detach()}
        if self.gate is not None:
            state |= {f"gate.{n}": p.detach() for n, p in self.gate.named_parameters()}
        return state


class PrefixLinear(FlattenedPrefix, PeftLayer):
    method = "prefix"
    level = 2

    def __init__(self, base_layer: nn.Module, length: int, reparam_hidden: int, gated: bool):
        super().__init__()
        self.base_layer = base_layer
        in_features, out_features = linear_dims(raw_module(base_layer))
        opts = weight_options(base_layer)
        self.length, self.out_features = length, out_features
        if reparam_hidden:
            self.prefix_embed = nn.Parameter(torch.randn(length, out_features, **opts))
            self.reparam = nn.Sequential(
                nn.Linear(out_features, reparam_hidden), nn.Tanh(), nn.Linear(reparam_hidden, out_features)
            ).to(**opts)
        else:
            self.prefix = nn.Parameter(torch.randn(length, out_features, **opts) * 0.02)
        self.gate = Gate(in_features, pooled=True).to(**opts) if gated else None

    def prefix_vectors(self) -> torch.Tensor:
        return self.reparam(self.prefix_embed) if hasattr(self, "reparam") else self.prefix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        p = self.prefix_vectors().to(y.dtype).expand(y.shape[0], -1, -1)
        if self.gate is not None:
            p = self.gate(x) * p
        return torch.cat([p, y], dim=1)

    def flat_size(self) -> int:
        return self.length * self.out_features


class Prefix(MethodSpec):
    """Prefix tuning: learned key/value vectors in front of each targeted projection's output."""

    name = "prefix"
    layer_types = (LinearLike,)
    level = 2

    def __init__(
        self,
        length: int = 10,
        targets: list[str] = ["k", "v"],  # noqa: B006 - shown in --help
        reparam_hidden: int = 0,
        gated: bool = False,
        layers: list[int] | None = None,
        encoder: bool | None = None,
        cross: bool | None = None,
    ):
        """
        Args:
            length: prefix length (extra key/value positions per layer).
            targets: the key and value projections.
            reparam_hidden: hidden width of the reparameterisation MLP used while training; 0 trains the
                prefix directly.
            gated: scale the prefix by a learned gate of the layer input (UniPELT).
            layers: only modules of these layer indices.
            encoder: on a transformers sequence-to-sequence model (T5, BART), also prefix the encoder's
                self-attention, as Li & Liang do; null (the default) does so wherever the model has an encoder,
                false prefixes the decoder only (as HF peft does).
            cross: on such a model, also prefix the decoder's cross-attention (Li & Liang's implementation,
                AdapterHub's cross_prefix); null (the default) does so wherever the model has one.
        """
        if length < 1:
            raise ValueError(f"prefix length={length} must be a positive integer")
        if reparam_hidden < 0:
            raise ValueError(f"prefix reparam_hidden={reparam_hidden} must be >= 0 (0 turns reparameterisation off)")
        super().__init__(targets, layers)
        self.length, self.reparam_hidden, self.gated, self.encoder, self.cross = length, reparam_hidden, gated, encoder, cross

    def expand(self, model: nn.Module | None) -> list[MethodSpec]:
        """On a transformers model: the decoder's cache (prefix_cache.py), plus on a sequence-to-sequence model the
        encoder's self-attention and the decoder's cross-attention (unless `encoder` / `cross` say false), or on an
        encoder-only model every self-attention (prefix_attention.py); elsewhere this spec itself."""
        from hpeft.peft.prefix_cache import PrefixCache, no_route_message, stack_paths, transformers_model
        from hpeft.peft.prefix_attention import PrefixCross, PrefixEncoder, encoder_attention_paths

        if model is None or transformers_model(model) is None:
            if self.encoder or self.cross:
                raise ValueError(f"prefix {'encoder' if self.encoder else 'cross'}=True is for transformers "
                                 "sequence-to-sequence models (T5, BART); this model's prefix goes on the projections "
                                 "its targets name")
            return [self]
        if self.layers is not None:
            raise ValueError(f"prefix layers={self.layers}: on a transformers model the prefix goes through the attention's "
                             f"cache, which every layer reads; leave layers out (every layer gets a prefix)")
        if stack_paths(model):
            targets = None if self.targets == ["k", "v"] else self.targets
            specs: list[MethodSpec] = [PrefixCache(length=self.length, targets=targets, reparam_hidden=self.reparam_hidden,
                                                   gated=self.gated)]
            seq2seq = bool(encoder_attention_paths(model))
            if self.encoder if self.encoder is not None else seq2seq:
                specs.append(PrefixEncoder(length=self.length, gated=self.gated))
            if self.cross if self.cross is not None else seq2seq:
                specs.append(PrefixCross(length=self.length, gated=self.gated))
            return specs
        if encoder_attention_paths(model):  # an encoder-only model (BERT, RoBERTa): every self-attention
            if self.reparam_hidden:
                raise ValueError(f"prefix reparam_hidden={self.reparam_hidden}: the shared reparameterisation is for a "
                                 "decoder's prefix table; an encoder-only model's prefix trains directly (give 0)")
            return [PrefixEncoder(length=self.length, gated=self.gated)]
        raise ValueError(no_route_message(model))

    def wrap(self, module: nn.Module, module_name: str) -> PrefixLinear:
        return PrefixLinear(module, self.length, self.reparam_hidden, self.gated)

    def exported_config(self) -> dict:
        return {**self.config(), "reparam_hidden": 0}

    @staticmethod
    def parameter_count(out_features: int, length: int) -> int:
        """Deployed (flattened) parameters per targeted projection."""
        return length * out_features

