"""A study killed midway (SIGKILL, a real process) and started again runs only the missing (arm, seed) points:
the runs finished before the kill are kept, the one it interrupted is failed by its heartbeat and run again,
and no point runs twice."""

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest

from hpeft.cli import main
from tests.study.test_spec import study_file


def complete(db) -> list[optuna.trial.FrozenTrial]:
    try:
        study = optuna.load_study(study_name="mini-tiny", storage=f"sqlite:///{db}")
    except KeyError:
        return []
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


@pytest.mark.slow
def test_killed_study_resumes_with_only_the_missing_runs(tmp_path, cache_dir):
    path = study_file(tmp_path, cache_dir)
    doc = path.read_text().replace("seeds: 2", "seeds: 3")
    path.write_text(doc)
    out = tmp_path / "out"
    db = out / "runs" / "mini-tiny" / "optuna.db"
    # A clean environment: in-process runs earlier in the session leave HPEFT_RUN_ID, PL_GLOBAL_SEED and the like.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HPEFT_", "PL_", "LOCAL_RANK", "WORLD_SIZE", "MASTER_"))}
    env.update({"WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"})
    log = (tmp_path / "study.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "hpeft.cli", "study", str(path), "--scale", "tiny", "--out", str(out)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 240
    # Watch the run records, not the database: opening the SQLite storage while the study creates its schema
    # races it (both write alembic_version).
    finished = lambda: len(list((out / "runs" / "mini-tiny").glob("*/summary.json")))  # noqa: E731
    while time.monotonic() < deadline and proc.poll() is None and finished() < 3:
        time.sleep(0.2)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    before = {t.user_attrs["run_dir"] for t in complete(db)}
    # The kill came midway: the study was not done (and it was the kill that ended it).
    assert 1 <= len(before) < 6 and proc.returncode == -signal.SIGKILL, (before, (tmp_path / "study.log").read_text()[-3000:])

    main(["study", str(path), "--scale", "tiny", "--out", str(out)])
    result = json.loads((out / "study.json").read_text())
    assert result["runs_found"] == result["runs_expected"] == 6
    finished = complete(db)
    points = {(t.params["config"], t.params["seed_everything"]) for t in finished}
    assert len(finished) == len(points) == 6  # every (arm, seed) once: nothing ran twice
    assert before <= {t.user_attrs["run_dir"] for t in finished}  # what had finished was kept, not re-run
    assert {r["run_dir"] for r in result["runs"]} == {t.user_attrs["run_dir"] for t in finished}
