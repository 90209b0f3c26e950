"""Uplink PUSCH channel-estimation data generated with Sionna, and the Lightning DataModule that serves it.

One sample is one SISO slot (14 OFDM symbols x 12*num_prbs subcarriers) of a 5G NR PUSCH:

- ``PUSCHTransmitter`` fills the grid (DMRS pilots + coded data),
- a TR 38.901 scenario (see :mod:`hpeft.data.scenarios`) gives the channel ``H`` on the grid through
  ``GenerateOFDMChannel``; ``H`` is normalised to unit mean power per sample (38.901 models include
  pathloss, which would otherwise dominate),
- ``ApplyOFDMChannel`` adds AWGN with ``no = 10**(-snr/10)``, the SNR drawn per sample from ``snr_db``,
- the receiver side keeps the raw per-RE LS estimate at the pilots (model input), Sionna's
  ``PUSCHLSChannelEstimator`` with linear interpolation (the LS baseline) and, for the test split,
  ``PUSCHLMMSEChannelEstimator`` with time/frequency covariances estimated from the train split.

Tensors of a split (N samples, S=14, F=12*num_prbs), complex values as [real, imag] on axis 1:

    x      [N, 2, S, F] float32  y/p at the DMRS pilot REs, 0 elsewhere
    h      [N, 2, S, F] float32  true normalised channel
    ls     [N, 2, S, F] float32  LS baseline on the full grid
    lmmse  [N, 2, S, F] float32  LMMSE baseline (test split only)
    snr_db [N]          float32
    scenario_idx [N]    int64    index into the config's scenario list (cache only, not in batches)
    pilot_mask [S, F]   bool     the DMRS REs that carry this UE's pilots

Everything random is seeded from ``seed`` and the split/scenario/batch it belongs to, so a config always
gives bit-identical tensors (on the same software stack), and splits and scenarios never share a stream.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

import lightning.pytorch as L
import torch
from torch.utils.data import Dataset

from hpeft.metrics.nmse import nmse_db
from hpeft.utils.rng import preserved_rng

from .cache import TensorCache, cache_key
from .loaders import SplitLoaders, check_shuffle_seed
from .loaders import shuffle_seed as loader_shuffle_seed
from .scenarios import DEVICE, SCENARIOS, LinkParams, canonical_scenario, expand_scenario

__all__ = [
    "ChannelDataConfig",
    "ChannelDataModule",
    "generate",
    "throughput",
    "pilot_layout",
    "channel_covariances",
    "FORMAT_VERSION",
    "SPLITS",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the generation procedure or the stored layout changes
GEN_BATCH = 256  # samples per Sionna call; part of the cache key since per-batch seeding depends on it
LMMSE_ORDER = "f-t"  # frequency first: slightly better than Sionna's default "t-f" on these grids
SPLITS = ("train", "val", "test")
BATCH_KEYS = ("x", "h", "ls", "snr_db")

_SUBCARRIER_SPACINGS_KHZ = (15, 30, 60, 120, 240, 480, 960)
_SNR_LIMITS_DB = (-50.0, 100.0)


def _complex_to_channels(z: torch.Tensor) -> torch.Tensor:
    """[..., S, F] complex -> [..., 2, S, F] float32 (real, imag)."""
    return torch.stack([z.real, z.imag], dim=-3).to(torch.float32).contiguous()


def _channels_to_complex(t: torch.Tensor) -> torch.Tensor:
    return torch.complex(t[..., 0, :, :], t[..., 1, :, :])


# ---------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class ChannelDataConfig:
    """Every setting that changes the generated samples (the data-set identity, minus the split sizes).

    Constructing one validates it; names are canonicalised (``"inf"`` -> ``"InF"``).
    """

    scenario: tuple[str, ...] = ("InF",)
    snr_db: tuple[float, float] = (0.0, 20.0)
    num_prbs: int = 6
    subcarrier_spacing: int = 30
    carrier_frequency: float = 3.5e9
    ue_speed_mps: tuple[float, float] = (0.0, 10.0)
    delay_spread_s: float = 100e-9
    dmrs_additional_position: int = 1
    dmrs_length: int = 1
    num_cdm_groups_without_data: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        scen = self.scenario
        if isinstance(scen, str):
            scen = (scen,)
        if not isinstance(scen, Sequence) or len(scen) == 0:
            raise ValueError(f"scenario must be a name or a non-empty list of names, got {self.scenario!r}")
        object.__setattr__(self, "scenario", tuple(canonical_scenario(s) for s in scen))

        snr = _pair("snr_db", self.snr_db)
        lo, hi = _SNR_LIMITS_DB
        if not (math.isfinite(snr[0]) and math.isfinite(snr[1]) and lo <= snr[0] <= snr[1] <= hi):
            raise ValueError(f"snr_db={list(snr)} is not a valid range: need {lo} <= min <= max <= {hi} dB")
        object.__setattr__(self, "snr_db", snr)

        speed = _pair("ue_speed_mps", self.ue_speed_mps)
        if not (math.isfinite(speed[1]) and 0.0 <= speed[0] <= speed[1] <= 500.0):
            raise ValueError(f"ue_speed_mps={list(speed)} is not a valid range: need 0 <= min <= max <= 500 m/s")
        object.__setattr__(self, "ue_speed_mps", speed)

        _int_in("num_prbs", self.num_prbs, 1, 275)
        if self.subcarrier_spacing not in _SUBCARRIER_SPACINGS_KHZ:
            raise ValueError(
                f"subcarrier_spacing={self.subcarrier_spacing!r} kHz is not valid; "
                f"valid values: {list(_SUBCARRIER_SPACINGS_KHZ)}"
            )
        object.__setattr__(self, "subcarrier_spacing", int(self.subcarrier_spacing))
        if not (isinstance(self.carrier_frequency, (int, float)) and 4.5e8 <= self.carrier_frequency <= 1.0e11):
            raise ValueError(
                f"carrier_frequency={self.carrier_frequency!r} Hz is out of range: need 0.45e9 .. 100e9 Hz (38.901)"
            )
        object.__setattr__(self, "carrier_frequency", float(self.carrier_frequency))
        if not (isinstance(self.delay_spread_s, (int, float)) and 1e-9 <= self.delay_spread_s <= 1e-5):
            raise ValueError(f"delay_spread_s={self.delay_spread_s!r} is out of range: need 1e-9 .. 1e-5 s")
        object.__setattr__(self, "delay_spread_s", float(self.delay_spread_s))
        _int_in("dmrs_length", self.dmrs_length, 1, 2)
        _int_in("dmrs_additional_position", self.dmrs_additional_position, 0, 3 if self.dmrs_length == 1 else 1)
        _int_in("num_cdm_groups_without_data", self.num_cdm_groups_without_data, 1, 2)
        _int_in("seed", self.seed, 0, 2**63 - 1)

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(OFDM symbols, subcarriers) of one sample."""
        return (14, 12 * self.num_prbs)

    def link_params(self) -> LinkParams:
        return LinkParams(self.carrier_frequency, self.delay_spread_s, self.ue_speed_mps)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, lists instead of tuples."""
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _pair(name: str, value: Any) -> tuple[float, float]:
    try:
        a, b = value
        return (float(a), float(b))
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} must be a pair (min, max)") from None


def _int_in(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name}={value!r} is not valid: need an integer in [{lo}, {hi}]")


def _derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any JSON-able parts: distinct parts give independent streams."""
    digest = hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _allocate(scenarios: Sequence[str], n: int) -> list[tuple[int, str, int]]:
    """Split ``n`` samples evenly over the listed scenarios, and a mix's share evenly over its members.

    Returns (slot, leaf scenario, count) with slot the position in ``scenarios`` (for seeding and labels)."""
    out = []
    for slot, (name, share) in enumerate(zip(scenarios, _even(n, len(scenarios)))):
        leaves = expand_scenario(name)
        for leaf, count in zip(leaves, _even(share, len(leaves))):
            if count:
                out.append((slot, leaf, count))
    return out


def _even(n: int, k: int) -> list[int]:
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


# ---------------------------------------------------------------------------------------------- Sionna parts


def _pusch_config(cfg: ChannelDataConfig):
    from sionna.phy.nr import PUSCHConfig

    pc = PUSCHConfig()
    pc.carrier.n_size_grid = cfg.num_prbs
    pc.carrier.subcarrier_spacing = cfg.subcarrier_spacing
    pc.dmrs.length = cfg.dmrs_length
    pc.dmrs.additional_position = cfg.dmrs_additional_position
    pc.dmrs.num_cdm_groups_without_data = cfg.num_cdm_groups_without_data
    pc.check_config()
    return pc


def pilot_layout(cfg: ChannelDataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(pilot_mask [S, F] bool, pilots [S, F] complex64): REs carrying this UE's DMRS and their symbols.

    Sionna's PUSCH pilot pattern also marks the REs of the other CDM group (left empty for data); those carry a
    zero pilot and are not pilot REs here."""
    from sionna.phy.nr import PUSCHPilotPattern

    return _pilot_grid(PUSCHPilotPattern([_pusch_config(cfg)], device=DEVICE))


def _pilot_grid(pattern) -> tuple[torch.Tensor, torch.Tensor]:
    mask = pattern.mask[0, 0].bool().cpu()  # [S, F]
    values = pattern.pilots[0, 0].cpu()  # one per marked RE, in row-major (symbol, subcarrier) order
    grid = torch.zeros(mask.shape, dtype=torch.complex64)
    grid[mask] = values.to(torch.complex64)
    return grid.abs() > 0, grid


def channel_covariances(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Empirical (time [S, S], frequency [F, F]) covariance matrices, complex64, of channels ``h`` [N, 2, S, F]."""
    hc = _channels_to_complex(h.to(torch.float64))
    n, s, f = hc.shape
    cov_freq = torch.einsum("nsf,nsg->fg", hc, hc.conj()) / (n * s)
    cov_time = torch.einsum("nsf,ntf->st", hc, hc.conj()) / (n * f)
    return cov_time.to(torch.complex64), cov_freq.to(torch.complex64)


@contextmanager
def _sionna_rng_sandbox() -> Iterator[None]:
    """Setting ``sionna.phy.config.seed`` also reseeds torch's global generator: keep both as they were."""
    from sionna.phy import config

    prev_seed = config.seed
    prev_states = {d: config.torch_rng(d).get_state() for d in config.available_devices}
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            config.seed = prev_seed
            for d, state in prev_states.items():
                config.torch_rng(d).set_state(state)


def _progress(enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class _Rate(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"{task.speed or 0.0:,.0f} samples/s")

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )


def generate(
    config: ChannelDataConfig,
    split: str,
    n: int,
    *,
    lmmse_cov: tuple[torch.Tensor, torch.Tensor] | None = None,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Generate ``n`` samples of ``split`` for ``config`` (no cache involved; usable standalone).

    ``lmmse_cov``: (time, frequency) covariances from :func:`channel_covariances`; adds the "lmmse" tensor.
    The split name only selects the random streams: any name works (e.g. "bench"). The caller's global random
    generators are left as they were: importing Sionna reseeds torch's generator at random, and its `config.seed`
    reseeds it on purpose, so without this a run's training draws would depend on whether its data was cached.
    """
    with preserved_rng():
        return _generate(config, split, n, lmmse_cov=lmmse_cov, progress=progress)


def _generate(config, split, n, *, lmmse_cov, progress) -> dict[str, torch.Tensor]:
    from sionna.phy import config as sn_config
    from sionna.phy.channel import ApplyOFDMChannel, GenerateOFDMChannel
    from sionna.phy.nr import PUSCHLMMSEChannelEstimator, PUSCHLSChannelEstimator, PUSCHTransmitter

    if n <= 0:
        raise ValueError(f"n={n} must be positive")
    cfg = config
    s, f = cfg.grid_shape
    dmrs = (cfg.dmrs_length, cfg.dmrs_additional_position, cfg.num_cdm_groups_without_data)
    tx = PUSCHTransmitter(_pusch_config(cfg), return_bits=True, device=DEVICE)
    rg = tx.resource_grid
    pilot_mask, pilots = _pilot_grid(tx.pilot_pattern)
    safe_pilots = torch.where(pilot_mask, pilots, torch.ones_like(pilots))
    if (rg.num_ofdm_symbols, rg.fft_size) != (s, f):
        raise RuntimeError(f"Sionna resource grid is {rg.num_ofdm_symbols}x{rg.fft_size}, expected {s}x{f}")
    apply_channel = ApplyOFDMChannel(device=DEVICE)
    ls_estimator = PUSCHLSChannelEstimator(rg, *dmrs, interpolation_type="lin", device=DEVICE)
    lmmse_estimator = None
    if lmmse_cov is not None:
        cov_time, cov_freq = lmmse_cov
        lmmse_estimator = PUSCHLMMSEChannelEstimator(
            rg, *dmrs, cov_mat_time=cov_time, cov_mat_freq=cov_freq, order=LMMSE_ORDER, device=DEVICE
        )

    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("x", "h", "ls", "lmmse", "snr_db", "scenario_idx")}
    lo, hi = cfg.snr_db
    with _sionna_rng_sandbox(), torch.no_grad(), _progress(progress) as bar:
        task = bar.add_task(f"{split}", total=n)
        for slot, leaf, count in _allocate(cfg.scenario, n):
            bar.update(task, description=f"{split} {leaf}")
            scenario = SCENARIOS[leaf](cfg.link_params())
            channel = GenerateOFDMChannel(scenario.model, rg, device=DEVICE)
            for b, start in enumerate(range(0, count, GEN_BATCH)):
                size = min(GEN_BATCH, count - start)
                batch_seed = _derive_seed(cfg.seed, split, slot, leaf, b)
                sn_config.seed = batch_seed  # every Sionna draw below comes from this stream
                if scenario.drop is not None:
                    scenario.drop(size)
                h = channel(size)[:, 0, 0, 0, 0]  # [B, S, F]
                h = h / h.abs().square().mean(dim=(-2, -1), keepdim=True).sqrt()
                x_tx = tx(size)[0]  # [B, 1 tx, 1 ant, S, F]

                g = torch.Generator().manual_seed(_derive_seed(batch_seed, "snr"))
                snr = lo + (hi - lo) * torch.rand(size, generator=g, dtype=torch.float64)
                no = torch.pow(10.0, -snr / 10.0).to(torch.float32).view(size, 1, 1)  # [B, rx, rx_ant]
                y = apply_channel(x_tx, h[:, None, None, None, None], no)  # [B, 1, 1, S, F]

                h_ls = ls_estimator(y, no)[0][:, 0, 0, 0, 0]
                y0 = y[:, 0, 0]
                x_in = torch.where(pilot_mask, y0 / safe_pilots, torch.zeros_like(y0))
                out["x"].append(_complex_to_channels(x_in))
                out["h"].append(_complex_to_channels(h))
                out["ls"].append(_complex_to_channels(h_ls))
                if lmmse_estimator is not None:
                    out["lmmse"].append(_complex_to_channels(lmmse_estimator(y, no)[0][:, 0, 0, 0, 0]))
                out["snr_db"].append(snr.to(torch.float32))
                out["scenario_idx"].append(torch.full((size,), slot, dtype=torch.int64))
                bar.advance(task, size)

    tensors = {k: torch.cat(v) for k, v in out.items() if v}
    tensors["pilot_mask"] = pilot_mask
    return tensors


def throughput(config: ChannelDataConfig, n: int = 1024, *, lmmse: bool = False) -> dict[str, Any]:
    """Time :func:`generate` for ``n`` samples; returns a JSON-able record with ``samples_per_s``.

    ``lmmse=True`` also times the LMMSE baseline (covariances from an extra ``n`` samples, not timed)."""
    cov = None
    if lmmse:
        cov = channel_covariances(generate(config, "bench-cov", n, progress=False)["h"])
    t0 = time.perf_counter()
    generate(config, "bench", n, lmmse_cov=cov, progress=False)
    seconds = time.perf_counter() - t0
    return {
        "scenario": list(config.scenario),
        "grid_shape": list(config.grid_shape),
        "lmmse": lmmse,
        "samples": n,
        "seconds": round(seconds, 4),
        "samples_per_s": round(n / seconds, 1),
        "torch_threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------------------------------------- DataModule


class _DictDataset(Dataset):
    """Rows of equally long tensors, served as dicts (the default collate stacks them into batch dicts)."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        lengths = {len(t) for t in tensors.values()}
        if len(lengths) != 1:
            raise ValueError(f"tensors of unequal length: { {k: len(t) for k, t in tensors.items()} }")
        self.tensors = tensors
        self._len = lengths.pop()

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: t[i] for k, t in self.tensors.items()}


class ChannelDataModule(SplitLoaders, L.LightningDataModule):
    """Uplink PUSCH channel estimation (SISO) on 3GPP TR 38.901 channels simulated with Sionna.

    Batches are dicts: "x" (LS at pilots, zeros elsewhere) [B, 2, S, F], "h" (target) [B, 2, S, F],
    "ls" (LS baseline) [B, 2, S, F], "snr_db" [B], and for the test split also "lmmse" [B, 2, S, F].
    Data are generated once by ``prepare_data`` and cached under ``cache_dir``.

    Args:
        scenario: Channel scenario, or a list of them sharing the samples equally. One of InF-SL, InF-DL, InF-SH,
            InF-DH, RMa, UMi, UMa, TDL-A..TDL-E, CDL-A..CDL-E, or InF (the four InF sub-scenarios in equal parts).
        snr_db: SNR range [dB]; each sample draws its SNR uniformly from [min, max]. Noise variance is
            10**(-snr/10) relative to the unit-power channel.
        num_prbs: Bandwidth in physical resource blocks (12 subcarriers each), 1..275.
        subcarrier_spacing: Subcarrier spacing [kHz]: 15, 30, 60, 120, 240, 480 or 960.
        carrier_frequency: Carrier frequency [Hz].
        ue_speed_mps: UE speed range [m/s]; each link draws its speed uniformly from [min, max].
        delay_spread_s: RMS delay spread [s] of the TDL/CDL profiles (system-level scenarios use 38.901's).
        dmrs_additional_position: Additional DMRS symbols (0..3; 0..1 when dmrs_length is 2).
        dmrs_length: DMRS length: 1 (single-symbol) or 2 (double-symbol).
        num_cdm_groups_without_data: DMRS CDM groups without data (1 or 2); 2 leaves the other group's REs empty
            and boosts the pilots by 3 dB.
        num_train: Training samples.
        num_val: Validation samples.
        num_test: Test samples.
        batch_size: Samples per batch in every data loader.
        num_workers: DataLoader worker processes.
        seed: Seed of everything random in the data: same settings and seed give identical tensors.
        cache_dir: Folder of the on-disk data cache (relative to the working directory unless absolute).
        lmmse: Compute the LMMSE baseline for the test split (covariances estimated on the train split).
        progress: Show a progress bar while generating.
        shuffle: Shuffle the train split each epoch (seeded). Off, a 1-process run and a DDP run with the same
            global batch see the same samples in each step (DistributedSampler deals them out in turn).
        shuffle_seed: Seed of the train shuffle: null derives it from ``seed``; "global" follows the run's
            seed_everything (runs of several seeds then differ in data order too, as a study's seeds do).
    """

    def __init__(
        self,
        scenario: str | list[str] = "InF",
        snr_db: tuple[float, float] = (0.0, 20.0),
        num_prbs: int = 6,
        subcarrier_spacing: int = 30,
        carrier_frequency: float = 3.5e9,
        ue_speed_mps: tuple[float, float] = (0.0, 10.0),
        delay_spread_s: float = 100e-9,
        dmrs_additional_position: int = 1,
        dmrs_length: int = 1,
        num_cdm_groups_without_data: int = 2,
        num_train: int = 16384,
        num_val: int = 2048,
        num_test: int = 4096,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str = "data_cache",
        lmmse: bool = True,
        progress: bool = True,
        shuffle: bool = True,
        shuffle_seed: int | str | None = None,
    ) -> None:
        super().__init__()
        # Validate everything before anything touches the disk or Sionna.
        self.config = ChannelDataConfig(
            scenario=(scenario,) if isinstance(scenario, str) else tuple(scenario),
            snr_db=snr_db,
            num_prbs=num_prbs,
            subcarrier_spacing=subcarrier_spacing,
            carrier_frequency=carrier_frequency,
            ue_speed_mps=ue_speed_mps,
            delay_spread_s=delay_spread_s,
            dmrs_additional_position=dmrs_additional_position,
            dmrs_length=dmrs_length,
            num_cdm_groups_without_data=num_cdm_groups_without_data,
            seed=seed,
        )
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        for split, size in self.sizes.items():
            _int_in(f"num_{split}", size, 1, 10**9)
        _int_in("batch_size", batch_size, 1, 10**9)
        _int_in("num_workers", num_workers, 0, 1024)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.cache = TensorCache(cache_dir)
        self.lmmse = bool(lmmse)
        self.progress = bool(progress)
        self.shuffle = bool(shuffle)
        check_shuffle_seed(shuffle_seed)
        self._shuffle_seed = shuffle_seed
        self.in_channels = 2
        self.generated: list[str] = []  # splits this instance generated (not loaded): lets tests see cache hits
        self._data: dict[str, dict[str, torch.Tensor]] = {}
        # No save_hyperparameters(): Lightning refuses to log a run whose model and data modules share a
        # hyperparameter name (seed, batch_size) with different values; describe() feeds the run record instead.

    # ---------------------------------------------------------------- facts about the data

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(S, F): OFDM symbols and subcarriers of one sample."""
        return self.config.grid_shape

    @property
    def data_shape(self) -> tuple[int, int]:
        """What the model is built for (linked to the model by the CLI): the grid."""
        return self.grid_shape

    @cached_property
    def pilot_mask(self) -> torch.Tensor:
        """[S, F] bool: the REs where "x" holds an LS estimate (this UE's DMRS pilots)."""
        return pilot_layout(self.config)[0]

    def describe(self, load: bool = True) -> dict[str, Any]:
        """JSON-able summary of the data for the run record."""
        c = self.config
        return {
            "name": "channel",
            "scenario": list(c.scenario),
            "snr_db": list(c.snr_db),
            "num_prbs": c.num_prbs,
            "subcarrier_spacing_khz": c.subcarrier_spacing,
            "carrier_frequency_hz": c.carrier_frequency,
            "ue_speed_mps": list(c.ue_speed_mps),
            "delay_spread_s": c.delay_spread_s,
            "dmrs": {
                "length": c.dmrs_length,
                "additional_position": c.dmrs_additional_position,
                "num_cdm_groups_without_data": c.num_cdm_groups_without_data,
            },
            "grid_shape": list(self.grid_shape),
            "num_pilots": int(self.pilot_mask.sum()),
            "num_train": self.sizes["train"],
            "num_val": self.sizes["val"],
            "num_test": self.sizes["test"],
            "seed": c.seed,
            "shuffle_seed": self.shuffle_seed,
            "format": FORMAT_VERSION,
        }

    # ---------------------------------------------------------------- cache

    def cache_key(self, split: str) -> str:
        """Cache key of ``split``: a hash of everything that changes its tensors."""
        if split not in SPLITS:
            raise ValueError(f"split={split!r} is not valid; valid splits: {list(SPLITS)}")
        import sionna

        spec: dict[str, Any] = {
            "kind": "hpeft.data.channel",
            "format": FORMAT_VERSION,
            "sionna": sionna.__version__,
            "gen_batch": GEN_BATCH,
            "device": DEVICE,
            "config": self.config.to_dict(),
            "split": split,
            "n": self.sizes[split],
        }
        if split == "test" and self.lmmse:
            spec["lmmse"] = {"order": LMMSE_ORDER, "covariance_from": self.cache_key("train")}
        return cache_key(spec)

    def _expected_shapes(self, split: str) -> dict[str, tuple[int, ...]]:
        n, (s, f) = self.sizes[split], self.grid_shape
        shapes = {k: (n, 2, s, f) for k in ("x", "h", "ls")}
        shapes.update(snr_db=(n,), scenario_idx=(n,), pilot_mask=(s, f))
        if split == "test" and self.lmmse:
            shapes["lmmse"] = (n, 2, s, f)
        return shapes

    def _split(self, split: str) -> dict[str, torch.Tensor]:
        """Tensors of ``split``: from memory, else from the verified cache, else generated and cached."""
        if split in self._data:
            return self._data[split]
        key = self.cache_key(split)
        with self.cache.lock(key):
            tensors = self.cache.load(key, self._expected_shapes(split))
            if tensors is None:
                cov = None
                if split == "test" and self.lmmse:
                    cov = channel_covariances(self._split("train")["h"])
                t0 = time.perf_counter()
                tensors = generate(self.config, split, self.sizes[split], lmmse_cov=cov, progress=self.progress)
                seconds = time.perf_counter() - t0
                rate = self.sizes[split] / seconds
                log.info("generated %d %s samples in %.1f s (%.0f samples/s)", self.sizes[split], split, seconds, rate)
                meta = {
                    "config": self.config.to_dict(),
                    "split": split,
                    "n": self.sizes[split],
                    "format": FORMAT_VERSION,
                    "generation": {"seconds": round(seconds, 3), "samples_per_s": round(rate, 1)},
                }
                self.cache.save(key, tensors, meta)
                self.generated.append(split)
        self._data[split] = tensors
        return tensors

    # ---------------------------------------------------------------- Lightning hooks

    def prepare_data(self) -> None:
        """Generate every split that is not in the cache yet (verifying those that are)."""
        for split in SPLITS:
            self._split(split)

    def setup(self, stage: str | None = None) -> None:
        """Load the splits ``stage`` needs ("fit": train+val, "validate": val, "test"/"predict": test, None: all)."""
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in needed.get(stage, SPLITS) if stage is not None else SPLITS:
            self._split(split)

    def _dataset(self, split: str) -> _DictDataset:
        tensors = self._split(split)
        keys = BATCH_KEYS + (("lmmse",) if "lmmse" in tensors else ())
        return _DictDataset({k: tensors[k] for k in keys})

    @property
    def shuffle_seed(self) -> int:
        return loader_shuffle_seed(self._shuffle_seed, _derive_seed(self.config.seed, "shuffle"))

    # ---------------------------------------------------------------- baselines

    def baseline_nmse_db(self, split: str = "test") -> dict[str, float]:
        """NMSE [dB] of the classical estimators over ``split``: {"ls": ..., "lmmse": ... (if present)}."""
        tensors = self._split(split)
        return {k: nmse_db(tensors[k], tensors["h"]) for k in ("ls", "lmmse") if k in tensors}
