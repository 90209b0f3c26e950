"""Data modules: Sionna channel-estimation data (channel.py), its scenario registry, language-modelling text
(text.py) and the tensor cache.

Names are imported on first use (as in `hpeft/__init__.py`), so `hpeft data --help` needs no torch."""

from importlib import import_module

_LAZY = {
    "ChannelDataModule": ".channel",
    "ChannelDataConfig": ".channel",
    "generate": ".channel",
    "throughput": ".channel",
    "TextDataModule": ".text",
    "SCENARIOS": ".scenarios",
    "SCENARIO_MIXES": ".scenarios",
    "scenario_names": ".scenarios",
    "TensorCache": ".cache",
    "cache_key": ".cache",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'hpeft.data' has no attribute {name!r}")
