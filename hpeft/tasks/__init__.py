from hpeft.tasks.base import Hybrid
from hpeft.tasks.ensemble import Ensemble
from hpeft.tasks.channel import ChannelEstimationTask
from hpeft.tasks.lm import LanguageModelingTask
from hpeft.tasks.mamba_variants import MambaPillars
from hpeft.tasks.registry import TASKS
from hpeft.tasks.staged import Staged
from hpeft.tasks.variants import (
    AdapterOnly,
    BitFitOnly,
    CompacterOnly,
    HybridLoRAAdapter,
    HybridMAM,
    HybridPromptLoRA,
    HybridS4,
    HybridUniPELT,
    IA3Only,
    LoRAOnly,
    PrefixOnly,
    Preset,
    Pretrain,
    PromptOnly,
    SparseAdapterOnly,
)

VARIANTS = [
    "Pretrain", "LoRAOnly", "PromptOnly", "PrefixOnly", "AdapterOnly", "IA3Only", "BitFitOnly", "CompacterOnly",
    "SparseAdapterOnly", "HybridPromptLoRA", "HybridUniPELT", "HybridMAM", "HybridLoRAAdapter", "HybridS4",
]
# MambaPillars is not in VARIANTS: its tests run every variant on the ChannelTransformer.
__all__ = ["TASKS", "VARIANTS", "MambaPillars", "ChannelEstimationTask", "LanguageModelingTask", "Hybrid", "Preset", "Staged", "Ensemble", *VARIANTS]
