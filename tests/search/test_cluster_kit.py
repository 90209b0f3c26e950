"""The cluster kit, checked as far as a machine without GPUs, Docker or SLURM can: the compose file parses and
wires workers to its PostgreSQL, the SLURM scripts pass `bash -n`, every `hpeft` command they run exists, the
`hpeft fit` of the DDP script parses with the trainer keys it sets, and every path they name exists; then the
multi-node DDP script and the Optuna worker array are executed under a local sbatch/srun (see SHIM below).
The W&B agent array is not executed: `wandb agent` needs the W&B server (a sweep has no offline mode);
tests/search/test_wandb_sweeps.py runs the command lines its agents would run."""

import json
import os
import random
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

from hpeft.cli import TRAINER_COMMANDS
from hpeft.search.run_config import _ParseOnly
from tests.conftest import REPO, tiny_config, write_config
from tests.search.conftest import load, search_config, tiny_run_config

COMMANDS = {*TRAINER_COMMANDS, "inspect", "data", "search", "report", "dashboard"}
SCRIPTS = sorted((REPO / "sweeps" / "slurm").glob("*.sbatch"))
KIT = [*SCRIPTS, REPO / "docker" / "compose.yaml", REPO / "docker" / "Dockerfile.cuda", REPO / "docker" / "Dockerfile"]


def _joined(text: str) -> str:
    return re.sub(r"\\\n\s*", " ", text)  # continuation lines as one line


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_slurm_script_parses_and_asks_slurm_for_gpus(path):
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    text = path.read_text()
    assert text.startswith("#!/bin/bash") and "#SBATCH --gres=gpu:" in text


@pytest.mark.parametrize("path", KIT, ids=[p.name for p in KIT])
def test_every_hpeft_command_and_path_in_the_kit_exists(path):
    text = _joined(path.read_text())
    # `hpeft WORD` followed by an option, a variable or a quote (so "hpeft on NVIDIA GPUs" in prose is no command),
    # and the compose file's ["search", ...] commands for the image whose entrypoint is hpeft.
    used = re.findall(r"\bhpeft[ \t]+([a-z]+)(?=[ \t]+(?:--|\$|\"|')|[ \t]*(?:`|$))", text, re.M)
    used += re.findall(r'command: \[\s*"([a-z]+)"', text)
    assert used or "wandb agent" in text, f"{path.name} runs no hpeft command"  # agents run the sweep file's
    assert set(used) <= COMMANDS, used
    for ref in set(re.findall(r"\b((?:configs|sweeps|docker)/[\w./-]+\.(?:yaml|sbatch))", text)):
        assert (REPO / ref).is_file(), f"{path.name} names {ref}, which does not exist"


def test_ddp_script_fit_command_parses_with_its_trainer_keys():
    text = _joined((REPO / "sweeps" / "slurm" / "ddp_multinode.sbatch").read_text())
    line = next(line for line in text.splitlines() if line.startswith("srun hpeft fit"))
    values = {"${CONFIG}": "configs/channel/pretrain.yaml", "${SLURM_NNODES}": "2", "${SLURM_NTASKS_PER_NODE}": "4"}
    args = [values.get(a.strip('"').replace("$CONFIG", "${CONFIG}"), a.strip('"')) for a in line.split()[3:] if a != '"$@"']
    resolved = _ParseOnly().parse(args)
    assert resolved["trainer"]["num_nodes"] == 2 and int(resolved["trainer"]["devices"]) == 4
    assert resolved["trainer"]["strategy"] == "ddp"


def test_compose_runs_postgres_dashboard_and_workers_on_one_study():
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    workers = {k: v for k, v in services.items() if k.startswith("worker-")}
    assert {"postgres", "dashboard"} <= set(services) and len(workers) >= 2
    pg = services["postgres"]["environment"]
    url = f"postgresql://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgres:5432/{pg['POSTGRES_DB']}"
    assert url in services["dashboard"]["entrypoint"]
    indices = set()
    for worker in workers.values():
        command = worker["command"]
        assert command[0] == "search" and command[command.index("--storage") + 1] == url
        default_search = re.search(r":-([^}]+)}", command[command.index("--config") + 1]).group(1)
        assert (REPO / default_search).is_file()
        assert worker["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert worker["build"]["dockerfile"] == "docker/Dockerfile.cuda"
        devices = worker["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]
        indices.add((worker["environment"]["HPEFT_SEARCH_WORKER"], tuple(devices)))
    assert len(indices) == len(workers)  # one GPU and one sampler-seed offset per worker


def test_cuda_dockerfile_installs_hpeft_with_make_setup():
    text = (REPO / "docker" / "Dockerfile.cuda").read_text()
    assert re.search(r"^FROM nvidia/cuda:\S+", text, re.M)
    for src in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for name in src.split():
            assert (REPO / name).exists(), name
    assert "make setup" in text and "setup:" in (REPO / "Makefile").read_text()
    assert 'ENTRYPOINT ["hpeft"]' in text


# -- The SLURM scripts executed: tests/search/slurm_shim/ holds an `sbatch` and an `srun` that run a job's tasks on
# this machine with SLURM's variables (test scaffolding); everything they start is the real hpeft, Lightning, gloo
# and PostgreSQL.

SHIM = Path(__file__).parent / "slurm_shim"


def free_lightning_job_id() -> str:
    """A job id whose port under Lightning's SLURMEnvironment (15000 + the id's last 4 digits) is free here."""
    for port in random.Random().sample(range(15000, 25000), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return f"3{port - 15000:04d}"
    pytest.fail("no free port in 15000-24999")


def sbatch(args: list[str], cwd: Path, timeout: int = 600, **env) -> subprocess.CompletedProcess:
    full = {**os.environ, "PATH": f"{SHIM}:{os.environ['PATH']}", "HPEFT_VENV": sys.prefix, "WANDB_SILENT": "true",
            "OMP_NUM_THREADS": "1", **env}
    for leftover in ("HPEFT_RUN_ID", "LOCAL_RANK", "WORLD_SIZE", "HPEFT_SEARCH_WORKER"):
        full.pop(leftover, None)
    return subprocess.run(["sbatch", *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_ddp_multinode_script_runs_one_run_over_two_nodes(tmp_path, cache_dir):
    cfg = tiny_config(cache_dir, wandb="offline", experiment="nodes",
                      trainer={"max_steps": 4, "enable_progress_bar": False, "enable_model_summary": False,
                               "num_sanity_val_steps": 0, "val_check_interval": 4, "log_every_n_steps": 1})
    job = free_lightning_job_id()
    # The script asks for GPUs (its #SBATCH lines and --trainer.accelerator gpu); on this machine the override
    # after it, passed through "$@", puts the same run on the CPU.
    result = sbatch(["--nodes=2", "--ntasks-per-node=1", str(REPO / "sweeps/slurm/ddp_multinode.sbatch"),
                     str(write_config(tmp_path / "c.yaml", cfg)), "--trainer.accelerator", "cpu"], tmp_path,
                    HPEFT_SHIM_JOB_ID=job)
    assert result.returncode == 0, result.stderr[-4000:]
    (run_dir,) = list((tmp_path / "runs" / "nodes").iterdir())
    assert run_dir.name == f"slurm-{job}-0"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["speed"]["train_samples_per_s"] > 0
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1


@pytest.mark.slow
def test_optuna_worker_array_shares_one_postgres_study(tmp_path, cache_dir, postgres_url, pg_study):
    base = tiny_run_config(tmp_path / "run.yaml", cache_dir)
    cfg = search_config(tmp_path / "search.yaml", base, study=pg_study, n_trials=4)
    result = sbatch(["--array=0-1", str(REPO / "sweeps/slurm/optuna_workers.sbatch"), str(cfg), postgres_url], tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    study = load(postgres_url, pg_study)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) >= 4 and sorted(t.number for t in complete)[:4] == [0, 1, 2, 3]
    assert len({t.user_attrs["worker"] for t in complete}) == 2  # both array tasks ran trials
    run_dirs = [t.user_attrs["run_dir"] for t in complete]
    assert len(set(run_dirs)) == len(run_dirs)  # one run per trial


def test_wandb_agent_array_runs_up_to_the_w_and_b_server(tmp_path):
    """sweeps/slurm/wandb_agents.sbatch, executed as far as it runs without the W&B server: every array task
    activates the environment, reports itself and starts the real `wandb agent` on the sweep it was given, which
    stops where it must first talk to the server (no API key here). What the agent then launches (the sweep's
    `hpeft fit ... ${args}` through wandb_agent.Agent) runs in tests/search/test_wandb_sweeps.py."""
    from tests.conftest import REPO

    result = sbatch(["--array=0-1", str(REPO / "sweeps/slurm/wandb_agents.sbatch"), "ent/proj/sweep123", "3"], tmp_path,
                    timeout=120, WANDB_API_KEY="", WANDB_DIR=str(tmp_path), WANDB_CONFIG_DIR=str(tmp_path / "cfg"),
                    HOME=str(tmp_path))
    out = result.stdout + result.stderr
    for task in (0, 1):
        assert f"agent {task} on " in out and "sweep ent/proj/sweep123" in out
    assert out.count("Starting wandb agent") == 2  # W&B's own agent, in each array task
    assert result.returncode != 0 and "No API key configured" in out, out[-2000:]
