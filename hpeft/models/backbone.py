"""The backbone config interface: a small typed object the CLI fills in, that builds an nn.Module once
the data's shape is known. Keeping the config apart from the module lets LightningCLI validate every
hyperparameter (and `hpeft inspect` count parameters) before any data is generated."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from torch import nn

_ARCHITECTURE_ONLY = ContextVar("architecture_only", default=False)


@contextmanager
def architecture_only() -> Iterator[None]:
    """Backbones built inside load no pretrained weights: they build the architecture their config declares,
    randomly initialised (a Mamba's `pretrained` is not read, a hub model is built from its config.json alone).
    For `hpeft inspect`: parameter counts and FLOPs do not depend on weight values."""
    token = _ARCHITECTURE_ONLY.set(True)
    try:
        yield
    finally:
        _ARCHITECTURE_ONLY.reset(token)


def building_architecture_only() -> bool:
    return _ARCHITECTURE_ONLY.get()


class BackboneConfig:
    """Base of backbone configs. Subclasses take their hyperparameters as typed __init__ arguments."""

    # Settings that change how the model computes but not its weights: a base checkpoint saved under one
    # value loads under another (dropout; Mamba's scan implementation and order, whose orders share weights).
    WEIGHTLESS: tuple[str, ...] = ("dropout",)

    @property
    def model_name(self) -> str:
        """The built model's name, e.g. "ChannelTransformer" for ChannelTransformerConfig."""
        return type(self).__name__.removesuffix("Config")

    def as_dict(self) -> dict:
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names}

    def check(self, grid_shape: tuple[int, int]) -> None:
        """Raise ValueError if this config cannot be built for data of this shape."""

    def build(self, grid_shape: tuple[int, int], in_channels: int = 2, out_channels: int = 2) -> nn.Module:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items())
        return f"{type(self).__name__}({args})"
