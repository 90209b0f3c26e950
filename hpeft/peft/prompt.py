"""Soft prompt tuning (Lester et al. 2021): `length` learned vectors put in front of the token
embeddings. The target is the module that makes token embeddings: `embed` of hpeft's ChannelTransformer
(whose head drops the prompt positions again), `wte`/`embed_tokens`/`word_embeddings` of transformers
models. On a transformers model the attention mask (and, for decoder-only models, the labels) passed to
the model are extended to cover the prompt, as HF peft does, so `model(input_ids, attention_mask=...,
labels=...)` keeps working; the outputs then have `length` extra leading positions."""

from __future__ import annotations

import torch
from torch import nn

from hpeft.peft.core import (
    MethodSpec,
    PeftLayer,
    find_transformers_model,
    logical_name,
    raw_module,
    real_path,
    resolve_targets,
    weight_options,
)

INITS = ("random", "vocab")


def embedding_width(module: nn.Module) -> int | None:
    """Width of the token embeddings `module` outputs (nn.Embedding, or any module with `embedding_dim`)."""
    return getattr(raw_module(module), "embedding_dim", None)


class PromptLayer(PeftLayer):
    method = "prompt"
    level = 2

    def __init__(self, base_layer: nn.Module, length: int, init: str, init_std: float):
        super().__init__()
        self.base_layer = base_layer
        raw = raw_module(base_layer)
        self.prompt = nn.Parameter(torch.empty(length, embedding_width(raw), **weight_options(raw)))
        with torch.no_grad():
            if init == "vocab":
                # Rows of the vocabulary's own embeddings, so prompts start among real token vectors.
                ids = torch.randint(0, raw.num_embeddings, (length,))
                self.prompt.copy_(raw.weight[ids.to(raw.weight.device)])
            else:
                self.prompt.normal_(0.0, init_std)

    @property
    def length(self) -> int:
        return self.prompt.shape[0]

    def prepend(self, embeds: torch.Tensor) -> torch.Tensor:
        """The prompt in front of token embeddings [batch, seq, width]."""
        return torch.cat([self.prompt.expand(embeds.shape[0], -1, -1).to(embeds.dtype), embeds], dim=1)

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.prepend(self.base_layer(*args, **kwargs))


def _shift_positions(kwargs: dict, length: int, prepend: bool) -> None:
    """Position ids and cache positions that generate computed for the tokens alone: the tokens now sit after
    the prompt's `length` positions, and on the first call the prompt's own 0..length-1 go in front."""
    for key in ("position_ids", "cache_position"):
        value = kwargs.get(key)
        if not isinstance(value, torch.Tensor):
            continue
        value = value + length
        if prepend:
            head = torch.arange(length, dtype=value.dtype, device=value.device)
            value = torch.cat([head.expand(*value.shape[:-1], length), value], dim=-1)
        kwargs[key] = value


def _embed_input_ids(embed: nn.Module, args: tuple, kwargs: dict) -> tuple:
    """Token ids given positionally or by name, and no embeddings: pass `embed(ids)` as inputs_embeds instead (in
    kwargs, which the caller's hook returns); the args without the ids."""
    input_ids = kwargs["input_ids"] if "input_ids" in kwargs else (args[0] if args else None)
    if isinstance(input_ids, torch.Tensor) and kwargs.get("inputs_embeds") is None:
        kwargs["inputs_embeds"] = embed(input_ids)
        if "input_ids" in kwargs:
            kwargs["input_ids"] = None
        else:
            args = (None, *args[1:])
    return args


def _continue_after_prompt(prompt: PromptLayer, cached: int, args: tuple, kwargs: dict):
    """A call with a filled key/value cache (generate's later steps): the prompt's positions are in the cache, so
    the new tokens are embedded without it; the mask and positions still count it."""
    length = prompt.length
    args = _embed_input_ids(prompt.base_layer, args, kwargs)
    embeds = kwargs.get("inputs_embeds")
    mask = kwargs.get("attention_mask")
    # Short of the prompt when it leaves room for it; a prefix in the same cache extends it by its own length later.
    if isinstance(mask, torch.Tensor) and mask.dim() == 2 and embeds is not None and mask.shape[1] + length <= cached + embeds.shape[1]:
        kwargs["attention_mask"] = torch.cat([mask.new_ones(mask.shape[0], length), mask], dim=1)
    _shift_positions(kwargs, length, prepend=False)
    return args, kwargs


class Prompt(MethodSpec):
    """Soft prompt tuning: learned vectors in front of the input token embeddings."""

    name = "prompt"
    level = 2

    def __init__(
        self,
        length: int = 20,
        targets: list[str] = ["embed"],  # noqa: B006 - shown in --help
        init: str = "random",
        init_std: float = 0.02,
    ):
        """
        Args:
            length: number of soft prompt tokens.
            targets: the token-embedding module: "embed" (ChannelTransformer), "wte" (GPT-2),
                "embed_tokens" (Llama), "word_embeddings" (BERT/RoBERTa), "encoder.embed_tokens" (T5).
            init: "random" (normal with std init_std) or "vocab" (copies of random vocabulary embeddings).
            init_std: standard deviation of the random init.
        """
        if length < 1:
            raise ValueError(f"prompt length={length} must be a positive integer")
        if init not in INITS:
            raise ValueError(f"prompt init={init!r}; valid inits: {list(INITS)}")
        super().__init__(targets)
        self.length, self.init, self.init_std = length, init, init_std

    def check(self, module: nn.Module, module_name: str) -> None:
        if embedding_width(module) is None:
            raise ValueError(f"prompt target {module_name} ({type(module).__name__}) does not make token embeddings "
                             f"(no embedding_dim); target the input embedding module")
        if self.init == "vocab" and not isinstance(module, nn.Embedding):
            raise ValueError(f"prompt init='vocab' needs a vocabulary (nn.Embedding), but {module_name} is "
                             f"{type(module).__name__}; use init='random'")

    def expand(self, model: nn.Module) -> list[MethodSpec]:
        # Checked on the whole model before it changes: a seq2seq model's encoder embeds with its own module (T5's
        # encoder.embed_tokens, tied to `shared`), so a prompt on `shared` reached the encoder only through the
        # top-level hook, and generate, which runs the encoder on its own, went without it.
        found = find_transformers_model(model)
        hf = found[1] if found else None
        if hf is not None and getattr(hf.config, "is_encoder_decoder", False) and hasattr(hf, "get_encoder"):
            own = hf.get_encoder().get_input_embeddings()
            shared = hf.get_input_embeddings()
            for name in resolve_targets(model, self):
                module = raw_module(model.get_submodule(real_path(model, name)))
                if module is shared and module is not own:
                    encoder = next(n for n, m in model.named_modules() if m is own)
                    raise ValueError(f"prompt target {name!r}: {type(hf).__name__}'s encoder embeds with its own "
                                     f"module; target {encoder!r} to put the prompt in front of the encoder's input")
        return [self]

    def wrap(self, module: nn.Module, module_name: str) -> PromptLayer:
        return PromptLayer(module, self.length, self.init, self.init_std)

    def after_apply(self, model: nn.Module, layers: list[tuple[str, PeftLayer]]) -> None:
        # The hook goes on the transformers model, which may sit inside hpeft's wrapper (the lm task's
        # CausalLMLogits): hooked on the wrapper, GPT-2 took its length from input_ids and the mask stayed short.
        found = find_transformers_model(model)
        if found is None:
            return
        model = found[1]
        get_input = model.get_input_embeddings
        config = getattr(model, "config", None)
        encoder_decoder = getattr(config, "is_encoder_decoder", False)
        inputs = [get_input()]
        # T5's encoder.embed_tokens is its own module (tied to `shared`, which get_input_embeddings returns):
        # a prompt on the encoder's embeddings also needs the mask extended.
        if encoder_decoder and hasattr(model, "get_encoder"):
            inputs.append(model.get_encoder().get_input_embeddings())
        prompt_layer = next((layer for _, layer in layers if any(layer is e or layer.base_layer is e for e in inputs)), None)
        if prompt_layer is None:
            return
        # By path, not the object, so that a deep copy of the model calls its own prompt layer.
        # By logical name, resolved at each call: methods applied later may wrap a module above it (the cache
        # route's prefix wraps the decoder stack), which moves its path.
        prompt_path = logical_name(next(p for p, m in model.named_modules() if m is prompt_layer))
        pad_labels = not encoder_decoder

        def find_prompt(module) -> PromptLayer | None:
            try:
                prompt = module.get_submodule(real_path(module, prompt_path))
            except (AttributeError, KeyError):
                return None
            while isinstance(prompt, PeftLayer) and not isinstance(prompt, PromptLayer):  # under another method's layer
                prompt = prompt.base_layer
            return prompt if isinstance(prompt, PromptLayer) else None  # None: removed since (peft.remove)

        def extend_mask_and_labels(module, args, kwargs):
            prompt = find_prompt(module)
            if prompt is None:
                return args, kwargs
            length = prompt.length  # the layer's own (a prompt applied again after remove may be another length)
            cache = kwargs.get("cache", kwargs.get("past_key_values"))  # transformers 5 names it `cache`
            if getattr(cache, "is_compileable", False):
                raise ValueError(f"prompt tuning with a {type(cache).__name__}: generate sizes a static cache from the "
                                 f"tokens alone, with no room for the prompt's {length} positions; use the default "
                                 "dynamic cache (leave cache_implementation unset)")
            cached = cache.get_seq_length() if hasattr(cache, "get_seq_length") else 0
            if cached and not encoder_decoder:
                return _continue_after_prompt(prompt, cached, args, kwargs)
            # Embed here (prompt included) and pass inputs_embeds, as HF peft does: models that take the
            # sequence length from input_ids (GPT-2 reshapes its output with it, BERT slices position and
            # token-type ids with it) then see the prompt's length too. Without this GPT-2 returned wrongly
            # shaped logits. Embeddings the caller passes get the prompt in front of them.
            embeds = kwargs.get("inputs_embeds")
            if isinstance(embeds, torch.Tensor):
                kwargs["inputs_embeds"] = prompt.prepend(embeds)
            else:
                args = _embed_input_ids(prompt, args, kwargs)
                if kwargs.get("inputs_embeds") is None and not encoder_decoder:
                    return args, kwargs  # nothing to put the prompt in front of: extend nothing either
            mask = kwargs.get("attention_mask")
            if mask is not None and mask.dim() == 2:
                kwargs["attention_mask"] = torch.cat([mask.new_ones(mask.shape[0], length), mask], dim=1)
            if not encoder_decoder:  # a seq2seq model's position arguments are the decoder's, which has no prompt
                _shift_positions(kwargs, length, prepend=True)
            labels = kwargs.get("labels")
            # Per-token labels only ([batch, seq]); a sequence classifier's labels ([batch]) stay as they are.
            if pad_labels and labels is not None and labels.dim() == 2:
                kwargs["labels"] = torch.cat([labels.new_full((labels.shape[0], length), -100), labels], dim=1)
            return args, kwargs

        def extend_encoder_mask(encoder, args, kwargs):
            # generate runs the encoder on its own, with input_ids and a mask the top-level hook never saw: a mask
            # as long as the ids is one without the prompt. Through the whole model the ids arrive embedded already.
            ids, mask = kwargs.get("input_ids", args[0] if args else None), kwargs.get("attention_mask")
            # The prompt looked up under this encoder, not by a reference kept here: a deep copy of the model runs
            # this hook on its own encoder, and peft.remove may have taken the prompt away.
            prompt = next((m for m in encoder.modules() if isinstance(m, PromptLayer)), None)
            if (prompt is not None and isinstance(ids, torch.Tensor) and isinstance(mask, torch.Tensor)
                    and mask.dim() == 2 and mask.shape[1] == ids.shape[1]):
                kwargs["attention_mask"] = torch.cat([mask.new_ones(mask.shape[0], prompt.length), mask], dim=1)
            return args, kwargs

        # One hook per prompt path: applying a prompt again after peft.remove must not extend the mask twice.
        hooked = model.__dict__.setdefault("_hpeft_prompt_hooks", set())
        if prompt_path not in hooked:
            hooked.add(prompt_path)
            model.register_forward_pre_hook(extend_mask_and_labels, with_kwargs=True)
            if encoder_decoder and hasattr(model, "get_encoder"):
                model.get_encoder().register_forward_pre_hook(extend_encoder_mask, with_kwargs=True)

    @staticmethod
    def parameter_count(length: int, width: int) -> int:
        return length * width
