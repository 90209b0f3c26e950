"""The PEFT method library. Public API:

    from hpeft import peft
    model = peft.apply(model, [peft.Prompt(length=50), peft.LoRA(rank=10, targets=["q", "v", "ffn.0"])])
    peft.parameter_report(model)
    peft.save(model, "adapter.safetensors"); peft.load(model, "adapter.safetensors"); peft.merge(model)

One spec class per method, one file per method; composites (UniPELT, MAM, LoRAAdapter, S4) in hybrid.py.
GumbelMask (learned channel masks) ends in `harden(model)`, which removes the masked channels for deployment;
importance_mix.py splits modules between LoRA and IA3 by calibrated importance. Targets may name roles
("role:ffn") that placement.py maps per model family, and adapters take spans ("fc1->fc2"): see core.py.
"""

from hpeft.peft.accounting import parameter_report
from hpeft.peft.adapter import Adapter
from hpeft.peft.bitfit import BitFit
from hpeft.peft.compacter import Compacter
from hpeft.peft.core import (METHODS, MethodSpec, PeftLayer, PlacementError, applied_specs, apply, count_layers, peft_layers,
                             remove)
from hpeft.peft.dora import DoRA
from hpeft.peft.gating import gate_values
from hpeft.peft.gumbel_mask import GumbelMask, harden
from hpeft.peft.hf_interop import load_hf, save_hf
from hpeft.peft.hybrid import MAM, S4, LoRAAdapter, UniPELT, allocate_ranks, layer_groups
from hpeft.peft.ia3 import IA3
from hpeft.peft.importance import layer_scores, module_importance
from hpeft.peft.io import load, merge, save
from hpeft.peft.lora import LoRA, LoRALinear
from hpeft.peft.placement import FAMILIES, detect_family
from hpeft.peft.prefix import Prefix
from hpeft.peft.prefix_cache import PrefixCache
from hpeft.peft.prefix_attention import PrefixCross, PrefixEncoder
from hpeft.peft.prompt import Prompt
from hpeft.peft.sparse import SparseAdapter
from hpeft.peft.vera import VeRA

__all__ = [
    "MAM", "METHODS", "S4", "Adapter", "BitFit", "Compacter", "DoRA", "GumbelMask", "IA3", "LoRA", "LoRAAdapter",
    "LoRALinear", "MethodSpec", "PeftLayer", "Prefix", "PrefixCache", "PrefixCross", "PrefixEncoder", "Prompt", "SparseAdapter", "UniPELT", "VeRA", "allocate_ranks",
    "applied_specs", "apply", "count_layers", "gate_values", "harden", "layer_groups", "layer_scores", "load", "load_hf", "merge",
    "module_importance", "parameter_report", "peft_layers", "remove", "save", "save_hf",
    "FAMILIES", "PlacementError", "detect_family",  # placement: role targets per model family
]
