"""Registry of wireless channel scenarios: a name -> a builder of a Sionna 3GPP TR 38.901 channel model.

Every scenario is one SISO uplink link (one UE antenna, one BS antenna). A builder takes the
:class:`LinkParams` shared by all scenarios and returns a :class:`ScenarioModel`: the Sionna channel model
plus, for the system-level models (UMi, UMa, RMa, InF), a ``drop(batch_size)`` that places a fresh random
topology of ``batch_size`` independent links before each batch is sampled.

Names: ``InF-SL``, ``InF-DL``, ``InF-SH``, ``InF-DH`` (indoor factory), ``RMa``, ``UMi``, ``UMa``,
``TDL-A`` .. ``TDL-E``, ``CDL-A`` .. ``CDL-E``; mixes (``SCENARIO_MIXES``) name several at once:
``InF`` = the four InF sub-scenarios in equal parts. Names match case-insensitively.

InF-HH is left out on purpose: Sionna's InF model accepts it, but TR 38.901 gives no calibration
topology for it (Table 7.8-7 covers SL/DL/SH/DH, and ``gen_tr38901_indoor_factory_topology`` refuses
"HH"), so a layout would have to be invented.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

__all__ = [
    "LinkParams",
    "ScenarioModel",
    "SCENARIOS",
    "SCENARIO_MIXES",
    "scenario_names",
    "canonical_scenario",
    "expand_scenario",
]

DEVICE = "cpu"  # generation runs on the CPU so that a cached data set is the same on every machine


@dataclass(frozen=True)
class LinkParams:
    """What every scenario builder needs to know about the link."""

    carrier_frequency: float
    """Carrier frequency [Hz]."""
    delay_spread_s: float
    """RMS delay spread [s] of the scalable TDL/CDL profiles; system-level models draw their own from 38.901 tables."""
    ue_speed_mps: tuple[float, float]
    """UE speed range [m/s]: each link draws its speed uniformly from [min, max], its direction at random."""


class ScenarioModel(NamedTuple):
    """A built scenario."""

    model: Any
    """A Sionna channel model, callable as ``model(batch_size, num_time_samples, sampling_frequency)``."""
    drop: Callable[[int], None] | None
    """For system-level models: sets a new random topology of ``batch_size`` links; ``None`` for TDL/CDL."""


Builder = Callable[[LinkParams], ScenarioModel]

SCENARIOS: dict[str, Builder] = {}
"""Leaf scenarios: canonical name -> builder."""

SCENARIO_MIXES: dict[str, tuple[str, ...]] = {
    "InF": ("InF-SL", "InF-DL", "InF-SH", "InF-DH"),
}
"""Names that stand for several leaf scenarios, sampled in equal parts."""


def _register(name: str, builder: Builder) -> None:
    if name in SCENARIOS:
        raise ValueError(f"scenario {name!r} registered twice")
    SCENARIOS[name] = builder


def scenario_names() -> list[str]:
    """Every accepted name: leaf scenarios, then mixes."""
    return [*SCENARIOS, *SCENARIO_MIXES]


def canonical_scenario(name: str) -> str:
    """The registered spelling of ``name`` (case-insensitive); ValueError naming it and every valid name otherwise."""
    if isinstance(name, str):
        for valid in scenario_names():
            if valid.lower() == name.strip().lower():
                return valid
    raise ValueError(f"unknown channel scenario {name!r}; valid names: {', '.join(scenario_names())}")


def expand_scenario(name: str) -> tuple[str, ...]:
    """Leaf scenarios that ``name`` stands for (itself for a leaf)."""
    name = canonical_scenario(name)
    return SCENARIO_MIXES.get(name, (name,))


# ---------------------------------------------------------------------------------------------- builders


def _single_antenna(carrier_frequency: float, pattern: str):
    from sionna.phy.channel.tr38901 import PanelArray

    return PanelArray(
        num_rows_per_panel=1,
        num_cols_per_panel=1,
        polarization="single",
        polarization_type="V",
        antenna_pattern=pattern,
        carrier_frequency=carrier_frequency,
        device=DEVICE,
    )


def _tdl(profile: str) -> Builder:
    def build(p: LinkParams) -> ScenarioModel:
        from sionna.phy.channel.tr38901 import TDL

        model = TDL(
            profile,
            delay_spread=p.delay_spread_s,
            carrier_frequency=p.carrier_frequency,
            min_speed=p.ue_speed_mps[0],
            max_speed=p.ue_speed_mps[1],
            num_rx_ant=1,
            num_tx_ant=1,
            device=DEVICE,
        )
        return ScenarioModel(model, None)

    return build


def _cdl(profile: str) -> Builder:
    def build(p: LinkParams) -> ScenarioModel:
        from sionna.phy.channel.tr38901 import CDL

        omni = _single_antenna(p.carrier_frequency, "omni")
        model = CDL(
            profile,
            delay_spread=p.delay_spread_s,
            carrier_frequency=p.carrier_frequency,
            ut_array=omni,
            bs_array=omni,
            direction="uplink",
            min_speed=p.ue_speed_mps[0],
            max_speed=p.ue_speed_mps[1],
            device=DEVICE,
        )
        return ScenarioModel(model, None)

    return build


def _single_sector(kind: str) -> Builder:
    """UMi / UMa / RMa: one sectorised BS (38.901 element pattern, pointed at its sector), one UE per link."""

    def build(p: LinkParams) -> ScenarioModel:
        from sionna.phy.channel import gen_single_sector_topology
        from sionna.phy.channel.tr38901 import RMa, UMa, UMi

        kwargs: dict[str, Any] = dict(
            carrier_frequency=p.carrier_frequency,
            ut_array=_single_antenna(p.carrier_frequency, "omni"),
            bs_array=_single_antenna(p.carrier_frequency, "38.901"),
            direction="uplink",
            device=DEVICE,
        )
        if kind == "umi":
            model = UMi(o2i_model="low", **kwargs)
        elif kind == "uma":
            model = UMa(o2i_model="low", **kwargs)
        else:
            model = RMa(**kwargs)

        def drop(batch_size: int) -> None:
            topology = gen_single_sector_topology(
                batch_size,
                1,
                kind,
                min_ut_velocity=p.ue_speed_mps[0],
                max_ut_velocity=p.ue_speed_mps[1],
                device=DEVICE,
            )
            # Sionna refuses a new batch size on a model that already holds a topology.
            model.reset_topology()
            model.set_topology(*topology, los="random")

        return ScenarioModel(model, drop)

    return build


def _inf(sub: str) -> Builder:
    """InF: Sionna's factory-hall topology has a lattice of many BSs; each link keeps the UE and its nearest BS."""

    def build(p: LinkParams) -> ScenarioModel:
        from sionna.phy import config
        from sionna.phy.channel.tr38901 import InF
        from sionna.sys import gen_tr38901_indoor_factory_topology

        omni = _single_antenna(p.carrier_frequency, "omni")
        model = InF(
            carrier_frequency=p.carrier_frequency,
            ut_array=omni,
            bs_array=omni,
            direction="uplink",
            factory_scenario=sub,
            device=DEVICE,
        )

        def drop(batch_size: int) -> None:
            topo = gen_tr38901_indoor_factory_topology(sub, batch_size, 1, device=DEVICE)
            ut_loc, bs_loc, ut_orient, bs_orient, _, in_state = topo[:6]
            rows = torch.arange(batch_size)
            nearest = torch.linalg.vector_norm(bs_loc[..., :2] - ut_loc[..., :2], dim=-1).argmin(dim=-1)
            serving = bs_loc[rows, nearest].unsqueeze(1)  # [B, 1, 3]
            # The helper leaves every UE still: draw speed and heading the same way as the other scenarios.
            g = config.torch_rng(DEVICE)
            lo, hi = p.ue_speed_mps
            speed = lo + (hi - lo) * torch.rand(batch_size, 1, generator=g, device=DEVICE)
            heading = 2 * math.pi * torch.rand(batch_size, 1, generator=g, device=DEVICE)
            velocity = torch.stack([speed * heading.cos(), speed * heading.sin(), torch.zeros_like(speed)], dim=-1)
            model.reset_topology()
            model.set_topology(
                ut_loc,
                serving,
                ut_orient,
                bs_orient[:, :1],
                velocity.to(ut_loc.dtype),
                in_state,
                los="random",
                bs_virtual_loc=serving.unsqueeze(2),  # [B, 1 BS, 1 UE, 3], no wrap-around in a hall
            )

        return ScenarioModel(model, drop)

    return build


for _sub in ("SL", "DL", "SH", "DH"):
    _register(f"InF-{_sub}", _inf(_sub))
_register("RMa", _single_sector("rma"))
_register("UMi", _single_sector("umi"))
_register("UMa", _single_sector("uma"))
for _p in "ABCDE":
    _register(f"TDL-{_p}", _tdl(_p))
for _p in "ABCDE":
    _register(f"CDL-{_p}", _cdl(_p))
del _sub, _p
