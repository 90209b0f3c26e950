"""Base models. Each backbone has a config class (what the CLI fills in) and the nn.Module it builds."""

from hpeft.models.backbone import BackboneConfig
from hpeft.models.channel_transformer import ChannelTransformer, ChannelTransformerConfig
from hpeft.models.hf import HFCausalLMConfig
from hpeft.models.mamba import MambaChannel, MambaConfig, MambaLM

__all__ = ["BackboneConfig", "ChannelTransformer", "ChannelTransformerConfig", "HFCausalLMConfig", "MambaChannel",
           "MambaConfig", "MambaLM"]
