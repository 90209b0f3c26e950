"""Adapter files: the trainable parameters as safetensors, the method specs as JSON beside them.

`save(model, "x.safetensors")` writes x.safetensors and x.json. `load` checks the file against the
model before touching it: same methods with the same config, same parameter names and shapes.
`merge` folds mergeable methods (LoRA, IA3) into the base weights for deployment."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from hpeft.peft.core import PeftLayer, apply, applied_specs, peft_layers, set_submodule, spec_from_config
from hpeft.utils.atomic import atomic_write, atomic_write_json
from hpeft.utils.integrity import sha256

FORMAT_VERSION = 1


def _json_path(path: Path) -> Path:
    return path.with_suffix(".json")


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters by name, with training-only parameterisations (a prefix's MLP) replaced
    by what they compute, under the names the deployed layer uses."""
    state = {n: p for n, p in model.named_parameters() if p.requires_grad} | method_buffers(model)
    for path, layer in peft_layers(model):
        exported = layer.exported_state() if hasattr(layer, "exported_state") else None
        if exported is not None:
            for n, _ in layer.method_parameters():
                state.pop(f"{path}.{n}", None)
            state |= {f"{path}.{n}": t for n, t in exported.items()}
    return {n: t.detach().contiguous().cpu() for n, t in state.items()}


def method_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{path}.{n}": b for path, layer in peft_layers(model) for n, b in layer.method_buffers()}


def _method_configs(model: nn.Module) -> list[dict]:
    configs = [s.exported_config() if hasattr(s, "exported_config") else s.config() for s in applied_specs(model)]
    return json.loads(json.dumps(configs))  # as adapter.json holds them (tuples as lists, keys as strings)


def save(model: nn.Module, path: str | Path, extra: dict | None = None) -> Path:
    """Write the trainable parameters to `path` (safetensors) and the method config to `path`.json."""
    path = Path(path)
    tensors = trainable_state(model)
    if not tensors:
        raise ValueError("the model has no trainable parameters to save; apply a PEFT method or unfreeze a part first")
    meta = {
        "format_version": FORMAT_VERSION,
        "methods": _method_configs(model),
        "parameters": {n: list(t.shape) for n, t in tensors.items()},
        **(extra or {}),
    }
    atomic_write(path, lambda tmp: save_file(tensors, tmp))
    # safetensors has no checksum of its data: the JSON carries one, checked on load (a flipped byte in a
    # weight would otherwise load silently). Written second, so a half-done save never has a matching hash.
    meta["sha256"] = sha256(path)
    atomic_write_json(_json_path(path), meta)
    return path


def load(model: nn.Module, path: str | Path) -> nn.Module:
    """Load an adapter into `model`. If the model has no methods yet, the file's methods are applied first."""
    path = Path(path)
    meta_path = _json_path(path)
    if not path.is_file() or not meta_path.is_file():
        raise FileNotFoundError(f"adapter {path} needs both {path.name} and {meta_path.name}; missing: "
                                f"{[str(p) for p in (path, meta_path) if not p.is_file()]}")
    meta = json.loads(meta_path.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"adapter {path} has format_version {meta.get('format_version')!r}; this hpeft reads {FORMAT_VERSION}")
    if getattr(model, "hpeft_merged", None):
        raise ValueError(f"the model already has adapters merged into its weights ({model.hpeft_merged}); "
                         f"load {path} into an unmerged base instead")
    wanted = meta["methods"]
    present = _method_configs(model)
    if not present and wanted:
        apply(model, [spec_from_config(c) for c in wanted])
    elif present != wanted:
        raise ValueError(f"adapter {path} was saved with methods {wanted}, but the model has {present}")
    if "sha256" in meta and sha256(path) != meta["sha256"]:  # adapters written before the hash have none
        raise ValueError(f"adapter {path} is corrupt or truncated: its SHA-256 differs from the one {meta_path.name} "
                         "recorded when it was saved; use another copy or train it again")
    try:
        tensors = load_file(str(path))
    except Exception as err:  # safetensors' own error types: a cut-short header or data
        raise ValueError(f"adapter {path} is not a readable safetensors file ({err})") from None
    params = dict(model.named_parameters()) | method_buffers(model)
    missing = [n for n in tensors if n not in params]
    if missing:
        hint = ("; a prefix is saved flattened, so load it into Prefix(reparam_hidden=0)"
                if any(n.endswith(".prefix") for n in missing) else " (a base of another shape?)")
        raise ValueError(f"adapter {path} holds parameters the model lacks{hint}: {missing[:5]}")
    wanted_names = {n for n, p in model.named_parameters() if p.requires_grad} | set(method_buffers(model))
    absent = sorted(n for n in wanted_names if n not in tensors)
    if absent:
        raise ValueError(f"adapter {path} lacks trainable parameters the model has (a base of another depth?): {absent[:5]}")
    for name, t in tensors.items():
        if params[name].shape != t.shape:
            raise ValueError(
                f"adapter {path}: parameter {name} has shape {tuple(t.shape)} in the file but "
                f"{tuple(params[name].shape)} in the model (a base of another shape?)"
            )
    with torch.no_grad():
        for name, t in tensors.items():
            params[name].copy_(t)
    return model


def merge(model: nn.Module) -> nn.Module:
    """Fold every mergeable method (LoRA, IA3, BitFit) into the module it wraps and put that module back
    in its place, innermost layers first, so stacked methods fold in the order they compute. Methods that
    cannot be merged (prompts, prefixes, adapters) stay, and so do mergeable layers wrapped around them."""
    merged: list[str] = []
    while True:
        ready = [(n, layer) for n, layer in peft_layers(model)
                 if hasattr(layer, "merge") and getattr(layer, "mergeable", True)
                 and not isinstance(layer.base_layer, PeftLayer)]
        if not ready:
            break
        for name, layer in ready:
            layer.merge()
            set_submodule(model, name, layer.base_layer)
            merged.append(name)
    if merged:
        # Remembered so that loading an adapter into the merged model (applying it twice) is refused.
        model.hpeft_merged = sorted(set(getattr(model, "hpeft_merged", [])) | set(merged))
    return model
