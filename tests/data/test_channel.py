"""Channel data generated with real Sionna at tiny sizes: determinism, layout, physics, validation, scenarios."""

import json
import math

import pytest
import torch

from hpeft.data import SCENARIOS, ChannelDataModule
from hpeft.data.channel import ChannelDataConfig, channel_covariances, generate, pilot_layout
from hpeft.metrics import nmse_db
from hpeft.data.scenarios import SCENARIO_MIXES, expand_scenario


def _cfg(**kw):
    args = dict(scenario=("TDL-A",), num_prbs=2)
    args.update(kw)
    return ChannelDataConfig(**args)


# ---------------------------------------------------------------------------------------------- determinism


def test_same_seed_same_tensors_other_seed_differs():
    cfg = _cfg(scenario=("InF-SL", "TDL-C"), seed=3)
    a = generate(cfg, "train", 12, progress=False)
    b = generate(cfg, "train", 12, progress=False)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    c = generate(_cfg(scenario=("InF-SL", "TDL-C"), seed=4), "train", 12, progress=False)
    for k in ("x", "h", "ls", "snr_db"):
        assert not torch.equal(a[k], c[k]), k


def test_splits_and_scenarios_use_distinct_streams():
    cfg = _cfg(scenario=("TDL-A", "TDL-A"))
    train = generate(cfg, "train", 8, progress=False)
    val = generate(cfg, "val", 8, progress=False)
    assert not torch.equal(train["h"], val["h"])
    # The same scenario listed twice: the two halves are different draws.
    assert not torch.equal(train["h"][:4], train["h"][4:])
    assert train["scenario_idx"].tolist() == [0] * 4 + [1] * 4


def test_generation_leaves_global_rngs_alone():
    from sionna.phy import config

    torch.manual_seed(123)
    config.seed = 7
    expected_torch = torch.rand(3)
    expected_sionna = torch.rand(3, generator=config.torch_rng("cpu"))
    torch.manual_seed(123)
    config.seed = 7
    generate(_cfg(), "train", 4, progress=False)
    assert torch.equal(torch.rand(3), expected_torch)
    assert torch.equal(torch.rand(3, generator=config.torch_rng("cpu")), expected_sionna)


# ---------------------------------------------------------------------------------------------- layout and physics


@pytest.fixture(scope="module")
def inf_module(tmp_path_factory):
    dm = ChannelDataModule(scenario="InF", num_prbs=2, num_train=64, num_val=8, num_test=32, batch_size=16,
                           cache_dir=str(tmp_path_factory.mktemp("cache")), progress=False)
    dm.prepare_data()
    dm.setup(None)
    return dm


def test_shapes_and_pilot_mask(inf_module):
    dm = inf_module
    s, f = dm.grid_shape
    assert (s, f) == (14, 24) and dm.in_channels == 2
    mask = dm.pilot_mask
    assert mask.shape == (s, f) and mask.dtype == torch.bool
    # DMRS type 1, one port, additional position 1: every other subcarrier of OFDM symbols 2 and 11.
    assert mask.sum() == 2 * f // 2
    assert mask[[2, 11]].any(dim=1).all() and mask.sum(dim=1)[[2, 11]].tolist() == [f // 2, f // 2]

    for split, n in (("train", 64), ("val", 8), ("test", 32)):
        t = dm._split(split)
        assert torch.equal(t["pilot_mask"], mask)
        for k in ("x", "h", "ls"):
            assert t[k].shape == (n, 2, s, f) and t[k].dtype == torch.float32
        assert ("lmmse" in t) == (split == "test")
        assert t["x"][:, :, ~mask].abs().max() == 0  # zero exactly off the pilots ...
        assert (t["x"][:, :, mask].abs().sum(dim=1) > 0).all()  # ... and non-zero on every pilot RE
        power = t["h"].square().sum(dim=1).mean(dim=(-2, -1))
        torch.testing.assert_close(power, torch.ones(n), atol=1e-4, rtol=0)
        assert t["snr_db"].min() >= 0 and t["snr_db"].max() <= 20

    batch = next(iter(dm.test_dataloader()))
    assert set(batch) == {"x", "h", "ls", "lmmse", "snr_db"} and batch["x"].shape == (16, 2, s, f)
    assert set(next(iter(dm.train_dataloader()))) == {"x", "h", "ls", "snr_db"}


def test_pilot_layout_matches_transmitted_grid():
    from sionna.phy.nr import PUSCHTransmitter

    from hpeft.data.channel import _pusch_config

    cfg = _cfg(num_prbs=3)
    mask, pilots = pilot_layout(cfg)
    x = PUSCHTransmitter(_pusch_config(cfg))(2)[0][:, 0, 0]  # [2, S, F]
    assert torch.equal(x[:, mask], pilots[mask].expand(2, -1))
    # The other CDM group's REs on the DMRS symbols are left empty (num_cdm_groups_without_data=2).
    dmrs_symbols = mask.any(dim=1)
    assert (x[:, dmrs_symbols][:, ~mask[dmrs_symbols]] == 0).all()


def test_baselines_and_describe(inf_module):
    nmse = inf_module.baseline_nmse_db("test")
    assert set(nmse) == {"ls", "lmmse"}
    assert -25 < nmse["ls"] < -8
    assert nmse["lmmse"] < nmse["ls"]  # LMMSE with the train covariances beats LS
    assert set(inf_module.baseline_nmse_db("val")) == {"ls"}
    d = inf_module.describe()
    json.dumps(d)
    assert d["scenario"] == ["InF"] and d["snr_db"] == [0.0, 20.0]
    assert d["num_prbs"] == 2 and d["grid_shape"] == [14, 24]


def test_train_loader_order_is_seeded(inf_module):
    a = next(iter(inf_module.train_dataloader()))["snr_db"]
    b = next(iter(inf_module.train_dataloader()))["snr_db"]
    assert torch.equal(a, b)
    assert not torch.equal(a, inf_module._split("train")["snr_db"][:16])  # shuffled


def test_ls_improves_with_snr():
    """Physics check: per-RE LS noise is no/|p|^2 (pilots boosted to |p|^2 = 2) and the interpolated LS
    baseline gets ~20 dB better from 0 dB to 20 dB SNR."""
    results = {}
    for snr in (0.0, 20.0):
        t = generate(_cfg(scenario=("UMi",), snr_db=(snr, snr)), "test", 64, progress=False)
        m = t["pilot_mask"]
        results[snr] = (nmse_db(t["ls"], t["h"]), nmse_db(t["x"][:, :, m], t["h"][:, :, m]))
    (ls0, raw0), (ls20, raw20) = results[0.0], results[20.0]
    expected_raw = 10 * math.log10(0.5)  # no = 1 at 0 dB, divided by |p|^2 = 2
    assert abs(raw0 - expected_raw) < 0.6 and abs(raw20 - (expected_raw - 20)) < 0.6
    assert -10 < ls0 < -3, ls0  # CDM despreading averages pilot pairs: a bit better than the raw -3 dB
    assert ls20 < ls0 - 12, (ls0, ls20)


def test_channel_covariances_are_unit_trace():
    t = generate(_cfg(), "train", 16, progress=False)
    cov_t, cov_f = channel_covariances(t["h"])
    assert cov_t.shape == (14, 14) and cov_f.shape == (24, 24)
    torch.testing.assert_close(cov_f.diagonal().real.mean(), torch.tensor(1.0), atol=1e-4, rtol=0)
    torch.testing.assert_close(cov_f, cov_f.conj().T)


# ---------------------------------------------------------------------------------------------- scenarios


def test_every_scenario_generates():
    leaves = list(SCENARIOS)
    for family in ("InF-", "RMa", "UMi", "UMa", "TDL-", "CDL-"):
        assert any(name.startswith(family) for name in leaves), family
    t = generate(_cfg(scenario=tuple(leaves)), "train", 2 * len(leaves), progress=False)
    assert t["scenario_idx"].tolist() == [i for i in range(len(leaves)) for _ in range(2)]
    for k in ("x", "h", "ls"):
        assert torch.isfinite(t[k]).all(), k
    power = t["h"].square().sum(dim=1).mean(dim=(-2, -1))
    torch.testing.assert_close(power, torch.ones(len(power)), atol=1e-4, rtol=0)
    # Distinct draws everywhere: no two samples share a channel.
    flat = t["h"].flatten(1)
    assert torch.cdist(flat, flat).add(torch.eye(len(flat))).min() > 1e-3


def test_inf_mix_and_names():
    assert expand_scenario("inf") == SCENARIO_MIXES["InF"] == ("InF-SL", "InF-DL", "InF-SH", "InF-DH")
    assert ChannelDataConfig(scenario=("umi", "tdl-b")).scenario == ("UMi", "TDL-B")


# ---------------------------------------------------------------------------------------------- validation


def test_unknown_scenario_names_it_and_valid_ones(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(ValueError) as e:
        ChannelDataModule(scenario=["UMi", "Moon-Base"], cache_dir=str(cache))
    assert "Moon-Base" in str(e.value) and "UMi" in str(e.value) and "InF-SL" in str(e.value)
    assert not cache.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"snr_db": (20.0, 0.0)}, ["snr_db", "20.0", "min <= max"]),
        ({"snr_db": (0.0, float("nan"))}, ["snr_db", "nan"]),
        ({"num_prbs": 0}, ["num_prbs=0", "[1, 275]"]),
        ({"num_prbs": 300}, ["num_prbs=300", "[1, 275]"]),
        ({"num_train": 0}, ["num_train=0", "[1,"]),
        ({"num_test": -5}, ["num_test=-5"]),
        ({"subcarrier_spacing": 45}, ["subcarrier_spacing=45", "30"]),
        ({"ue_speed_mps": (5.0, 1.0)}, ["ue_speed_mps", "min <= max"]),
        ({"dmrs_length": 2, "dmrs_additional_position": 3}, ["dmrs_additional_position=3", "[0, 1]"]),
    ],
)
def test_bad_settings_rejected(tmp_path, kwargs, words):
    with pytest.raises(ValueError) as e:
        ChannelDataModule(cache_dir=str(tmp_path / "cache"), **kwargs)
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    assert not (tmp_path / "cache").exists()


def test_generating_data_leaves_the_callers_random_state_alone(tmp_path):
    """Importing Sionna and setting its seed reseed torch's generator: a cold cache must not change what the
    run draws next (exact resume and seeded runs rely on it)."""
    import random

    import numpy as np

    from tests.conftest import tiny_data

    torch.manual_seed(11)
    np.random.seed(11)
    random.seed(11)
    before = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(11)
    np.random.seed(11)
    random.seed(11)
    dm = ChannelDataModule(**tiny_data(tmp_path / "cold")["init_args"])
    dm.prepare_data()
    assert dm.generated  # the cache was cold: samples were generated here
    after = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(before[0], after[0]) and (before[1] == after[1]).all() and before[2] == after[2]
