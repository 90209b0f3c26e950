"""Adapters in HF peft's on-disk format: a folder with adapter_config.json and adapter_model.safetensors that
`peft.PeftModel.from_pretrained(base, folder)` loads, and that `load_hf` reads back into an hpeft model.

Six methods have an exact HF peft twin: LoRA (`LORA`), DoRA (`LORA` with `use_dora`: lora_A, lora_B and
`lora_magnitude_vector`), IA3 (`IA3`), VeRA (`VERA`: the trained vectors, and the shared projections HF peft
saves by default), prompt tuning (`PROMPT_TUNING`) and prefix tuning through the key/value cache of a
decoder-only causal LM (`PREFIX_TUNING`: the flattened [tokens, layers * 2 * kv_width] table, which HF peft
saves as `prompt_embeddings`; a reparameterised prefix is written flattened, as HF peft deploys it).
One HF adapter is one of them (one `peft_type`), on a transformers model (a `PreTrainedModel`, which hpeft may
hold inside a wrapper such as `CausalLMLogits`); key and module names are relative to that model, as HF peft
names them. Anything else is refused with the methods named: `peft.merge` / `hpeft export --format merged`
deploy a model that HF peft cannot describe (prompts and prefixes, which do not merge, stay hpeft adapters).
Sequence-to-sequence prefixes are refused both ways: HF peft's prefix there covers the decoder's self-attention
only (hpeft's also the encoder and the cross-attention), and its table gives decoder layer i the pair at index
2i mod layers, so with an even layer count two layers share one pair, which a per-layer prefix cannot be written
as. transformers is imported only when these functions run.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from hpeft.peft.core import (LinearLike, PeftLayer, apply, find_transformers_model, is_transposed_linear, linear_dims, logical_name, peft_layers,
                             positions, raw_module, real_path)
from hpeft.peft.dora import DoRA, DoRALinear
from hpeft.peft.ia3 import IA3, IA3Linear
from hpeft.peft.lora import LoRA, LoRALinear
from hpeft.peft.prefix_cache import PrefixCache, PrefixCacheLayer, decoder_stack, kv_shape, stack_paths
from hpeft.peft.prompt import Prompt, PromptLayer, embedding_width
from hpeft.peft.vera import MAX_SEED, RandomProjections, VeRA, VeRALinear
from hpeft.utils.atomic import atomic_write, atomic_write_json

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."  # HF peft's PeftModel.base_model (the tuner) .model (the transformers model)
# hpeft's layer type -> HF peft's peft_type (DoRA is HF's LoRA with use_dora=True).
LAYER_TYPES = {LoRALinear: "LORA", DoRALinear: "LORA", IA3Linear: "IA3", VeRALinear: "VERA", PromptLayer: "PROMPT_TUNING",
               PrefixCacheLayer: "PREFIX_TUNING"}
PEFT_TYPES = sorted(set(LAYER_TYPES.values()))
REFUSAL_HINT = "deploy it merged instead: peft.merge(model) then save_pretrained, or `hpeft export --format merged`"
UNMERGED_HINT = ("prompts and prefixes do not merge into the weights, so keep such a model as an hpeft adapter "
                 "(peft.save, peft.load)")
VERA_PROJECTIONS = ("base_model.vera_A", "base_model.vera_B")  # HF peft's keys of the shared pair (save_projection)


# ------------------------------------------------------------------------------------------------ shared


def transformers_model(model: nn.Module) -> tuple[str, nn.Module]:
    """(path, module) of the outermost transformers PreTrainedModel in `model` (the model itself included)."""
    found = find_transformers_model(model)
    if found is not None:
        return found
    raise ValueError(f"{type(model).__name__} holds no transformers model (PreTrainedModel); HF peft adapters "
                     "describe transformers models only")


def _task_type(hf: nn.Module) -> str | None:
    """HF peft's task_type for this model class: it picks the PeftModel subclass (and its forward)."""
    from transformers.models.auto import modeling_auto as auto

    def classes(mapping: dict) -> set[str]:
        return {c for v in mapping.values() for c in ((v,) if isinstance(v, str) else v)}

    name = type(hf).__name__
    if name in classes(auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES):
        return "CAUSAL_LM"
    if name in classes(auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES):
        return "SEQ_2_SEQ_LM"
    return None  # plain PeftModel: the base model's own forward, enough for LoRA and IA3


def _hf_list_match(targets: list[str], name: str) -> bool:
    """HF peft's rule for a list of target_modules: the whole name or a dotted suffix of it."""
    return name in targets or any(name.endswith(f".{t}") for t in targets)


# -------------------------------------------------------------------------------------------- save_hf


def save_hf(model: nn.Module, directory: str | Path, base_model_name_or_path: str | None = None) -> Path:
    """Write `model`'s LoRA, DoRA, IA3, VeRA, prompt-tuning or (decoder-only) prefix-tuning adapter as an HF peft
    adapter folder (created if needed)."""
    directory = Path(directory)
    hf_path, hf = transformers_model(model)
    layers = _exportable_layers(model, hf_path)
    kind = type(layers[0][1])
    names = sorted(positions(hf))
    if kind in (LoRALinear, DoRALinear):
        config, tensors = _lora_config(layers, names, dora=kind is DoRALinear)
    elif kind is IA3Linear:
        config, tensors = _ia3_config(layers, names)
    elif kind is VeRALinear:
        config, tensors = _vera_config(layers, names)
    elif kind is PrefixCacheLayer:
        config, tensors = _prefix_config(hf, layers)
    else:
        config, tensors = _prompt_config(hf, layers)
    config = {
        "peft_type": LAYER_TYPES[kind],
        "task_type": _task_type(hf),
        "base_model_name_or_path": base_model_name_or_path or getattr(hf, "name_or_path", None) or None,
        "revision": None,
        "inference_mode": True,
        **config,
    }
    if kind is PromptLayer and config["task_type"] is None:
        # HF peft's plain PeftModel has no prompt-tuning forward; its task classes would add heads of their own.
        raise ValueError(f"prompt tuning exports for causal and seq2seq LMs (HF peft's CAUSAL_LM, SEQ_2_SEQ_LM); "
                         f"this model is {type(hf).__name__}")
    tensors = {k: t.detach().contiguous().cpu() for k, t in tensors.items()}
    atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    atomic_write_json(directory / CONFIG_NAME, config)  # second, so a config always has its weights beside it
    return directory


def _exportable_layers(model: nn.Module, hf_path: str) -> list[tuple[str, PeftLayer]]:
    """The model's method layers by module name relative to the transformers model, after refusing anything
    an HF peft adapter cannot hold exactly."""
    layers = peft_layers(model)
    if not layers:
        raise ValueError("the model has no PEFT methods to save; apply peft.LoRA, peft.DoRA, peft.IA3, peft.VeRA, "
                         "peft.Prompt or peft.Prefix first")
    refused = [layer for _, layer in layers if type(layer) not in LAYER_TYPES or getattr(layer, "gate", None) is not None]
    if refused:
        raise ValueError(f"save_hf writes LoRA, DoRA, IA3, VeRA, prompt tuning or a decoder-only LM's prefix tuning "
                         f"(HF peft's LORA, LORA with use_dora, IA3, VERA, PROMPT_TUNING, PREFIX_TUNING); this model "
                         f"has {', '.join(sorted({_describe(layer) for layer in refused}))}; {_hint(refused)}")
    kinds = sorted({layer.method for _, layer in layers})
    if len(kinds) > 1:
        raise ValueError(f"one HF peft adapter holds one method (one peft_type), but this model combines {kinds}; "
                         f"{_hint([layer for _, layer in layers])}")
    owned = {id(p) for _, layer in layers for _, p in layer.method_parameters()}
    trained_base = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in owned]
    if trained_base:
        raise ValueError(f"the model also trains base weights an HF peft adapter would not carry: {trained_base[:5]}"
                         f"{f' ... ({len(trained_base)} in all)' if len(trained_base) > 5 else ''}; "
                         f"{_hint([layer for _, layer in layers])}")
    out = []
    for path, layer in layers:
        name = logical_name(path)
        if hf_path and not name.startswith(f"{hf_path}."):
            raise ValueError(f"{layer.method} on {name} lies outside the transformers model ({hf_path}); "
                             "an HF peft adapter names modules of that model only")
        if getattr(layer, "merged", False):
            raise ValueError(f"the {type(layer).__name__} on {name} is merged into its base weight; unmerge it "
                             "(layer.unmerge()) before saving it as an adapter")
        out.append((name[len(hf_path) + 1:] if hf_path else name, layer))
    return out


def _describe(layer: PeftLayer) -> str:
    if isinstance(layer, LoRALinear) and layer.gate is not None:
        return "gated LoRA (its input-dependent gate has no HF peft field)"
    if isinstance(layer, PrefixCacheLayer) and layer.gate is not None:
        return "a gated prefix (UniPELT's input-dependent gate has no HF peft field)"
    if layer.method in ("prefix_encoder", "prefix_cross"):
        where = "an encoder's self-attention" if layer.method == "prefix_encoder" else "the cross-attention"
        return f"a prefix on {where} ({type(layer).__name__}; HF peft's prefix tuning covers decoder self-attention only)"
    return f"{layer.method} ({type(layer).__name__})"


def _hint(layers: list[PeftLayer]) -> str:
    """What to do instead: deploy merged, unless there are prompts or prefixes, which no merge folds in."""
    unmerged = any(layer.method in ("prompt", "prefix", "prefix_encoder", "prefix_cross") for layer in layers)
    return UNMERGED_HINT if unmerged else REFUSAL_HINT


def _target_names(all_names: list[str], chosen: set[str]) -> list[str]:
    """target_modules for HF peft: the modules' short names ("c_attn") where HF's list rule selects exactly
    `chosen` with them, else the full module names (exact by the same rule)."""
    short = sorted({n.rpartition(".")[2] for n in chosen})
    return short if {n for n in all_names if _hf_list_match(short, n)} == chosen else sorted(chosen)


def _lora_config(layers: list[tuple[str, LoRALinear | DoRALinear]], names: list[str], dora: bool) -> tuple[dict, dict]:
    """LoRA, or DoRA as HF peft's LoRA with use_dora=True: the same fields and A and B, and the magnitudes."""
    per_module = {}
    for name, layer in layers:
        spec = layer.spec
        dropout = layer.dropout.p if isinstance(layer.dropout, nn.Dropout) else 0.0
        per_module[name] = {"r": layer.rank, "alpha": spec.alpha, "rslora": spec.rslora, "dropout": dropout}
    for field, hf_name in (("rslora", "use_rslora"), ("dropout", "lora_dropout")):
        values = {m[field] for m in per_module.values()}
        if len(values) > 1:
            method = "DoRA" if dora else "LoRA"
            raise ValueError(f"HF peft's {hf_name} is one value per adapter, but this model's {method} layers use "
                             f"{sorted(values)}; apply {method} with one {field} setting")
    # The commonest rank and alpha are the defaults; the other modules go to rank_pattern / alpha_pattern
    # under their escaped full names, which HF peft's pattern rule ("(.*\.)?(key)$") then matches exactly.
    r = Counter(m["r"] for m in per_module.values()).most_common(1)[0][0]
    alpha = Counter(m["alpha"] for m in per_module.values()).most_common(1)[0][0]
    tensors = {}
    for name, layer in layers:
        tensors[f"{PREFIX}{name}.lora_A.weight"] = layer.lora_A
        tensors[f"{PREFIX}{name}.lora_B.weight"] = layer.lora_B
        if dora:  # ||.||_c per output, a plain parameter in HF peft's file (no ".weight")
            tensors[f"{PREFIX}{name}.lora_magnitude_vector"] = layer.magnitude
    any_module = next(iter(per_module.values()))
    return {
        "r": r,
        "lora_alpha": _number(alpha),
        "lora_dropout": any_module["dropout"],
        "use_rslora": any_module["rslora"],
        "target_modules": _target_names(names, set(per_module)),
        "rank_pattern": {re.escape(n): m["r"] for n, m in per_module.items() if m["r"] != r},
        "alpha_pattern": {re.escape(n): _number(m["alpha"]) for n, m in per_module.items() if m["alpha"] != alpha},
        # GPT-2's Conv1D stores its weight [in, out]; HF peft also sets this per layer from the layer's type.
        "fan_in_fan_out": any(is_transposed_linear(raw_module(layer.base_layer)) for _, layer in layers),
        "bias": "none",
        "use_dora": dora,
        "modules_to_save": None,
        "init_lora_weights": True,
        "layers_to_transform": None,
        "layers_pattern": None,
    }, tensors


def _number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)


def _ia3_config(layers: list[tuple[str, IA3Linear]], names: list[str]) -> tuple[dict, dict]:
    chosen = {name for name, _ in layers}
    feedforward = {name for name, layer in layers if layer.feedforward}

    def ff_rule_holds(ff: list[str]) -> bool:  # HF peft's feedforward rule: a plain suffix (no dot needed)
        return all(any(n.endswith(f) for f in ff) == (n in feedforward) for n in chosen)

    targets = _target_names(names, chosen)
    ff_names = sorted({n.rpartition(".")[2] for n in feedforward})
    # HF peft requires feedforward_modules to be a subset of target_modules: short names or full names for both.
    if targets != sorted(chosen) and not (set(ff_names) <= set(targets) and ff_rule_holds(ff_names)):
        targets = sorted(chosen)
    if targets == sorted(chosen):
        ff_names = sorted(feedforward)
    tensors = {}
    for name, layer in layers:
        vector = layer.ia3_l
        # HF peft stores an output scale as [out, 1] and an input scale as [1, in].
        tensors[f"{PREFIX}{name}.ia3_l"] = vector.view(1, -1) if layer.feedforward else vector.view(-1, 1)
    return {
        "target_modules": targets,
        "feedforward_modules": ff_names,
        "fan_in_fan_out": any(is_transposed_linear(raw_module(layer.base_layer)) for _, layer in layers),
        "modules_to_save": None,
        "init_ia3_weights": True,
    }, tensors


def _vera_config(layers: list[tuple[str, VeRALinear]], names: list[str]) -> tuple[dict, dict]:
    """HF peft's VeRA: one rank and one projection_prng_key per adapter, one shared pair of projections sized to
    the widest of its targets, as one hpeft VeRA spec draws it. The pair is saved too (save_projection=True,
    HF peft's default), so HF peft does not depend on regenerating it."""
    pairs = {id(layer.projections): layer for _, layer in layers}
    if len(pairs) > 1:
        specs = sorted({f"rank={layer.rank} seed={layer.spec.projection_seed}" for layer in pairs.values()})
        raise ValueError(f"HF peft's VeRA shares one pair of random projections (one r, one projection_prng_key, drawn "
                         f"at the widest target's size) across an adapter's layers, but this model's VeRA layers use "
                         f"{len(pairs)} pairs ({'; '.join(specs)}), one per VeRA spec; apply one VeRA spec to all "
                         f"the modules")
    first = layers[0][1]
    spec = first.spec
    tensors = {VERA_PROJECTIONS[0]: first.projections.A, VERA_PROJECTIONS[1]: first.projections.B}
    for name, layer in layers:
        tensors[f"{PREFIX}{name}.vera_lambda_b"] = layer.vera_lambda_b
        tensors[f"{PREFIX}{name}.vera_lambda_d"] = layer.vera_lambda_d
    return {
        "r": spec.rank,
        "target_modules": _target_names(names, {name for name, _ in layers}),
        "projection_prng_key": spec.projection_seed,
        "save_projection": True,
        "vera_dropout": float(spec.dropout),
        "d_initial": spec.d_initial,  # HF peft's starting lambda_d; the saved vectors replace it
        "fan_in_fan_out": any(is_transposed_linear(raw_module(layer.base_layer)) for _, layer in layers),
        "bias": "none",
        "modules_to_save": None,
        "init_weights": True,
        "layers_to_transform": None,
        "layers_pattern": None,
    }, tensors


def _prefix_config(hf: nn.Module, layers: list[tuple[str, PrefixCacheLayer]]) -> tuple[dict, dict]:
    """HF peft's prefix tuning of a decoder-only causal LM: one [tokens, layers * 2 * kv_width] table, the key
    and value of layer i in its column blocks 2i and 2i + 1 (PrefixCacheLayer's layout), read through
    (tokens, 2 * layers, kv_heads, head_dim); with grouped-query attention HF peft sets token_dim to the
    key/value width and num_attention_heads to the key/value heads, as here."""
    if getattr(hf.config, "is_encoder_decoder", False):
        raise ValueError(f"save_hf writes prefix tuning of decoder-only causal LMs; on {type(hf).__name__}, a "
                         "sequence-to-sequence model, HF peft's table (num_transformer_submodules=2) gives decoder "
                         "layer i the key/value pair at index 2i mod num_layers, so with an even layer count two "
                         "layers share one pair, which hpeft's per-layer decoder prefix cannot be written as; "
                         f"{UNMERGED_HINT}")
    if _task_type(hf) != "CAUSAL_LM":
        raise ValueError(f"prefix tuning exports for causal LMs (HF peft's CAUSAL_LM); this model is {type(hf).__name__}")
    if len(layers) != 1:
        raise ValueError(f"HF peft's prefix tuning puts one prefix on the decoder's layers; this model has prefixes "
                         f"on {[n for n, _ in layers]}")
    layer = layers[0][1]
    return {
        "num_virtual_tokens": layer.length,
        "token_dim": layer.kv_width,
        "num_transformer_submodules": 1,
        "num_attention_heads": layer.kv_heads,
        "num_layers": layer.num_layers,
        "encoder_hidden_size": layer.kv_width,
        # A reparameterised prefix is written as its flattened table (HF peft's inference-time prompt_embeddings),
        # so the file describes a table, not an MLP.
        "prefix_projection": False,
        "modules_to_save": None,
        "init_weights": None,
    }, {"prompt_embeddings": layer.prefix_vectors()}


def _prompted_embeddings(hf: nn.Module) -> nn.Module:
    """The module HF peft's prompt tuning prepends to (num_transformer_submodules=1): the input embeddings, or an
    encoder-decoder's encoder embeddings (T5's encoder.embed_tokens, its own module tied to `shared`)."""
    if getattr(hf.config, "is_encoder_decoder", False) and hasattr(hf, "get_encoder"):
        return hf.get_encoder().get_input_embeddings()
    return hf.get_input_embeddings()


def _prompt_config(hf: nn.Module, layers: list[tuple[str, PromptLayer]]) -> tuple[dict, dict]:
    inputs = raw_module(_prompted_embeddings(hf))  # the prompt layer now stands where the embeddings were
    if len(layers) != 1 or raw_module(layers[0][1]) is not inputs:
        raise ValueError(f"HF peft's prompt tuning prepends one prompt to the input embeddings "
                         f"({_module_name(hf, inputs)}); this model has prompts on {[n for n, _ in layers]}")
    layer = layers[0][1]
    text = hf.config.get_text_config() if hasattr(hf.config, "get_text_config") else hf.config
    return {
        "num_virtual_tokens": layer.prompt.shape[0],
        "token_dim": layer.prompt.shape[1],
        "num_transformer_submodules": 1,  # the encoder's (or the decoder-only model's) prompt only
        "num_attention_heads": getattr(text, "num_attention_heads", None),
        "num_layers": getattr(text, "num_hidden_layers", None),
        "modules_to_save": None,
        "prompt_tuning_init": "RANDOM",  # how HF peft would initialise; the saved weights replace it
        "prompt_tuning_init_text": None,
        "tokenizer_name_or_path": None,
        "tokenizer_kwargs": None,
    }, {"prompt_embeddings": layer.prompt}


def _module_name(root: nn.Module, module: nn.Module) -> str:
    return next((logical_name(n) for n, m in root.named_modules() if m is module), type(module).__name__)


# -------------------------------------------------------------------------------------------- load_hf

# LoRA config fields whose non-default values change what the adapter computes in ways hpeft's LoRA has no
# equivalent for (HF field: what it is).
LORA_UNSUPPORTED = {
    "lora_bias": "a trained bias on lora_B",
    "trainable_token_indices": "trained token embeddings", "target_parameters": "LoRA on raw parameters",
    "layer_replication": "replicated layers", "alora_invocation_tokens": "activated LoRA", "use_qalora": "QA-LoRA",
    "use_bdlora": "block-diagonal LoRA",
}


def load_hf(model: nn.Module, directory: str | Path) -> nn.Module:
    """Apply the HF peft adapter in `directory` (LoRA, DoRA, IA3, VeRA, prompt tuning or a decoder-only LM's
    prefix tuning) to `model`, a model without PEFT methods that is or holds the transformers model the adapter
    was trained on, and load its weights. All checks (config, module names, tensor names and shapes, VeRA's saved
    projections) run before the model is changed."""
    directory = Path(directory)
    missing = [str(directory / n) for n in (CONFIG_NAME, WEIGHTS_NAME) if not (directory / n).is_file()]
    if missing:
        pickled = " (adapter_model.bin is a pickle, which hpeft does not read: re-save with safetensors)" \
            if (directory / "adapter_model.bin").is_file() else ""
        raise FileNotFoundError(f"HF peft adapter {directory} needs {CONFIG_NAME} and {WEIGHTS_NAME}; "
                                f"missing: {missing}{pickled}")
    config = json.loads((directory / CONFIG_NAME).read_text())
    peft_type = config.get("peft_type")
    if peft_type not in PEFT_TYPES:
        raise ValueError(f"HF peft adapter {directory} has peft_type {peft_type!r}; load_hf reads {sorted(PEFT_TYPES)}")
    if present := sorted({layer.method for _, layer in peft_layers(model)}):
        raise ValueError(f"load_hf needs a model without PEFT methods; this one has {present}")
    _, hf = transformers_model(model)
    try:
        tensors = load_file(str(directory / WEIGHTS_NAME))
    except Exception as err:  # safetensors' own error types: a cut-short header or data
        raise ValueError(f"{directory / WEIGHTS_NAME} is not a readable safetensors file ({err})") from None
    if config.get("modules_to_save"):
        raise ValueError(f"HF peft adapter {directory} also saves whole modules (modules_to_save="
                         f"{config['modules_to_save']}), which hpeft's methods cannot hold")
    plan = {"LORA": _lora_plan, "IA3": _ia3_plan, "VERA": _vera_plan, "PROMPT_TUNING": _prompt_plan,
            "PREFIX_TUNING": _prefix_plan}[peft_type]
    specs, expected = plan(hf, config)
    if peft_type == "VERA" and not config.get("save_projection", True):
        # HF peft then draws the pair from the seed and ignores a saved one, as hpeft does.
        expected = {k: v for k, v in expected.items() if k not in VERA_PROJECTIONS}
        tensors = {k: v for k, v in tensors.items() if k not in VERA_PROJECTIONS}
    _check_tensors(directory, tensors, expected)
    if peft_type == "VERA":
        _check_projections(directory, tensors, specs[0])
    apply(hf, specs)
    with torch.no_grad():
        for key, (name, attr, shape) in expected.items():
            if key in VERA_PROJECTIONS:
                continue  # checked equal to the pair hpeft draws from the seed
            param = getattr(hf.get_submodule(real_path(hf, name)), attr)
            param.copy_(tensors[key].reshape(param.shape))
    return model


def _check_tensors(directory: Path, tensors: dict, expected: dict) -> None:
    absent = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if absent or extra:
        raise ValueError(f"{directory / WEIGHTS_NAME} does not fit this model: missing {absent[:5]}, unexpected "
                         f"{extra[:5]} (a base of another architecture, or weights of a feature load_hf does not "
                         "read?)")
    for key, (name, _, shape) in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise ValueError(f"{directory / WEIGHTS_NAME}: {key} has shape {tuple(tensors[key].shape)}, but the "
                             f"model's {name} needs {shape} (a base of another size?)")


def _targeted(hf: nn.Module, config: dict, method: str) -> list[str]:
    """The module names HF peft would adapt: target_modules (a list: whole names or dotted suffixes; a string:
    a regular expression over the whole name), less exclude_modules, in layers_to_transform; all linear."""
    targets, exclude = config.get("target_modules"), config.get("exclude_modules")
    if not targets:
        raise ValueError(f"the adapter's target_modules is {targets!r}; load_hf needs the modules named")
    if targets == "all-linear":
        raise ValueError("the adapter's target_modules is the 'all-linear' shorthand; HF peft saves the resolved "
                         "names, so re-save it with a current HF peft")

    def matches(rule, name: str) -> bool:
        return bool(re.fullmatch(rule, name)) if isinstance(rule, str) else _hf_list_match(list(rule), name)

    names = [n for n, _ in hf.named_modules() if n and matches(targets, n) and not (exclude and matches(exclude, n))]
    layers = config.get("layers_to_transform")
    if layers is not None and layers != []:
        wanted = {layers} if isinstance(layers, int) else set(layers)
        names = [n for n in names if _hf_layer_index(n, config.get("layers_pattern")) in wanted]
    if not names:
        raise ValueError(f"the adapter's target_modules {targets!r} match no module of {type(hf).__name__}")
    other = [f"{n} ({type(hf.get_submodule(n)).__name__})" for n in names
             if not isinstance(hf.get_submodule(n), LinearLike)]
    if other:
        raise ValueError(f"hpeft's {method} adapts linear layers only; the adapter targets {other[:5]}")
    return names


def _hf_layer_index(name: str, layers_pattern) -> int | None:
    """HF peft's layer index of a module: the first number after a `layers_pattern` component if given, else
    the first numbered component after the first two (hpeft's layer_index takes the first number anywhere)."""
    if not layers_pattern:
        found = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", name)
    else:
        patterns = [layers_pattern] if isinstance(layers_pattern, str) else layers_pattern
        found = next((m for p in patterns if (m := re.match(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.", name))), None)
    return int(found["idx"]) if found else None


def _pattern_value(patterns: dict, name: str, default):
    """HF peft's rank_pattern / alpha_pattern rule: the first key that matches the end of the name."""
    key = next((k for k in patterns if re.match(rf"(.*\.)?({k})$", name)), None)
    return default if key is None else patterns[key]


def _lora_plan(hf: nn.Module, config: dict) -> tuple[list, dict]:
    used = [f"{k} ({why})" for k, why in LORA_UNSUPPORTED.items() if config.get(k)]
    if config.get("bias", "none") != "none":
        used.append(f"bias={config['bias']!r} (trained biases)")
    if used:
        raise ValueError(f"the LoRA adapter uses {used}, which hpeft's LoRA does not have; load_hf reads plain LoRA "
                         "and DoRA (use_dora; rank_pattern, alpha_pattern, rslora and dropout included)")
    dora = bool(config.get("use_dora"))
    r, alpha = config.get("r", 8), config.get("lora_alpha", 8)
    groups: dict[tuple, list[str]] = {}
    expected = {}
    for name in _targeted(hf, config, "DoRA" if dora else "LoRA"):
        rank = int(_pattern_value(config.get("rank_pattern") or {}, name, r))
        a = float(_pattern_value(config.get("alpha_pattern") or {}, name, alpha))
        groups.setdefault((rank, a), []).append(name)
        i, o = linear_dims(hf.get_submodule(name))
        expected[f"{PREFIX}{name}.lora_A.weight"] = (name, "lora_A", (rank, i))
        expected[f"{PREFIX}{name}.lora_B.weight"] = (name, "lora_B", (o, rank))
        if dora:
            expected[f"{PREFIX}{name}.lora_magnitude_vector"] = (name, "magnitude", (o,))
    # One spec per (rank, alpha): hpeft's alpha is per spec and its per-layer ranks are per layer index, while
    # HF peft's patterns may single out any module. Full module names select exactly the modules HF peft adapts.
    method = DoRA if dora else LoRA
    specs = [method(rank=rank, alpha=a, dropout=float(config.get("lora_dropout") or 0.0),
                    rslora=bool(config.get("use_rslora")), targets=names) for (rank, a), names in groups.items()]
    return specs, expected


def _ia3_plan(hf: nn.Module, config: dict) -> tuple[list, dict]:
    names = _targeted(hf, config, "IA3")
    rule = config.get("feedforward_modules") or []
    # HF peft's feedforward rule: a regular expression over the whole name, or a plain suffix (no dot needed).
    feedforward = [n for n in names
                   if (re.fullmatch(rule, n) if isinstance(rule, str) else any(n.endswith(f) for f in rule))]
    expected = {}
    for name in names:
        i, o = linear_dims(hf.get_submodule(name))
        expected[f"{PREFIX}{name}.ia3_l"] = (name, "ia3_l", (1, i) if name in feedforward else (o, 1))
    return [IA3(targets=names, feedforward=feedforward)], expected


def _vera_plan(hf: nn.Module, config: dict) -> tuple[list, dict]:
    if config.get("bias", "none") != "none":
        raise ValueError(f"the VeRA adapter uses bias={config['bias']!r} (trained biases), which hpeft's VeRA does not "
                         "have; load_hf reads VeRA with bias='none'")
    rank, seed = config.get("r", 256), config.get("projection_prng_key", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not -2**63 <= seed <= MAX_SEED:
        raise ValueError(f"the VeRA adapter's projection_prng_key={seed!r} is no torch seed; valid seeds are integers "
                         "in [-2**63, 2**64 - 1]")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"the VeRA adapter's r={rank!r} must be a positive integer")
    names = _targeted(hf, config, "VeRA")
    dims = {name: linear_dims(hf.get_submodule(name)) for name in names}
    in_max, out_max = max(i for i, _ in dims.values()), max(o for _, o in dims.values())
    # The pair is sized to the widest target (not loaded: checked against the seed's draw by _check_projections).
    expected = {VERA_PROJECTIONS[0]: ("shared VeRA A", "A", (rank, in_max)),
                VERA_PROJECTIONS[1]: ("shared VeRA B", "B", (out_max, rank))}
    for name, (_, o) in dims.items():
        expected[f"{PREFIX}{name}.vera_lambda_b"] = (name, "vera_lambda_b", (o,))
        expected[f"{PREFIX}{name}.vera_lambda_d"] = (name, "vera_lambda_d", (rank,))
    # torch wraps a negative seed around 2**64: the same generator state, in the range hpeft's VeRA takes.
    spec = VeRA(rank=rank, targets=names, dropout=float(config.get("vera_dropout") or 0.0),
                d_initial=float(config.get("d_initial", 0.1)), projection_seed=seed % 2**64)
    return [spec], expected


def _check_projections(directory: Path, tensors: dict, spec: VeRA) -> None:
    """A saved pair must be the one the seed draws: hpeft regenerates it (and its own adapters save only the seed)."""
    if VERA_PROJECTIONS[0] not in tensors:
        return
    (rank, in_max), (out_max, _) = tensors[VERA_PROJECTIONS[0]].shape, tensors[VERA_PROJECTIONS[1]].shape
    drawn = RandomProjections(rank, in_max, out_max, spec.projection_seed)
    for key, mine in zip(VERA_PROJECTIONS, (drawn.A, drawn.B)):
        if not torch.equal(mine.to(tensors[key].dtype), tensors[key]):
            raise ValueError(f"{directory / WEIGHTS_NAME}: {key} is not the projection projection_prng_key="
                             f"{spec.projection_seed} draws, and hpeft's VeRA regenerates its projections from the seed "
                             "(were they drawn on another platform, or changed after training?)")


def _prefix_plan(hf: nn.Module, config: dict) -> tuple[list, dict]:
    submodules = config.get("num_transformer_submodules") or (2 if config.get("task_type") == "SEQ_2_SEQ_LM" else 1)
    stack = decoder_stack(hf)
    if submodules != 1 or getattr(hf.config, "is_encoder_decoder", False) or stack is None:
        raise ValueError(f"load_hf reads prefix tuning of decoder-only causal LMs (num_transformer_submodules=1, through "
                         f"the key/value cache); this adapter has num_transformer_submodules={submodules} on "
                         f"{type(hf).__name__}, whose table HF peft lays out for its sequence-to-sequence (or "
                         "encoder) route, which hpeft's prefix does not share")
    (name,) = stack_paths(hf)
    layers, kv_heads, head_dim = kv_shape(raw_module(stack))
    length, width = int(config["num_virtual_tokens"]), kv_heads * head_dim
    for field, mine in (("num_layers", layers), ("token_dim", width), ("num_attention_heads", kv_heads)):
        if config.get(field) not in (None, mine):
            raise ValueError(f"the prefix-tuning adapter has {field}={config[field]}, but the model's decoder "
                             f"({name}) needs {mine} (its layers, key/value width and key/value heads: a base of "
                             "another size?)")
    # prefix_projection=True changes nothing here: HF peft saves the MLP's output, the flattened table.
    return [PrefixCache(length=length, targets=[name])], {"prompt_embeddings": (name, "prefix", (length, layers * 2 * width))}


def _prompt_plan(hf: nn.Module, config: dict) -> tuple[list, dict]:
    # Left out, HF peft takes 2 (an encoder and a decoder prompt) for SEQ_2_SEQ_LM and 1 otherwise.
    submodules = config.get("num_transformer_submodules") or (2 if config.get("task_type") == "SEQ_2_SEQ_LM" else 1)
    if submodules != 1:
        raise ValueError(f"the prompt-tuning adapter has num_transformer_submodules={submodules} (an encoder-decoder's "
                         "encoder and decoder prompts); load_hf reads one prompt, on the (encoder's) input "
                         "embeddings (1)")
    inputs = _prompted_embeddings(hf)
    name, width, length = _module_name(hf, inputs), embedding_width(inputs), int(config["num_virtual_tokens"])
    if config.get("token_dim") not in (None, width):
        raise ValueError(f"the prompt-tuning adapter has token_dim={config['token_dim']}, but the model's input "
                         f"embeddings ({name}) are {width} wide (a base of another size?)")
    return [Prompt(length=length, targets=[name])], {"prompt_embeddings": (name, "prompt", (length, width))}

