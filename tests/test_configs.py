"""Every shipped config builds (model, methods, data module) and accounts its parameters exactly,
without generating data or loading a base."""

import json
from pathlib import Path

import pytest

from tests.conftest import REPO, run_hpeft
from tests.models.test_channel_transformer import expected_params

CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def lora_params(layers, d_model, d_ff, rank):
    # q and v are d x d, ffn.0 is d -> d_ff
    return layers * rank * (2 * (d_model + d_model) + (d_model + d_ff))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_config_builds_and_counts(config: Path, tmp_path):
    result = run_hpeft(["inspect", "--config", str(config), "--json"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    p, b = info["params"], info["backbone"]
    assert p["total"] == p["base"] + sum(m["params"] for m in p["methods"])
    if info["variant"] == "LoRAOnly":
        rank = info["methods"][0]["rank"]
        assert p["trainable"] == lora_params(b["layers"], b["d_model"], b["d_ff"], rank)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data_cache").exists()


def test_seed_scale_base_matches_the_seed_study_shape(tmp_path):
    result = run_hpeft(["inspect", "--config", str(REPO / "configs/channel/pretrain.yaml"), "--json"], tmp_path)
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["backbone"]["tokens"] == 256 and info["backbone"]["d_model"] == 128 and info["backbone"]["layers"] == 4
    assert info["grid_shape"] == [14, 768]
    b = info["backbone"]
    # 1,374,164 by the layer-by-layer formula; the seed quotes 1,356,312 for its own (unpublished) layout
    assert info["params"]["total"] == expected_params((14, 768), b["tokens"], b["d_model"], b["layers"], b["d_ff"])
