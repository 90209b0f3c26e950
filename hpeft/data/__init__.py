"""Data modules: Sionna channel-estimation data (channel.py), its scenario registry, language-modelling text
(text.py) and the tensor cache."""

from .cache import TensorCache, cache_key
from .channel import ChannelDataConfig, ChannelDataModule, generate, throughput
from .scenarios import SCENARIO_MIXES, SCENARIOS, scenario_names
from .text import TextDataModule

__all__ = [
    "ChannelDataModule",
    "ChannelDataConfig",
    "TextDataModule",
    "SCENARIOS",
    "SCENARIO_MIXES",
    "scenario_names",
    "TensorCache",
    "cache_key",
    "generate",
    "throughput",
]
