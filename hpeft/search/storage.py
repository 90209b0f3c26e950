"""Where a study lives: a SQLite file under runs/ by default, PostgreSQL (or MySQL) for many workers.

Every storage is Optuna's RDBStorage with heartbeats: a running trial's worker writes a heartbeat every
`interval` seconds; a trial whose heartbeat is older than `grace_period` (its worker was killed, its node
lost) is marked FAILED by the next worker that looks, and RetryHeartbeatStaleTrialCallback enqueues the
same parameters again as a new trial, so the study still ends with its n_trials.

SQLite is for one worker: it locks the whole file on every write, and Optuna's journal-file storage, the
other file-based option, has no heartbeats (a killed worker's trial would stay RUNNING for ever). So
`--workers N` with N > 1 on SQLite is refused with a pointer to PostgreSQL."""

from __future__ import annotations

import contextlib
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from hpeft.search.errors import SearchError

SCHEMES = ("sqlite", "postgresql", "mysql")
POSTGRES_HINT = ("run PostgreSQL (docker compose -f docker/compose.yaml up -d postgres, or any server) and pass "
                 "--storage postgresql://USER@HOST:5432/DB")


def default_url(runs_dir: str, study: str) -> str:
    return f"sqlite:///{Path(runs_dir) / study / 'optuna.db'}"


def scheme(url: str) -> str:
    return url.split(":", 1)[0].split("+", 1)[0]


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a malformed URL is shown as given
        return url


def check_url(url: str, workers: int) -> None:
    if scheme(url) not in SCHEMES:
        raise SearchError(f"storage {redact(url)!r}: scheme {scheme(url)!r}; valid: sqlite:///FILE, postgresql://..., mysql://...")
    if scheme(url) == "sqlite" and workers > 1:
        raise SearchError(f"--workers {workers} with SQLite ({redact(url)}): SQLite is for one worker at a time (it locks "
                          f"the whole file, and Optuna's journal file has no heartbeats for killed workers); {POSTGRES_HINT}")


def _engine_kwargs(url: str) -> dict:
    if scheme(url) == "postgresql":
        # Fail fast on an unreachable server; pre-ping replaces connections a restart or a firewall dropped.
        return {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    if scheme(url) == "sqlite":
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True}


def open_storage(url: str, heartbeat: dict) -> RDBStorage:
    """RDBStorage with heartbeats and retries; an unreachable server is a SearchError naming it."""
    if scheme(url) == "sqlite" and url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():  # heartbeats and retries are marked experimental; they are what we rely on
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                url, engine_kwargs=_engine_kwargs(url), heartbeat_interval=heartbeat["interval"],
                grace_period=heartbeat["grace_period"],
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=heartbeat["max_retry"]),
            )
    except Exception as err:  # noqa: BLE001 - sqlalchemy's OperationalError, a missing driver, a bad URL
        cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SearchError(f"storage {redact(url)} is not reachable: {cause}") from None


def fail_stale_trials(study: optuna.Study) -> None:
    """Mark trials whose worker stopped beating FAILED; the retry callback enqueues each again."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def study_directions(storage: RDBStorage, study: str) -> list[str] | None:
    """The directions of an existing study (None if there is none), to refuse resuming it with others."""
    try:
        loaded = optuna.load_study(study_name=study, storage=storage)
    except KeyError:
        return None
    return [d.name.lower() for d in loaded.directions]


@contextlib.contextmanager
def trial_start_lock(url: str, study: str) -> Iterator[callable]:
    """A lock held from 'how many trials are left?' until the next trial exists, so two workers cannot both
    start the last trial. Yields `release`; the lock is also released on leaving the block.
    PostgreSQL: a session advisory lock (freed by the server if the worker dies); SQLite: one worker, no lock."""
    if scheme(url) != "postgresql":
        yield lambda: None
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool, **_engine_kwargs(url))
    key = zlib.crc32(f"hpeft-search:{study}".encode())
    conn = engine.connect()
    held = [False]

    def release() -> None:
        if held[0]:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()
            held[0] = False

    try:
        conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
        conn.commit()
        held[0] = True
        yield release
    finally:
        release()
        conn.close()
        engine.dispose()
