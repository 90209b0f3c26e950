"""Hybrid variants through the real `hpeft fit`: the run record names every method with its exact
count and config, importance-allocated ranks survive testing the best checkpoint, and the saved adapter
rebuilds the trained model from a fresh base."""

import json

import pytest
import torch
from safetensors.torch import load_file

from hpeft import peft
from hpeft.models import ChannelTransformerConfig
from tests.conftest import TINY_BACKBONE, run_hpeft, summaries, tiny_config, write_config


@pytest.mark.slow
def test_lora_adapter_with_importance_ranks_end_to_end(tmp_path, cache_dir):
    model = {"class_path": "hpeft.HybridLoRAAdapter", "init_args": {
        "backbone": TINY_BACKBONE, "rank_allocation": "importance", "min_rank": 2, "max_rank": 6,
        "adapter_size": 4, "lr": 0.01}}
    cfg = write_config(tmp_path / "c.yaml", tiny_config(cache_dir, model=model, test_after_fit=True))
    result = run_hpeft(["fit", "--config", str(cfg)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (summary,) = summaries(tmp_path / "runs")
    ranks = {int(k): v for k, v in summary["hparams"]["layer_ranks"].items()}
    assert sorted(ranks.values()) == [2, 6]  # two layers: the less important gets min_rank, the other max_rank
    methods = {m["name"]: m for m in summary["methods"]}
    d = TINY_BACKBONE["init_args"]["d_model"]
    assert methods["lora"]["params"] == sum(4 * r * (d + d) for r in ranks.values())  # q, k, v, o
    assert methods["adapter"]["params"] == 2 * (d * 4 + 4 + 4 * d + d)
    assert methods["lora"]["configs"][0]["layer_ranks"] == {str(k): v for k, v in ranks.items()}
    assert "test/nmse_db" in summary["metrics"]
    run_dir = next((tmp_path / "runs").rglob("summary.json")).parent
    meta = json.loads((run_dir / "adapter.json").read_text())
    assert sorted(m["name"] for m in meta["methods"]) == ["adapter", "lora"]
    # The adapter file alone rebuilds the tested model on a fresh base.
    torch.manual_seed(0)
    base = ChannelTransformerConfig(**TINY_BACKBONE["init_args"]).build(tuple(summary["data"]["grid_shape"]))
    ckpt = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    wanted = base.state_dict().keys()
    state = {peft.core.logical_name(k.removeprefix("model.")): v for k, v in ckpt["state_dict"].items()}
    base.load_state_dict({k: v for k, v in state.items() if k in wanted})  # strict: every base weight is there
    peft.load(base, run_dir / "adapter.safetensors")
    saved = load_file(str(run_dir / "adapter.safetensors"))
    params = dict(base.named_parameters())
    assert all(torch.equal(params[k], v) for k, v in saved.items())
