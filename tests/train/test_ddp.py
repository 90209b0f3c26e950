"""`--trainer.strategy ddp --trainer.devices 2` on the CPU (gloo) against one process with the same
global batch. With shuffling off, DistributedSampler deals samples 0,2,4.. to rank 0 and 1,3,5.. to
rank 1, so each global step sees the same 32 samples as the 1-process step; the loss is a per-sample
mean (channels are power-normalised, so error/energy is error/(n*S*F)), and DDP averages gradients,
so the two runs take the same steps up to float summation order.

Tolerance: 1e-5 absolute on every trained weight after 8 AdamW steps (measured here: within 1e-6) and 0.01 dB on validation NMSE.
Adam divides by sqrt(v), which can magnify reduction-order differences in tiny gradients, so bitwise
equality is not expected."""

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import run_hpeft, summaries, tiny_config, tiny_data, write_config


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path, cache_dir):
    trainer = {"max_steps": 8, "enable_progress_bar": False, "enable_model_summary": False, "deterministic": True,
               "accelerator": "cpu", "log_every_n_steps": 1, "num_sanity_val_steps": 0, "val_check_interval": 8}
    results = {}
    for name, devices, batch in (("single", 1, 32), ("ddp", 2, 16)):
        data = tiny_data(cache_dir, batch_size=batch, shuffle=False)
        cfg = tiny_config(cache_dir, data=data, experiment=name,
                          trainer={**trainer, "devices": devices, "strategy": "ddp" if devices > 1 else "auto"})
        result = run_hpeft(["fit", "--config", str(write_config(tmp_path / f"{name}.yaml", cfg))], tmp_path, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        (summary,) = summaries(tmp_path / "runs" / name)
        (adapter,) = (tmp_path / "runs" / name).glob("*/adapter.safetensors")
        results[name] = (summary, load_file(str(adapter)))
    (single, w1), (ddp, w2) = results["single"], results["ddp"]
    assert ddp["world_size"] == 2 and single["world_size"] == 1
    assert w1.keys() == w2.keys()
    initial_b_is_zero = [k for k in w1 if "lora_B" in k]
    assert all(w1[k].abs().max() > 0 for k in initial_b_is_zero), "training did not move the weights"
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-5, rtol=0), (k, (w1[k] - w2[k]).abs().max())
    assert abs(single["metrics"]["val/nmse_db"] - ddp["metrics"]["val/nmse_db"]) < 0.01
