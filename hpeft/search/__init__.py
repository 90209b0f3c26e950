"""Search: Optuna studies whose trials are ordinary `hpeft fit` runs, on one machine or many.

    config.py      the search config (sweeps/optuna/*.yaml) and its own checks
    space.py       search parameters over dotted run-config keys (and `config`, the base run config)
    objectives.py  objectives and constraints, read from a trial run's summary.json
    samplers.py    samplers and pruners by name
    run_config.py  a trial's `hpeft fit` arguments, checked against the run configs before any trial
    storage.py     SQLite / PostgreSQL storage with heartbeats and retries, the trial-start lock
    trial.py       one trial: an in-process `hpeft fit` with the pruning callback
    study.py       one worker's loop; n_trials counts across workers
    workers.py     --workers N on one machine
    results.py     what a study prints when it ends
    command.py     `hpeft search`
"""

from hpeft.search.config import SearchConfig, load
from hpeft.search.errors import SearchError

__all__ = ["SearchConfig", "SearchError", "load"]
