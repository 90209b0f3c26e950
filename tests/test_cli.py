"""The `hpeft` command end to end: real Lightning, real Sionna data, W&B offline or disabled."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import TINY_BACKBONE, run_hpeft, summaries, tiny_config, tiny_data, write_config

CONTRACT_KEYS = {"run_id", "experiment", "task", "variant", "data", "hparams", "methods", "metrics", "params",
                 "flops", "memory", "speed", "seed", "versions", "git"}


def test_fit_with_test_writes_the_run_record(tmp_path, cache_dir):
    cfg = write_config(tmp_path / "c.yaml", tiny_config(cache_dir, test_after_fit=True, wandb="offline"))
    result = run_hpeft(["fit", "--config", str(cfg)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = [p for p in (tmp_path / "runs" / "t").iterdir()]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert CONTRACT_KEYS <= summary.keys()
    assert summary["variant"] == "LoRAOnly" and summary["task"] == "channel"
    assert summary["hparams"]["lora_rank"] == 2
    assert {"val/nmse_db", "test/nmse_db", "test/ls_nmse_db"} <= summary["metrics"].keys()
    p = summary["params"]
    # LoRA rank 2 on q, v (32x32) and ffn.0 (32x64) in 2 layers
    assert p["trainable"] == 2 * (2 * 2 * (32 + 32) + 2 * (32 + 64)) == summary["methods"][0]["params"]
    assert p["total"] == p["base"] + p["trainable"]
    assert summary["flops"]["forward_per_sample"] > 0 and summary["flops"]["train_step_per_sample"] > summary["flops"]["forward_per_sample"]
    assert summary["memory"]["peak_bytes"] > 0 and summary["speed"]["train_samples_per_s"] > 0
    assert summary["speed"]["latency_ms_batch1"] > 0 and summary["speed"]["fit_seconds"] > 0
    adapter = load_file(str(run_dir / "adapter.safetensors"))
    assert sum(t.numel() for t in adapter.values()) == p["trainable"]
    assert all("lora_" in k for k in adapter)
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["model"]["init_args"]["lora_rank"] == 2
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list((run_dir / "wandb").glob("offline-run-*"))


@pytest.mark.slow
def test_resolved_config_reruns_and_runs_never_clash(tmp_path, cache_dir):
    cfg = write_config(tmp_path / "c.yaml", tiny_config(cache_dir, trainer={"max_epochs": 1, "enable_progress_bar": False}))
    assert run_hpeft(["fit", "--config", str(cfg)], tmp_path).returncode == 0
    (first,) = list((tmp_path / "runs" / "t").iterdir())
    again = run_hpeft(["fit", "--config", str(first / "config.yaml")], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(list((tmp_path / "runs" / "t").iterdir())) == 2


@pytest.mark.slow
def test_killed_fit_resumes_from_last_checkpoint(tmp_path, cache_dir):
    import subprocess
    import sys
    import time

    cfg = write_config(tmp_path / "c.yaml", tiny_config(cache_dir, trainer={"max_epochs": 200, "enable_progress_bar": False}))
    proc = subprocess.Popen([sys.executable, "-m", "hpeft.cli", "fit", "--config", str(cfg)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    last = None
    while time.time() < deadline and last is None:
        time.sleep(1)
        found = list((tmp_path / "runs" / "t").glob("*/checkpoints/last.ckpt"))
        if found and torch.load(found[0], weights_only=False, map_location="cpu")["epoch"] >= 2:
            last = found[0]
    proc.kill()
    proc.wait()
    assert last is not None, "no last.ckpt after 2 epochs"
    killed_at = torch.load(last, weights_only=False, map_location="cpu")["epoch"]
    assert killed_at < 199
    resumed = run_hpeft(["fit", "--config", str(cfg), "--ckpt_path", "last", "--trainer.max_epochs", str(killed_at + 2)], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len(list((tmp_path / "runs" / "t").iterdir())) == 1  # resumed in the same run dir
    state = torch.load(last, weights_only=False, map_location="cpu")
    assert state["epoch"] == killed_at + 1
    summary = summaries(tmp_path / "runs")[0]
    assert "val/nmse_db" in summary["metrics"]


def test_inspect_json_counts_without_training(tmp_path, cache_dir):
    cfg = write_config(tmp_path / "c.yaml", tiny_config(cache_dir))
    result = run_hpeft(["inspect", "--config", str(cfg), "--json"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    p = info["params"]
    assert p["trainable"] == 2 * (2 * 2 * (32 + 32) + 2 * (32 + 64))
    assert [m["name"] for m in p["methods"]] == ["lora"] and len(p["layers"]) == 6
    assert info["flops"]["forward_per_sample"] > 0
    assert not (tmp_path / "runs").exists()
    human = run_hpeft(["inspect", "--config", str(cfg)], tmp_path)
    assert "blocks.1.ffn.0" in human.stdout and f"{p['trainable']:,}" in human.stdout


@pytest.mark.parametrize("override,expected", [
    (["--data.init_args.scenario", "Mars"], ["Mars", "InF-DH", "TDL-A"]),
    (["--model.init_args.backbone.init_args.tokens", "19"], ["tokens=19", "valid token counts"]),
    (["--model.init_args.backbone.init_args.heads", "3"], ["heads=3", "d_model=32"]),
    (["--model.init_args.lora_targets", "[qq]"], ["'qq'", "blocks.0.attn.q"]),
    (["--model.init_args.lora_rnk", "4"], ["lora_rnk"]),
    (["--model", "hpeft.Hybrid", "--model.init_args.methods", '[{"class_path": "hpeft.peft.Nope"}]'], ["hpeft.peft.Nope", "hpeft.peft.LoRA"]),
    (["--model", "hpeft.Nope"], ["hpeft.Nope", "hpeft.LoRAOnly"]),
    (["--model.init_args.base_checkpoint", "missing.safetensors"], ["missing.safetensors", "pretrain"]),
    (["--experiment", "a/b"], ["experiment='a/b'"]),
    (["--model", "hpeft.Hybrid", "--model.init_args.train_base", "false"], ["nothing to train"]),
    (["--model", "hpeft.HybridPromptLoRA", "--model.init_args.prompt_length", "0"], ["prompt length=0"]),
    (["--model", "hpeft.AdapterOnly", "--model.init_args.adapter_kind", "serial"], ["kind='serial'", "houlsby"]),
    (["--model", "hpeft.HybridS4"], ["cannot split 2 layers into 4 groups"]),
])
def test_bad_input_fails_before_any_data_or_run_dir(tmp_path, override, expected, monkeypatch, capsys):
    # In-process (`hpeft.cli.main`, the console script's own function): a subprocess per case would spend
    # ~9 s importing Lightning each; test_bad_input_exit_status_from_the_real_command runs one case for real.
    from hpeft.cli import main

    fresh_cache = tmp_path / "cache"
    cfg = write_config(tmp_path / "c.yaml", tiny_config(fresh_cache))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(cfg), *override])
    assert exit_.value.code != 0
    err = capsys.readouterr().err
    for text in expected:
        assert text in err, err[-2000:]
    assert not (tmp_path / "runs").exists() and not fresh_cache.exists()


def test_bad_input_exit_status_from_the_real_command(tmp_path):
    fresh_cache = tmp_path / "cache"
    cfg = write_config(tmp_path / "c.yaml", tiny_config(fresh_cache))
    result = run_hpeft(["fit", "--config", str(cfg), "--data.init_args.scenario", "Mars"], tmp_path)
    assert result.returncode == 2 and "Mars" in result.stderr and "InF-DH" in result.stderr
    assert not (tmp_path / "runs").exists() and not fresh_cache.exists()


def test_print_config(tmp_path, cache_dir):
    cfg = write_config(tmp_path / "c.yaml", tiny_config(cache_dir))
    result = run_hpeft(["fit", "--config", str(cfg), "--print_config"], tmp_path)
    assert result.returncode == 0
    printed = yaml.safe_load(result.stdout)
    assert printed["model"]["init_args"]["backbone"]["init_args"]["d_model"] == 32


@pytest.mark.slow
def test_pretrained_base_is_exported_and_loaded_for_transfer(tmp_path, cache_dir):
    base = tmp_path / "base.safetensors"
    pre = tiny_config(cache_dir, model={"class_path": "hpeft.Pretrain",
                                        "init_args": {"backbone": TINY_BACKBONE, "save_base_to": str(base)}})
    assert run_hpeft(["fit", "--config", str(write_config(tmp_path / "p.yaml", pre))], tmp_path).returncode == 0
    assert base.is_file()
    transfer = tiny_config(cache_dir, data=tiny_data(cache_dir, scenario="InF-SL", seed=4),
                           model={"class_path": "hpeft.LoRAOnly",
                                  "init_args": {"backbone": TINY_BACKBONE, "base_checkpoint": str(base)}})
    result = run_hpeft(["fit", "--config", str(write_config(tmp_path / "t.yaml", transfer))], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    other = dict(TINY_BACKBONE, init_args={**TINY_BACKBONE["init_args"], "d_model": 16})
    bad = tiny_config(cache_dir, model={"class_path": "hpeft.LoRAOnly", "init_args": {"backbone": other, "base_checkpoint": str(base)}})
    result = run_hpeft(["fit", "--config", str(write_config(tmp_path / "b.yaml", bad))], tmp_path)
    assert result.returncode != 0 and "base checkpoint" in result.stderr and "'d_model': 32" in result.stderr


def test_top_level_help_lists_every_command(tmp_path):
    result = run_hpeft(["--help"], tmp_path)
    assert result.returncode == 0
    for command in ("fit", "validate", "test", "predict", "inspect", "data", "search", "study"):
        assert command in result.stdout.split("hpeft COMMAND")[0], command
    unknown = run_hpeft(["nope"], tmp_path)
    assert unknown.returncode == 2 and "'nope'" in unknown.stderr and "inspect" in unknown.stderr


def test_callbacks_from_the_config_replace_the_defaults(tmp_path, cache_dir):
    trainer = {"max_epochs": 1, "enable_model_summary": False,
               "callbacks": [{"class_path": "lightning.pytorch.callbacks.TQDMProgressBar"},
                             {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                              "init_args": {"monitor": "val/nmse_db", "save_last": True}}]}
    cfg = write_config(tmp_path / "c.yaml", tiny_config(cache_dir, trainer=trainer))
    result = run_hpeft(["fit", "--config", str(cfg)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_resume_picks_the_run_with_the_same_config(tmp_path, cache_dir):
    def config(rank):
        model = {"class_path": "hpeft.LoRAOnly", "init_args": {"lora_rank": rank, "backbone": TINY_BACKBONE}}
        return write_config(tmp_path / f"r{rank}.yaml", tiny_config(
            cache_dir, model=model, trainer={"max_epochs": 1, "enable_progress_bar": False, "enable_model_summary": False}))

    assert run_hpeft(["fit", "--config", str(config(2))], tmp_path).returncode == 0
    assert run_hpeft(["fit", "--config", str(config(3))], tmp_path).returncode == 0  # newer, other config
    resumed = run_hpeft(["fit", "--config", str(config(2)), "--ckpt_path", "last", "--trainer.max_epochs", "2"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    epochs = {}
    for run in (tmp_path / "runs" / "t").iterdir():
        rank = yaml.safe_load((run / "config.yaml").read_text())["model"]["init_args"]["lora_rank"]
        epochs[rank] = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")["epoch"]
    assert epochs == {2: 1, 3: 0}


def test_predict_keeps_its_estimates_in_the_run(tmp_path, cache_dir):
    cfg = write_config(tmp_path / "c.yaml", tiny_config(cache_dir))
    result = run_hpeft(["predict", "--config", str(cfg)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs" / "t").iterdir()
    estimate = load_file(str(run_dir / "predictions.safetensors"))["estimate"]
    assert estimate.shape == (64, 2, 14, 24)  # num_test samples of the 2-PRB grid
    assert torch.isfinite(estimate).all() and estimate.abs().sum() > 0
    assert (run_dir / "summary.json").is_file()


def test_cluster_config_without_its_local_files_names_the_missing_one(tmp_path):
    """configs/mamba/lm130m_all.yaml names checkpoints/mamba-130m-hf for its tokenizer: without that folder fit's
    error says where it looked, under the config key, instead of jsonargparse's namespace dump. (inspect needs no
    tokenizer: tests/test_inspect_cluster.py.)"""
    from tests.conftest import REPO

    result = run_hpeft(["fit", "--config", str(REPO / "configs/mamba/lm130m_all.yaml"), "--dry_run", "true"], tmp_path,
                       env={"HF_HUB_OFFLINE": "1"})  # no hub here; offline, transformers fails at once
    assert result.returncode == 2, result.stderr[-2000:]
    assert "data: tokenizer='checkpoints/mamba-130m-hf' not found: no local folder" in result.stderr
    assert "Namespace(" not in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data_cache").exists()
