"""sweeps/wandb/*.yaml: W&B's own `sweeps` package validates each file and proposes a run; W&B's agent code
builds the command line from that proposal exactly as `wandb agent` does; the command runs for a few steps.

The sweep files run cluster-scale configs, so the test appends overrides after the agent's ${args} (a tiny
backbone, tiny data, two steps, W&B disabled); the swept keys themselves are what the agent passed."""

import json
import os
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, TINY_BACKBONE
from tests.search.conftest import ONE_THREAD

SWEEP_FILES = sorted((REPO / "sweeps" / "wandb").glob("*.yaml"))


def _sweeps():
    with warnings.catch_warnings():  # sweeps 0.2 declares pydantic-1 style config keys
        warnings.simplefilter("ignore")
        import sweeps
    return sweeps


def _shrink(cache_dir: Path) -> list[str]:
    data = {"num_prbs": 2, "num_train": 64, "num_val": 32, "num_test": 32, "batch_size": 32, "num_workers": 0,
            "cache_dir": str(cache_dir), "lmmse": False, "progress": False, "scenario": "TDL-A"}
    return [f"--model.init_args.backbone={json.dumps(TINY_BACKBONE)}", "--model.init_args.base_checkpoint=null",
            *[f"--data.init_args.{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in data.items()],
            "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1",
            "--trainer.limit_test_batches=1", "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu",
            "--trainer.devices=1", "--wandb=disabled"]


def test_there_are_sweeps_of_every_method_and_one_with_hyperband():
    configs = [yaml.safe_load(p.read_text()) for p in SWEEP_FILES]
    assert {"bayes", "random", "grid"} <= {c["method"] for c in configs}
    assert any(c.get("early_terminate", {}).get("type") == "hyperband" for c in configs)


@pytest.mark.parametrize("path", SWEEP_FILES, ids=[p.stem for p in SWEEP_FILES])
def test_sweep_file_is_valid_and_its_proposed_run_is_valid(path):
    sweeps = _sweeps()
    config = yaml.safe_load(path.read_text())
    assert sweeps.schema_violations_from_proposed_config(config) == []
    run = sweeps.next_run(config, [], validate=True)
    assert set(run.config) == set(config["parameters"])
    command = config["command"]
    assert command[:3] == ["${env}", "hpeft", "fit"] and command[-1] == "${args}"
    assert (REPO / _base_config(command)).is_file()


def _base_config(command: list[str]) -> str:
    return command[command.index("--config") + 1]


@pytest.mark.slow
def test_agent_command_lines_run(tmp_path, cache_dir, monkeypatch):
    """Each sweep's proposed run, launched by wandb's real Agent._command_run, finishes with a run record.
    One run per distinct run config (the sweeps over one config differ only in their --key=value arguments)."""
    from wandb import wandb_agent

    sweeps = _sweeps()
    monkeypatch.chdir(REPO)  # sweep commands name configs relative to the repository, as agents run them
    env_before = dict(os.environ)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))  # where the agent writes the run's parameter file
    for k, v in ONE_THREAD.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("HPEFT_RUN_ID", raising=False)
    # `hpeft` as the agent's machine has it: on PATH, from this interpreter's environment.
    monkeypatch.setenv("PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    runs_dir = tmp_path / "runs"
    launched, seen = [], set()
    for i, path in enumerate(SWEEP_FILES):
        config = yaml.safe_load(path.read_text())
        if _base_config(config["command"]) in seen:
            continue
        seen.add(_base_config(config["command"]))
        proposed = sweeps.next_run(config, [], validate=True)
        # What the W&B server sends the agent is JSON: numpy numbers arrive as plain ones.
        values = json.loads(json.dumps({k: v["value"] for k, v in proposed.config.items()}, default=lambda o: o.item()))
        agent = wandb_agent.Agent(api=None, queue=None, sweep_id=f"test{i}")
        # The sweep's command as the W&B server hands it to the agent, plus the test's shrinking overrides.
        agent._sweep_command = [*config["command"], f"--runs_dir={runs_dir}", *_shrink(cache_dir)]
        run_id = f"sweeprun{i}"
        agent._command_run({"run_id": run_id, "program": config.get("program"),
                            "args": {k: {"value": v} for k, v in values.items()}})
        launched.append((path, agent, run_id, values))
    assert len(launched) >= 2
    failures = []
    for path, agent, run_id, values in launched:
        code = agent._run_processes[run_id].wait(timeout=300)
        if code != 0:
            failures.append(f"{path.name}: exit {code}")
    os.environ.clear()
    os.environ.update(env_before)
    assert not failures, failures
    for path, _, _, values in launched:
        experiment = next(a.split("=", 1)[1] for a in yaml.safe_load(path.read_text())["command"] if a.startswith("--experiment="))
        (summary_path,) = (runs_dir / experiment).glob("*/summary.json")
        summary = json.loads(summary_path.read_text())
        for key, value in values.items():  # the agent's --key=value reached the run's hyperparameters
            assert summary["hparams"][key.rsplit(".", 1)[-1]] == pytest.approx(value)
        assert summary["trained_steps"] == 2 and "test/nmse_db" in summary["metrics"]
