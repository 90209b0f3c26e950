"""The cluster kit, checked as far as a machine without GPUs, Docker or SLURM can: the compose file parses and
wires workers to its PostgreSQL, the SLURM scripts pass `bash -n`, every `hpeft` command they run exists, the
`hpeft fit` of the DDP script parses with the trainer keys it sets, and every path they name exists."""

import re
import subprocess

import pytest
import yaml

from hpeft.cli import TRAINER_COMMANDS
from hpeft.search.run_config import _ParseOnly
from tests.conftest import REPO

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
