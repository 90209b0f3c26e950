"""Run ids: one per run, and the same one in every process of a distributed run.

Processes that Lightning launches itself (ddp on one machine) inherit HPEFT_RUN_ID from rank 0. Processes that a
cluster launcher starts (srun, torchrun) start at once, each on its own, before any process group exists, so they
derive the id from what the launcher gave them all alike: SLURM's job and step ids, torchrun's rendezvous id.
"""

from __future__ import annotations

import os
import secrets
import time


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def launcher_run_id(env: dict | None = None) -> str | None:
    """The id every task of one multi-process srun or torchrun launch derives alike; None for anything else."""
    env = os.environ if env is None else env
    if int(env.get("SLURM_NTASKS", "1")) > 1 and env.get("SLURM_JOB_ID") and \
            env.get("SLURM_JOB_NAME") not in ("bash", "interactive"):  # Lightning's own test for srun
        # A requeued job keeps its job id and starts its steps from 0 again: the restart count keeps it apart.
        restart = env.get("SLURM_RESTART_COUNT", "0")
        return f"slurm-{env['SLURM_JOB_ID']}-{env.get('SLURM_STEP_ID', '0')}" + (f"-r{restart}" if restart != "0" else "")
    if int(env.get("WORLD_SIZE", "1")) > 1 and env.get("TORCHELASTIC_RUN_ID", "none") != "none":
        return f"torchrun-{env['TORCHELASTIC_RUN_ID']}-r{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    return None


def run_id_for(resumed: str | None) -> str:
    """This process's run id: a resumed run's own, a launcher-derived one, rank 0's (for a rank Lightning
    launched), or a new one; exported as HPEFT_RUN_ID for the ranks this process may launch."""
    if os.environ.get("LOCAL_RANK", "0") != "0" and os.environ.get("HPEFT_RUN_ID"):
        return os.environ["HPEFT_RUN_ID"]
    run_id = resumed or launcher_run_id() or new_run_id()
    os.environ["HPEFT_RUN_ID"] = run_id
    return run_id
