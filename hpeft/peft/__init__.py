"""The PEFT method library. Public API:

    from hpeft import peft
    model = peft.apply(model, [peft.LoRA(rank=10, targets=["q", "v", "ffn.0"])])
    peft.parameter_report(model)
    peft.save(model, "adapter.safetensors"); peft.load(model, "adapter.safetensors"); peft.merge(model)
"""

from hpeft.peft.accounting import parameter_report
from hpeft.peft.core import METHODS, MethodSpec, PeftLayer, applied_specs, apply, peft_layers
from hpeft.peft.io import load, merge, save
from hpeft.peft.lora import LoRA, LoRALinear

__all__ = [
    "METHODS",
    "LoRA",
    "LoRALinear",
    "MethodSpec",
    "PeftLayer",
    "applied_specs",
    "apply",
    "load",
    "merge",
    "parameter_report",
    "peft_layers",
    "save",
]
