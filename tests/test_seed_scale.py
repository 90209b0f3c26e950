"""Cluster configs at their real model sizes take real training steps here (benchmarks/seed_scale.py): the seed
study's channel hybrid (256 tokens on the 14 x 768 grid), the Mamba-130m LM with all pillars (frozen base) and
the staged QLoRA -> GaLore Gemma-3-1b (about 3 minutes here), randomly initialised, one step each. Their base
sizes are checked against the architectures' parameter formulas, so a config that silently built a smaller model
would fail."""

import json

import pytest

from benchmarks import seed_scale
from tests.conftest import REPO
from tests.models.test_channel_transformer import expected_params


def mamba_params(d: int, layers: int, vocab: int, expand: int = 2, d_state: int = 16, d_conv: int = 4, dt_rank: int = 48):
    """A transformers Mamba's parameters (lm_head tied to the embeddings): per layer in_proj, depthwise conv,
    x_proj, dt_proj, A_log, D, out_proj and the norm; then embeddings and the final norm."""
    e = expand * d
    layer = d * 2 * e + (e * d_conv + e) + e * (dt_rank + 2 * d_state) + (dt_rank * e + e) + e * d_state + e + e * d + d
    return layers * layer + vocab * d + d


@pytest.mark.slow
def test_cluster_configs_take_steps_at_their_real_sizes(tmp_path):
    configs = ["configs/channel/hybrid_m_inf.yaml", "configs/mamba/lm130m_all.yaml", "configs/llm/gemma3_1b_staged.yaml"]
    code = seed_scale.main(["--steps", "1", "--out", str(tmp_path), *(a for c in configs for a in ("--config", str(REPO / c)))])
    rows = {r["config"]: r for r in json.loads((tmp_path / "seed_scale.json").read_text())["rows"]}
    assert code == 0, rows
    channel, mamba, gemma = (rows[c] for c in configs)
    assert channel["status"] == mamba["status"] == gemma["status"] == "ok", rows
    # hybrid_m_inf: prompt 100 + LoRA r10 on q, v, ffn.0 over the seed-scale base (4 layers, d 128, d_ff 1024)
    base = expected_params((14, 768), 256, 128, 4, 1024)
    assert channel["params_total"] - channel["params_trainable"] == base
    assert channel["params_trainable"] == 100 * 128 + 4 * 10 * (2 * (128 + 128) + (128 + 1024))
    assert mamba["params_total"] - mamba["params_trainable"] == mamba_params(768, 24, 50280) == 129_135_360
    # Gemma-3-1b from the architecture hpeft ships (the published 999,885,952 parameters), with the staged
    # config's first stage: LoRA r 16 on its seven projections (hidden 1152, 4 x 256 query, 256 key/value, MLP 6912).
    assert gemma["params_total"] - gemma["params_trainable"] == 999_885_952
    assert gemma["params_trainable"] == 26 * 16 * ((1152 + 1024) * 2 + (1152 + 256) * 2 + (1152 + 6912) * 3)
    for row in (channel, mamba, gemma):
        assert row["peak_bytes"] > 0 and row["train_step_flops_per_sample"] > 0 and row["projected_gpu_hours"] > 0
