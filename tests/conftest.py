"""Shared fixtures: a tiny channel config and a runner for the real `hpeft` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

# Small but real: a 2-PRB grid (14 x 24), a model that trains in seconds on the CPU.
TINY_BACKBONE = {"class_path": "hpeft.models.ChannelTransformerConfig",
                 "init_args": {"tokens": 12, "d_model": 32, "layers": 2, "heads": 2, "d_ff": 64}}


def tiny_data(cache_dir: Path, **overrides) -> dict:
    init = {"scenario": "TDL-A", "snr_db": [0, 20], "num_prbs": 2, "num_train": 256, "num_val": 64, "num_test": 64,
            "batch_size": 32, "seed": 3, "cache_dir": str(cache_dir), "lmmse": False, "progress": False}
    return {"class_path": "hpeft.ChannelDataModule", "init_args": {**init, **overrides}}


def tiny_config(cache_dir: Path, model: dict | None = None, data: dict | None = None, **top) -> dict:
    return {
        "seed_everything": 0,
        "experiment": "t",
        "wandb": "disabled",
        "trainer": {"max_epochs": 2, "log_every_n_steps": 1, "enable_progress_bar": False, "enable_model_summary": False},
        "model": model or {"class_path": "hpeft.LoRAOnly", "init_args": {"lora_rank": 2, "backbone": TINY_BACKBONE}},
        "data": data or tiny_data(cache_dir),
        **top,
    }


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def run_hpeft(args: list[str], cwd: Path, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "WANDB_SILENT": "true", **(env or {})}
    full_env.pop("HPEFT_RUN_ID", None)
    return subprocess.run([sys.executable, "-m", "hpeft.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def summaries(runs_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(runs_dir.rglob("summary.json"))]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One data cache for the whole session, so each tiny dataset is generated once."""
    return tmp_path_factory.mktemp("data_cache")
