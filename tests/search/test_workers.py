"""Several workers on one study on the real PostgreSQL: n_trials counts across them, no trial is lost or run
twice, and a worker killed mid-trial leaves a study that heartbeats repair and the other worker completes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from hpeft import search
from hpeft.search.study import run_worker
from tests.search.conftest import ONE_THREAD, load, run_search, search_config, tiny_run_config


def _check_runs(study, n: int) -> None:
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == n
    run_dirs = [t.user_attrs["run_dir"] for t in complete]
    assert len(set(run_dirs)) == n  # one run per trial, none shared
    for t in complete:
        summary = json.loads((Path(t.user_attrs["run_dir"]) / "summary.json").read_text())
        assert summary["search"]["trial"] == t.number and summary["experiment"] == study.study_name
        assert summary["hparams"]["lora_rank"] == t.params["model.init_args.lora_rank"]
        assert t.values[0] == summary["metrics"]["test/nmse_db"]


def test_two_workers_finish_n_trials_with_none_lost_or_duplicated(tmp_path, cache_dir, postgres_url, pg_study):
    base = tiny_run_config(tmp_path / "run.yaml", cache_dir)
    cfg = search_config(tmp_path / "search.yaml", base, study=pg_study, n_trials=4)
    result = run_search(["--config", str(cfg), "--storage", postgres_url, "--workers", "2"], tmp_path, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    study = load(postgres_url, pg_study)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2  # both workers ran trials
    _check_runs(study, 4)
    # Started again, the study resumes: it already has its 4 trials, so this worker runs none.
    config = search.load(cfg).with_overrides(storage=postgres_url)
    assert run_worker(config, postgres_url) == 0
    assert len(load(postgres_url, pg_study).trials) == 4


def test_two_workers_run_every_grid_point_exactly_once(tmp_path, cache_dir, postgres_url, pg_study):
    """Both workers must mean the same point by a grid index: with per-worker seeds they took each other's points
    for visited (a 2-worker 84-point study ran 92 trials over 61 points). Every point once, none twice."""
    base = tiny_run_config(tmp_path / "run.yaml", cache_dir)
    cfg = search_config(tmp_path / "search.yaml", base, study=pg_study, n_trials=None, sampler={"type": "grid", "seed": 0},
                        space={"model.init_args.lora_rank": [1, 2, 3], "seed_everything": [0, 1]})
    result = run_search(["--config", str(cfg), "--storage", postgres_url, "--workers", "2"], tmp_path, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    study = load(postgres_url, pg_study)
    points = [(t.params["model.init_args.lora_rank"], t.params["seed_everything"]) for t in study.trials]
    assert sorted(points) == [(r, s) for r in (1, 2, 3) for s in (0, 1)]  # six trials, six points
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2


def test_a_failed_grid_point_is_run_again_not_replaced_by_a_duplicate(tmp_path, cache_dir, one_thread):
    """A grid trial whose run raised (here: a rank the model refuses) stops its worker; fixed and started again,
    the search runs that point, not a random finished one (Optuna's GridSampler would count it visited)."""
    base = tiny_run_config(tmp_path / "run.yaml", cache_dir)
    cfg = search_config(tmp_path / "search.yaml", base, n_trials=None, sampler={"type": "grid", "seed": 0},
                        space={"model.init_args.lora_rank": [1, 2, 3]})
    config = search.load(cfg)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    import yaml

    run_yaml = yaml.safe_load(base.read_text())
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**run_yaml, "model": {**run_yaml["model"], "init_args": {**run_yaml["model"]["init_args"], "lora_dropout": 1.5}}}))
    broken = search.load(cfg).with_overrides()
    broken.base_config = str(bad)  # every trial of this one raises: its runs refuse lora_dropout 1.5
    with pytest.raises(RuntimeError, match="trial 0: hpeft fit exited with status 2"):
        run_worker(broken, url)
    first = load(url, config.study).trials
    assert [t.state for t in first] == [TrialState.FAIL]
    run_worker(config, url)
    trials = load(url, config.study).trials
    done = sorted(t.params["model.init_args.lora_rank"] for t in trials if t.state == TrialState.COMPLETE)
    assert done == [1, 2, 3]  # the failed point among them, and no point twice
    assert len(trials) == 4


def _worker(cfg: Path, url: str, cwd: Path, index: int) -> subprocess.Popen:
    env = {**os.environ, **ONE_THREAD, "WANDB_SILENT": "true", "HPEFT_SEARCH_WORKER": str(index)}
    env.pop("HPEFT_RUN_ID", None)
    return subprocess.Popen([sys.executable, "-m", "hpeft.cli", "search", "--config", str(cfg), "--storage", url],
                            cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_killed_worker_trial_fails_by_heartbeat_is_retried_and_the_search_completes(tmp_path, cache_dir, postgres_url, pg_study):
    # The victim's runs last minutes, so it is killed mid-trial however slow the machine is (with 4-epoch runs a
    # trial once finished in the second between being seen RUNNING and the kill). The survivor works on the same
    # study with short runs, as a user would resume a study after fixing its base config.
    long_base = tiny_run_config(tmp_path / "long.yaml", cache_dir, max_epochs=1000)
    base = tiny_run_config(tmp_path / "run.yaml", cache_dir)
    cfg = search_config(tmp_path / "search.yaml", base, study=pg_study, n_trials=2)
    victim = _worker(search_config(tmp_path / "victim.yaml", long_base, study=pg_study, n_trials=2), postgres_url, tmp_path, 0)
    survivor = killed = None
    deadline = time.time() + 180
    while killed is None and time.time() < deadline and victim.poll() is None:
        time.sleep(0.2)
        try:
            trials = load(postgres_url, pg_study).trials
        except KeyError:
            continue
        mine = [t for t in trials if t.state == TrialState.RUNNING and t.user_attrs.get("worker", "").endswith(f":{victim.pid}")]
        if mine:
            # The second worker starts while the victim's trial runs; then the victim dies without any cleanup,
            # so its trial stays RUNNING in the storage until a heartbeat check finds it stale.
            survivor = _worker(cfg, postgres_url, tmp_path, 1)
            time.sleep(1)
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait()
            killed = mine[0].number
    assert killed is not None, f"the victim worker never ran a trial: {victim.communicate()[1][-2000:]}"
    _, err = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, err[-3000:]
    study = load(postgres_url, pg_study)
    by_number = {t.number: t for t in study.trials}
    assert by_number[killed].state == TrialState.FAIL  # failed by the heartbeat check, not left RUNNING
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == by_number[killed].params
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    _check_runs(study, 2)
