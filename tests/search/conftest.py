"""Search fixtures: a tiny run config whose trials take seconds, search configs over it, and the real
PostgreSQL server (HPEFT_TEST_POSTGRES_URL, default the local one). Without a server the PostgreSQL tests
skip, except under CI or HPEFT_REQUIRE_POSTGRES=1, where they fail."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import optuna
import pytest
import yaml

from tests.conftest import run_hpeft, tiny_config, write_config

POSTGRES_URL = os.environ.get("HPEFT_TEST_POSTGRES_URL", "postgresql://root@127.0.0.1:5432/test")

# One epoch of 2 batches, 1 validation and 1 test batch: a trial is a few seconds of a real `hpeft fit`.
TINY_TRAINER = {"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1, "limit_test_batches": 1,
                "num_sanity_val_steps": 0, "log_every_n_steps": 1, "enable_progress_bar": False, "enable_model_summary": False}


# One torch thread per process: on 2 shared cores two OpenMP threads stall at every barrier (benchmarks/README.md),
# which made a 1.5 s trial take 6-18 s here.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture
def one_thread():
    """Trials run in this process (as `hpeft search` runs them): one torch thread while they do."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_search(args: list[str], cwd: Path, timeout: int = 300):
    return run_hpeft(["search", *args], cwd, timeout=timeout, env=ONE_THREAD)


def tiny_run_config(path: Path, cache_dir: Path, **trainer) -> Path:
    config = tiny_config(cache_dir, test_after_fit=True, trainer={**TINY_TRAINER, **trainer})
    return write_config(path, config)


def search_config(path: Path, base: Path, **fields) -> Path:
    config = {
        "study": "t", "base_config": str(base),
        "space": {"model.init_args.lora_rank": {"type": "int", "low": 1, "high": 8}},
        "objectives": [{"metric": "test/nmse_db", "direction": "minimize"}],
        "sampler": {"type": "random", "seed": 0}, "n_trials": 2,
        "heartbeat": {"interval": 1, "grace_period": 4, "max_retry": 3},
        **fields,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def unique_study(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def load(url: str, study: str) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=study, storage=url)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 5})
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("select 1"))
        engine.dispose()
    except Exception as err:  # noqa: BLE001 - any reason the server is not there
        message = f"PostgreSQL at {POSTGRES_URL} is not reachable ({str(err).splitlines()[0]}); set HPEFT_TEST_POSTGRES_URL"
        if os.environ.get("HPEFT_REQUIRE_POSTGRES") == "1" or os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return POSTGRES_URL


@pytest.fixture
def pg_study(postgres_url):
    """A fresh study name on the real server; the study is deleted afterwards."""
    name = unique_study("pytest")
    yield name
    try:
        optuna.delete_study(study_name=name, storage=postgres_url)
    except KeyError:
        pass
