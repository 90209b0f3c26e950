"""Multi-node DDP under SLURM, simulated on this machine: two `hpeft fit` processes started side by side with the
variables `srun` gives each task of a 2-node x 1-task allocation, so Lightning's SLURMEnvironment takes over (as
it does on a cluster: ranks, world size, the master address and the node checks come from those variables) and
gloo joins them over loopback. Nothing is stubbed: the processes are the real command, as srun would start them.

As in tests/train/test_ddp.py, with shuffling off the two ranks see the halves of the 1-process batch, so the
weights after 8 steps match the 1-process run with the same global batch within 1e-5 (Adam's division by
sqrt(v) magnifies reduction-order differences; bitwise equality is not expected)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from hpeft.train.run_id import launcher_run_id
from tests.conftest import run_hpeft, summaries, tiny_config, tiny_data, write_config

TRAINER = {"max_steps": 8, "enable_progress_bar": False, "enable_model_summary": False, "deterministic": True,
           "accelerator": "cpu", "log_every_n_steps": 1, "num_sanity_val_steps": 0, "val_check_interval": 8}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def srun_env(rank: int, nodes: int, job_id: str, port: int) -> dict:
    """What srun sets for task `rank` of `nodes` nodes with one task each (the variables Lightning reads)."""
    return {"SLURM_JOB_ID": job_id, "SLURM_JOB_NAME": "hpeft-ddp", "SLURM_STEP_ID": "0", "SLURM_NTASKS": str(nodes),
            "SLURM_NNODES": str(nodes), "SLURM_NTASKS_PER_NODE": "1", "SLURM_PROCID": str(rank),
            "SLURM_LOCALID": "0", "SLURM_NODEID": str(rank), "SLURM_NODELIST": "localhost",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def srun(args: list[str], cwd, nodes: int, job_id: str, timeout: int = 600) -> list[subprocess.CompletedProcess]:
    port = free_port()
    procs = []
    for rank in range(nodes):
        env = {**os.environ, "WANDB_SILENT": "true", **srun_env(rank, nodes, job_id, port)}
        for leftover in ("HPEFT_RUN_ID", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK"):
            env.pop(leftover, None)
        procs.append(subprocess.Popen([sys.executable, "-m", "hpeft.cli", *args], cwd=cwd, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


@pytest.mark.slow
def test_two_slurm_nodes_make_one_run_with_the_one_process_weights(tmp_path, cache_dir):
    single = tiny_config(cache_dir, data=tiny_data(cache_dir, batch_size=32, shuffle=False), experiment="single",
                         trainer={**TRAINER, "devices": 1})
    result = run_hpeft(["fit", "--config", str(write_config(tmp_path / "single.yaml", single))], tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    nodes = tiny_config(cache_dir, data=tiny_data(cache_dir, batch_size=16, shuffle=False), experiment="nodes",
                        wandb="offline", trainer={**TRAINER, "devices": 1, "num_nodes": 2, "strategy": "ddp"})
    ranks = srun(["fit", "--config", str(write_config(tmp_path / "nodes.yaml", nodes))], tmp_path, 2, "4242")
    for rank, done in enumerate(ranks):
        assert done.returncode == 0, f"rank {rank}: {done.stderr[-3000:]}"

    (run_dir,) = list((tmp_path / "runs" / "nodes").iterdir())  # one run, not one per rank
    assert run_dir.name == "slurm-4242-0"
    (summary,) = summaries(tmp_path / "runs" / "nodes")
    assert summary["world_size"] == 2 and summary["run_id"] == run_dir.name
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1  # one W&B run
    w1 = load_file(str(next((tmp_path / "runs" / "single").glob("*/adapter.safetensors"))))
    w2 = load_file(str(run_dir / "adapter.safetensors"))
    assert w1.keys() == w2.keys() and all(w1[k].abs().max() > 0 for k in w1 if "lora_B" in k)
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-5, rtol=0), (k, (w1[k] - w2[k]).abs().max())


def test_a_slurm_allocation_that_disagrees_with_the_trainer_is_refused_before_a_run_dir(tmp_path, cache_dir):
    cfg = tiny_config(tmp_path / "cache", trainer={**TRAINER, "devices": 1, "num_nodes": 3, "strategy": "ddp"})
    env = srun_env(0, 2, "77", free_port())
    result = run_hpeft(["fit", "--config", str(write_config(tmp_path / "c.yaml", cfg))], tmp_path, env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "num_nodes=3" in result.stderr and "--nodes=2" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


def test_gpu_config_on_a_cpu_machine_is_refused_before_a_run_dir(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cfg = tiny_config(tmp_path / "cache", trainer={**TRAINER, "accelerator": "gpu"})
    result = run_hpeft(["fit", "--config", str(write_config(tmp_path / "c.yaml", cfg))], tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("hpeft: error:")]
    assert "trainer.accelerator='gpu'" in line and "no GPU" in line and "'cpu'" in line
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("env,expected", [
    (srun_env(1, 2, "99", 1), "slurm-99-0"),
    ({**srun_env(0, 2, "99", 1), "SLURM_RESTART_COUNT": "1"}, "slurm-99-0-r1"),  # a requeued job: a new run
    ({**srun_env(0, 2, "99", 1), "SLURM_JOB_NAME": "interactive"}, None),  # Lightning ignores interactive srun
    ({"SLURM_JOB_ID": "99", "SLURM_NTASKS": "1"}, None),  # one task (a W&B agent array element): own ids
    ({"WORLD_SIZE": "4", "TORCHELASTIC_RUN_ID": "abc"}, "torchrun-abc-r0"),
    ({"WORLD_SIZE": "4", "TORCHELASTIC_RUN_ID": "none"}, None),
])
def test_launcher_run_ids_agree_across_tasks(env, expected):
    assert launcher_run_id(env) == expected
