"""One worker's loop over a shared study.

n_trials counts across every worker on the study (on any machine): a worker starts a trial only while
COMPLETE + PRUNED + RUNNING trials number fewer than n_trials, checked and started under a lock so two
workers never both take the last one. A worker with nothing left to start waits while others still run
trials, looking for stale ones: if their worker dies, the heartbeat check fails the trial, the retry
callback enqueues it again, and this worker runs it. So a study ends with exactly n_trials finished.
A grid is handed out point by point (next_grid_point): every point runs once, a failed one again."""

from __future__ import annotations

import itertools
import json
import random
import time
from collections import Counter

import optuna
from optuna.trial import TrialState

from hpeft.search.config import SearchConfig
from hpeft.search.errors import SearchError
from hpeft.search.samplers import make_pruner, make_sampler, worker_index
from hpeft.search.space import grid
from hpeft.search.storage import fail_stale_trials, open_storage, study_directions, trial_start_lock
from hpeft.search.trial import run_trial

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def open_study(config: SearchConfig, url: str) -> optuna.Study:
    """Create the study, or load it to resume; refuses one created with other objective directions."""
    storage = open_storage(url, config.heartbeat)
    directions = [o.direction for o in config.objectives]
    existing = study_directions(storage, config.study)
    if existing is not None and existing != directions:
        raise SearchError(f"study {config.study!r} already exists in this storage with directions {existing}; "
                          f"this config has {directions}: use another --study-name")
    return optuna.create_study(
        study_name=config.study, storage=storage, directions=directions, load_if_exists=True,
        sampler=make_sampler(config.sampler, config.space, worker_index()), pruner=make_pruner(config.pruner, len(config.objectives)),
    )


def trial_counts(study: optuna.Study) -> Counter:
    return Counter(t.state for t in study.get_trials(deepcopy=False))


def _point(trial) -> str:
    params = trial.params or trial.system_attrs.get("fixed_params", {})  # a WAITING (enqueued) trial has only the latter
    return json.dumps(sorted(params.items()), default=str)


def finished_grid_points(study: optuna.Study) -> int:
    """Distinct grid points with a COMPLETE or PRUNED trial: a point run twice counts once."""
    return len({_point(t) for t in study.get_trials(deepcopy=False) if t.state in FINISHED})


def next_grid_point(study: optuna.Study, space: dict, seed: int = 0) -> dict | None:
    """The first grid point, in an order shuffled by the sampler's seed (the same in every worker, so a grid cut
    short by n_trials is a random part of it), with no finished, running or queued trial; None when every point
    has one. hpeft hands grid points out itself, as enqueued trials, rather than leaving it to Optuna's GridSampler: it
    counts a FAILED point as visited and, once every point was visited, re-runs a random one, so a grid with a
    failed trial (a run that raised, since fixed) would end with a duplicate and a hole."""
    trials = study.get_trials(deepcopy=False)
    covered = {_point(t) for t in trials if t.state in (*FINISHED, TrialState.RUNNING, TrialState.WAITING)}
    keys, values = zip(*grid(space).items())
    combos = list(itertools.product(*values))
    random.Random(seed).shuffle(combos)
    for combo in combos:
        params = dict(zip(keys, combo))
        if json.dumps(sorted(params.items()), default=str) not in covered:
            return params
    return None


def run_worker(config: SearchConfig, url: str, poll_seconds: float | None = None) -> int:
    """Run trials until the study has its n_trials (or this worker's timeout passes); returns how many it ran."""
    study = open_study(config, url)
    target = config.total_trials
    poll = poll_seconds if poll_seconds is not None else max(1.0, config.heartbeat["interval"] / 2)
    deadline = time.monotonic() + config.timeout if config.timeout else None
    ran = 0
    release_box: list = [lambda: None]

    def objective(trial: optuna.Trial):
        release_box[0]()  # the trial exists now (RUNNING): other workers may count it and start theirs
        return run_trial(trial, config)

    while deadline is None or time.monotonic() < deadline:
        with trial_start_lock(url, config.study) as release:
            fail_stale_trials(study)  # a dead worker's trial: FAILED, and enqueued again
            grid = config.sampler_type == "grid"
            counts = trial_counts(study)
            finished = finished_grid_points(study) if grid else sum(counts[s] for s in FINISHED)
            if finished >= target:
                break
            if counts[TrialState.FAIL] > max(3, target):  # e.g. a NaN objective: FAIL without an exception
                raise SearchError(f"study {config.study!r}: {counts[TrialState.FAIL]} trials failed (more than "
                                  f"{max(3, target)}); stopping rather than failing for ever. Their run dirs and "
                                  "the worker's log say why.")
            waiting, point = counts[TrialState.WAITING], None
            if grid:
                seed = (config.sampler.get("seed") if isinstance(config.sampler, dict) else None) or 0
                point = None if waiting else next_grid_point(study, config.space, seed)
                idle = not waiting and point is None
            else:
                idle = finished + counts[TrialState.RUNNING] >= target
            if idle:
                release()
                time.sleep(poll)  # the last trials are running elsewhere; stay until they finish or go stale
                continue
            if point is not None:
                study.enqueue_trial(point, skip_if_exists=False)  # this worker's next trial: optimize takes it first
            release_box[0] = release
            study.optimize(objective, n_trials=1, catch=())
            ran += 1
    return ran
