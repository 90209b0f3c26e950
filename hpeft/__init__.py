"""hpeft: hybrid parameter-efficient fine-tuning on PyTorch Lightning, with exact cost per run.

Configs name classes by their short paths (`hpeft.LoRAOnly`, `hpeft.ChannelDataModule`); they are
imported lazily so `import hpeft` (and `from hpeft import peft`) stays light."""

from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    "Hybrid": "hpeft.tasks",
    "Pretrain": "hpeft.tasks",
    "LoRAOnly": "hpeft.tasks",
    "PromptOnly": "hpeft.tasks",
    "PrefixOnly": "hpeft.tasks",
    "AdapterOnly": "hpeft.tasks",
    "IA3Only": "hpeft.tasks",
    "BitFitOnly": "hpeft.tasks",
    "CompacterOnly": "hpeft.tasks",
    "SparseAdapterOnly": "hpeft.tasks",
    "HybridPromptLoRA": "hpeft.tasks",
    "HybridUniPELT": "hpeft.tasks",
    "HybridMAM": "hpeft.tasks",
    "HybridLoRAAdapter": "hpeft.tasks",
    "HybridS4": "hpeft.tasks",
    "MambaPillars": "hpeft.tasks",
    "Staged": "hpeft.tasks",
    "Ensemble": "hpeft.tasks",
    "ChannelDataModule": "hpeft.data",
    "TextDataModule": "hpeft.data",
    "ChannelTransformer": "hpeft.models",
    "ChannelTransformerConfig": "hpeft.models",
    "MambaConfig": "hpeft.models",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hpeft' has no attribute {name!r}")
