"""Processes that share a run folder or a data cache: started at once, they never overwrite each other."""

import re
import subprocess
import sys

import pytest

from tests.conftest import run_hpeft, summaries, tiny_config, tiny_data, write_config


def start(args, cwd):
    return subprocess.Popen([sys.executable, "-m", "hpeft.cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**__import__("os").environ, "WANDB_SILENT": "true"})


def test_two_data_commands_on_a_cold_cache_generate_each_split_once(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", tiny_config(tmp_path / "cache", data=tiny_data(tmp_path / "cache", seed=41)))
    procs = [start(["data", "--config", str(cfg)], tmp_path) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    generated = []
    for out, _ in outs:
        line = re.search(r"generated here: (.*)", out).group(1)
        generated += [] if line.startswith("nothing") else line.split(", ")
    assert sorted(generated) == ["test", "train", "val"], generated  # each split once, by one of the two
    entries = list((tmp_path / "cache").glob("*/manifest.json"))
    assert len(entries) == 3


@pytest.mark.slow
def test_two_fits_of_one_experiment_at_once_get_their_own_run_dirs(tmp_path, cache_dir):
    run_hpeft(["data", "--config", str(write_config(tmp_path / "warm.yaml", tiny_config(cache_dir)))], tmp_path)
    configs = [write_config(tmp_path / f"c{i}.yaml", tiny_config(cache_dir, seed_everything=i)) for i in range(2)]
    procs = [start(["fit", "--config", str(c)], tmp_path) for c in configs]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    runs = sorted((tmp_path / "runs" / "t").iterdir())
    assert len(runs) == 2
    records = summaries(tmp_path / "runs")
    assert sorted(r["run_id"] for r in records) == [r.name for r in runs]  # each record names its own dir
    assert sorted(r["seed"] for r in records) == [0, 1]  # and holds its own run's settings
    for run in runs:
        assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "adapter.safetensors").is_file()
