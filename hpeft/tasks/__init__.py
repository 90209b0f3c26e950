from hpeft.tasks.base import Hybrid
from hpeft.tasks.channel import TASKS, ChannelEstimationTask
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
__all__ = ["TASKS", "VARIANTS", "ChannelEstimationTask", "Hybrid", "Preset", *VARIANTS]
