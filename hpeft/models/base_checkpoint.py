"""Base-model checkpoints: the pretrained backbone's weights (safetensors) with its config and the data
shape it was built for in the file's metadata, so a PEFT run can check it loads the base it expects."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_model
from torch import nn

from hpeft.models.backbone import BackboneConfig
from hpeft.utils.atomic import atomic_write


def save_base(model: nn.Module, config: BackboneConfig, grid_shape: tuple[int, int], path: str | Path) -> Path:
    meta = {"backbone": type(config).__name__, "config": json.dumps(config.as_dict()), "grid_shape": json.dumps(list(grid_shape))}
    # safetensors' save_model/load_model store a tied weight (GPT-2's or Mamba's lm_head = embeddings) once;
    # save_file refuses tensors that share memory.
    return atomic_write(path, lambda tmp: save_model(model, str(tmp), metadata=meta))


def load_base(model: nn.Module, config: BackboneConfig, grid_shape: tuple[int, int], path: str | Path) -> None:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"base_checkpoint={str(path)!r} not found; pretrain one first (e.g. `hpeft fit --config "
            f"configs/channel/pretrain.yaml`) or point base_checkpoint at an existing file"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:  # safetensors' own error types
        raise ValueError(f"base checkpoint {path} is not a readable safetensors file ({err}); export it again") from None
    saved = {"backbone": meta.get("backbone"), "config": json.loads(meta.get("config", "null")),
             "grid_shape": json.loads(meta.get("grid_shape", "null"))}
    wanted = {"backbone": type(config).__name__, "config": config.as_dict(), "grid_shape": list(grid_shape)}
    # Settings that change no weight (dropout, a Mamba's scan order) may differ between the base and the run.
    strip = lambda c: {k: v for k, v in (c or {}).items() if k not in config.WEIGHTLESS}  # noqa: E731
    if (saved["backbone"], strip(saved["config"]), saved["grid_shape"]) != (wanted["backbone"], strip(wanted["config"]), wanted["grid_shape"]):
        raise ValueError(f"base checkpoint {path} holds {saved}, but this run builds {wanted}; "
                         "use the same backbone settings and data grid as the pretraining run")
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
    if "pos" in keys and "embed.weight" in keys and "embed.proj.weight" in model.state_dict():
        # Written before the token embedding became its own module (hpeft 0.1): same weights, other names.
        state = {{"pos": "embed.pos", "embed.weight": "embed.proj.weight", "embed.bias": "embed.proj.bias"}.get(k, k): v
                 for k, v in load_file(str(path)).items()}
        model.load_state_dict(state)
        return
    missing, unexpected = load_model(model, str(path), strict=False, device=str(next(model.parameters()).device))
    # A tied weight is stored once (Mamba's lm_head = its embeddings); a load_state_dict pre-hook that re-adds
    # the alias for transformers checkpoints makes safetensors report it as unexpected. Only those may differ.
    params = dict(model.named_parameters(remove_duplicate=False))
    aliases = {k for k in unexpected if k in params and any(params[k] is p for n, p in params.items() if n != k)}
    if missing or set(unexpected) - aliases:
        raise ValueError(f"base checkpoint {path} does not fit this model: missing {sorted(missing)}, "
                         f"unexpected {sorted(set(unexpected) - aliases)}")
