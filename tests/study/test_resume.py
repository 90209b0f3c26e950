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

from hpeft.cli import main
from tests.study.test_spec import study_file


def complete(db) -> list[optuna.trial.FrozenTrial]:
    try:
        study = optuna.load_study(study_name="mini-tiny", storage=f"sqlite:///{db}")
    except KeyError:
        return []
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def test_killed_study_resumes_with_only_the_missing_runs(tmp_path, cache_dir):
    path = study_file(tmp_path, cache_dir)
    doc = path.read_text().replace("seeds: 2", "seeds: 3")
    path.write_text(doc)
    out = tmp_path / "out"
    db = out / "runs" / "mini-tiny" / "optuna.db"
    env = {**os.environ, "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "hpeft.cli", "study", str(path), "--scale", "tiny", "--out", str(out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and (not db.is_file() or len(complete(db)) < 2):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    before = {t.user_attrs["run_dir"] for t in complete(db)}
    assert 2 <= len(before) < 6, before  # the kill came midway: the study was not done

    main(["study", str(path), "--scale", "tiny", "--out", str(out)])
    result = json.loads((out / "study.json").read_text())
    assert result["runs_found"] == result["runs_expected"] == 6
    finished = complete(db)
    points = {(t.params["config"], t.params["seed_everything"]) for t in finished}
    assert len(finished) == len(points) == 6  # every (arm, seed) once: nothing ran twice
    assert before <= {t.user_attrs["run_dir"] for t in finished}  # what had finished was kept, not re-run
    assert {r["run_dir"] for r in result["runs"]} == {t.user_attrs["run_dir"] for t in finished}
