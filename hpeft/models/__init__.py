"""Base models. Each backbone has a config class (what the CLI fills in) and the nn.Module it builds."""

from hpeft.models.backbone import BackboneConfig
from hpeft.models.channel_transformer import ChannelTransformer, ChannelTransformerConfig
from hpeft.models.hf import HFCausalLMConfig

__all__ = ["BackboneConfig", "ChannelTransformer", "ChannelTransformerConfig", "HFCausalLMConfig"]
