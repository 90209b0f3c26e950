"""The quickstart orchestrator on tiny versions of its three configs: the steps run as real `hpeft`
commands, each leaves a run record, and the table reads them back beside the LS and LMMSE baselines."""

import subprocess
import sys

import pytest

from tests.conftest import TINY_BACKBONE, summaries, tiny_config, tiny_data, write_config


@pytest.mark.slow
def test_quickstart_runs_its_steps_and_prints_the_table(tmp_path, cache_dir):
    configs = tmp_path / "configs"
    configs.mkdir()
    base = str(tmp_path / "base.safetensors")
    trainer = {"max_epochs": 1, "enable_progress_bar": False, "enable_model_summary": False}
    target = tiny_data(cache_dir, scenario="InF-SH", seed=7, lmmse=True)
    write_config(configs / "pretrain.yaml", tiny_config(
        cache_dir, experiment="quickstart", trainer=trainer,
        model={"class_path": "hpeft.Pretrain", "init_args": {"backbone": TINY_BACKBONE, "save_base_to": base}}))
    write_config(configs / "lora_inf.yaml", tiny_config(
        cache_dir, experiment="quickstart", trainer=trainer, data=target, test_after_fit=True,
        model={"class_path": "hpeft.LoRAOnly", "init_args": {"backbone": TINY_BACKBONE, "base_checkpoint": base}}))
    write_config(configs / "base_inf.yaml", tiny_config(
        cache_dir, experiment="quickstart", trainer=trainer, data=target,
        model={"class_path": "hpeft.Hybrid", "init_args": {"backbone": TINY_BACKBONE, "base_checkpoint": base}}))
    result = subprocess.run([sys.executable, "-m", "hpeft.quickstart", "--configs", str(configs)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    records = summaries(tmp_path / "runs" / "quickstart")
    assert sorted(r["variant"] for r in records) == ["Hybrid", "LoRAOnly", "Pretrain"]
    lora = next(r for r in records if r["variant"] == "LoRAOnly")
    table = result.stdout[result.stdout.index("Quickstart: InF test set"):]
    for label in ("lora r=8", "base, no transfer", "LS, linear interp. (Sionna)", "LMMSE (Sionna)",
                  f"{lora['params']['trainable']:,}", f"{lora['metrics']['test/nmse_db']:.2f}",
                  f"{lora['metrics']['test/ls_nmse_db']:.2f}"):
        assert label in table, label
