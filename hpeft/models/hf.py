"""Any transformers causal LM as a backbone: by name or path (a pretrained checkpoint on a cluster) or by a
config dict (random init: tests and small CPU runs). PEFT methods target its modules by their own names
(`c_attn`, `q_proj`, ...). transformers is imported when the model is built, not when hpeft is."""

from __future__ import annotations

import torch
from torch import nn

from hpeft.models.architectures import shipped_architecture
from hpeft.models.backbone import BackboneConfig, building_architecture_only
from hpeft.utils.hub import local_first


class CausalLMLogits(nn.Module):
    """Wraps a transformers causal LM so that forward(input_ids) returns the logits tensor."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        logits = self.model(input_ids=input_ids).logits
        # A soft prompt (hpeft.peft.Prompt) adds leading positions; the task scores the input's own tokens.
        return logits[:, -input_ids.shape[1]:]


class HFCausalLMConfig(BackboneConfig):
    """A transformers AutoModelForCausalLM, pretrained by name/path or randomly initialised from a config."""

    def __init__(self, model: str | None = None, config: dict | None = None, dtype: str = "float32"):
        """
        Args:
            model: a model name or local path for AutoModelForCausalLM.from_pretrained (e.g. google/gemma-3-1b-it).
            config: a transformers config as a dict with its model_type (e.g. {model_type: gpt2, n_layer: 2,
                n_embd: 64, n_head: 2, vocab_size: 256}): a randomly initialised model. Give model or config.
            dtype: float32, bfloat16 or float16 weights.
        """
        if (model is None) == (config is None):
            raise ValueError(f"HFCausalLMConfig needs exactly one of model (a name or path) and config (a dict); "
                             f"got model={model!r}, config={config!r}")
        if config is not None and "model_type" not in config:
            raise ValueError(f"HFCausalLMConfig config needs a model_type (e.g. gpt2, llama); got keys {sorted(config)}")
        if dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype={dtype!r}; valid: float32, bfloat16, float16")
        self.model, self.config, self.dtype = model, None if config is None else dict(config), dtype

    @property
    def model_name(self) -> str:
        return self.model or f"{self.config['model_type']} (random init)"

    def hf_config(self):
        """The transformers config: from `config`, else the model's config.json (by name: the hub's)."""
        from transformers import AutoConfig

        if self.config is not None:
            extra = {k: v for k, v in self.config.items() if k != "model_type"}
            return AutoConfig.for_model(self.config["model_type"], **extra)
        if not building_architecture_only():
            return AutoConfig.from_pretrained(self.model)
        # `hpeft inspect` needs only config.json and must answer at once: a local folder or the Hugging Face cache
        # first, the hub only where it answers (hpeft.utils.hub), not transformers' 30 s of retries.
        try:
            config = local_first(AutoConfig.from_pretrained, self.model)
            why = "it is neither a local folder nor in the Hugging Face cache, and the hub cannot be reached"
        except (OSError, ValueError) as err:  # a local folder without one, or the hub refused (gated, unknown repo)
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            config, why = None, f"it could not be loaded ({reason})"
        if config is None and (shipped := shipped_architecture(self.model)) is not None:
            self.architecture_source = f"hpeft's copy of {self.model}'s config.json (hpeft/models/architectures)"
            return AutoConfig.for_model(shipped["model_type"], **{k: v for k, v in shipped.items() if k != "model_type"})
        if config is None:
            raise ValueError(f"model={self.model!r}: hpeft inspect builds the architecture from its config.json, but "
                             f"{why}; get it with `huggingface-cli download {self.model} config.json --local-dir DIR` "
                             f"and set model: DIR, or give the architecture as config: {{model_type: ..., ...}}")
        return config

    def check(self, data_shape: tuple[int, int]) -> None:
        seq_len, vocab = data_shape
        config = self.hf_config()
        if getattr(config, "vocab_size", vocab) < vocab:
            raise ValueError(f"the model's vocab_size={config.vocab_size} is smaller than the data's {vocab} tokens; "
                             f"use a tokenizer that matches the model (or a config with vocab_size >= {vocab})")
        positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        if positions is not None and positions < seq_len:
            raise ValueError(f"seq_len={seq_len} exceeds the model's {positions} positions; use seq_len <= {positions}")

    def build(self, data_shape: tuple[int, int], in_channels: int = 0, out_channels: int = 0) -> CausalLMLogits:
        from transformers import AutoModelForCausalLM

        dtype = getattr(torch, self.dtype)
        if self.config is not None or building_architecture_only():  # random init of the declared architecture
            model = AutoModelForCausalLM.from_config(self.hf_config(), dtype=dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(self.model, dtype=dtype)
        return CausalLMLogits(model)
