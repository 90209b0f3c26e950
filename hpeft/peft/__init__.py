"""The PEFT method library. Public API:

    from hpeft import peft
    model = peft.apply(model, [peft.Prompt(length=50), peft.LoRA(rank=10, targets=["q", "v", "ffn.0"])])
    peft.parameter_report(model)
    peft.save(model, "adapter.safetensors"); peft.load(model, "adapter.safetensors"); peft.merge(model)

One spec class per method, one file per method; composites (UniPELT, MAM, LoRAAdapter, S4) in hybrid.py.
GumbelMask (learned channel masks) ends in `harden(model)`, which removes the masked channels for deployment;
importance_mix.py splits modules between LoRA and IA3 by calibrated importance.
"""

from hpeft.peft.accounting import parameter_report
from hpeft.peft.adapter import Adapter
from hpeft.peft.bitfit import BitFit
from hpeft.peft.compacter import Compacter
from hpeft.peft.core import METHODS, MethodSpec, PeftLayer, applied_specs, apply, count_layers, peft_layers, remove
from hpeft.peft.gating import gate_values
from hpeft.peft.gumbel_mask import GumbelMask, harden
from hpeft.peft.hybrid import MAM, S4, LoRAAdapter, UniPELT, allocate_ranks, layer_groups
from hpeft.peft.ia3 import IA3
from hpeft.peft.importance import layer_scores, module_importance
from hpeft.peft.io import load, merge, save
from hpeft.peft.lora import LoRA, LoRALinear
from hpeft.peft.prefix import Prefix
from hpeft.peft.prompt import Prompt
from hpeft.peft.sparse import SparseAdapter

__all__ = [
    "MAM", "METHODS", "S4", "Adapter", "BitFit", "Compacter", "GumbelMask", "IA3", "LoRA", "LoRAAdapter", "LoRALinear",
    "MethodSpec", "PeftLayer", "Prefix", "Prompt", "SparseAdapter", "UniPELT", "allocate_ranks",
    "applied_specs", "apply", "count_layers", "gate_values", "harden", "layer_groups", "layer_scores", "load", "merge",
    "module_importance", "parameter_report", "peft_layers", "remove", "save",
]
