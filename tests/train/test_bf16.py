"""bf16-mixed on the CPU (Lightning's autocast to bfloat16) for the three base families: the ChannelTransformer, Mamba
(the compiled scan) and a tiny Gemma-3, each against the same run in fp32.

Tolerance: bfloat16 keeps 8 significant bits (relative rounding 2^-9 ~ 0.2 % per operation). Over these short runs
the validation loss agrees within 2 % relative and the channel NMSE within 0.2 dB (measured here: under 0.1 % and
< 0.01 dB). The runs must also differ: identical metrics would mean autocast never touched the model."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import REPO, TINY_BACKBONE, run_hpeft, summaries, tiny_config, write_config

QUIET = {"enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0}


def channel(cache_dir) -> dict:
    model = {"class_path": "hpeft.Pretrain", "init_args": {"backbone": TINY_BACKBONE, "lr": 3e-3}}
    return tiny_config(cache_dir, model=model, trainer={"max_epochs": 3, **QUIET})


def mamba(cache_dir) -> dict:
    cfg = yaml.safe_load((REPO / "configs/mamba/channel_all.yaml").read_text())
    cfg["trainer"] = {"max_epochs": 2, **QUIET}
    cfg["data"]["init_args"].update(scenario="TDL-A", num_train=256, num_val=64, num_test=64, cache_dir=str(cache_dir),
                                    lmmse=False, progress=False)
    return cfg


def gemma(cache_dir) -> dict:
    cfg = yaml.safe_load((REPO / "configs/llm/tiny_pretrain.yaml").read_text())
    cfg["trainer"] = {"max_epochs": 2, "limit_val_batches": 4, **QUIET}
    cfg["model"]["init_args"].pop("save_base_to")
    cfg["data"]["init_args"].update(files=[str(REPO / "hpeft/peft/core.py"), str(REPO / "hpeft/peft/lora.py")],
                                    cache_dir=str(cache_dir / "text"), progress=False)
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize("make", [channel, mamba, gemma], ids=lambda f: f.__name__)
def test_bf16_mixed_matches_fp32_within_tolerance(make, tmp_path, cache_dir):
    results = {}
    for precision in ("32-true", "bf16-mixed"):
        cfg = make(cache_dir)
        cfg.update(experiment=precision, wandb="disabled", seed_everything=0)
        cfg["trainer"]["precision"] = precision
        result = run_hpeft(["fit", "--config", str(write_config(tmp_path / f"{precision}.yaml", cfg))], tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        (summary,) = summaries(tmp_path / "runs" / precision)
        assert summary["precision"] == precision
        results[precision] = summary["metrics"]
    fp32, bf16 = results["32-true"], results["bf16-mixed"]
    assert bf16["val/loss"] != fp32["val/loss"], "bf16-mixed gave fp32's exact loss: autocast did not apply"
    assert abs(bf16["val/loss"] - fp32["val/loss"]) <= 0.02 * abs(fp32["val/loss"]), (fp32, bf16)
    if "val/nmse_db" in fp32:
        assert abs(bf16["val/nmse_db"] - fp32["val/nmse_db"]) <= 0.2, (fp32, bf16)
