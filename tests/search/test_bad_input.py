"""Bad search input stops `hpeft search` before any trial starts, with exit status 2 and a message that
names the bad value and what is valid. Nothing here trains: the checks only parse."""

import pytest
import yaml

from hpeft.search.command import search_command
from hpeft.search.space import cli_value, decode, encode, grid_points, parse_space
from tests.search.conftest import search_config, tiny_run_config


def _fails(tmp_path, monkeypatch, capsys, argv) -> str:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        search_command(argv)
    assert exit_.value.code == 2
    assert not (tmp_path / "runs").exists()  # no trial, no run dir, no study file
    return capsys.readouterr().err


CASES = [
    ({"space": {"model.init_args.lora_rnk": [2, 4]}},
     ["search key 'model.init_args.lora_rnk' is not in run config", "did you mean ['model.init_args.lora_rank'"]),
    ({"space": {"model.init_args.lora_rank": {"type": "int", "low": 8, "high": 2}}}, ["empty range, low=8 > high=2"]),
    ({"space": {"model.init_args.lora_rank": []}}, ["empty choices []"]),
    ({"space": {"model.init_args.lora_rank": ["two"]}}, ["lora_rank = 'two' is refused", "Expected a <class 'int'>"]),
    ({"space": {"model.init_args.lr": {"type": "float", "low": 0, "high": 1, "log": True}}}, ["log=true needs low > 0"]),
    ({"space": {"model.init_args.lr": {"type": "float", "low": 0.001, "high": 1, "log": True, "step": 1}}},
     ["log=true and step=1 cannot be combined"]),
    ({"space": {"model.init_args.lora_rank": {"type": "integer", "low": 1, "high": 2}}}, ["type 'integer'", "'int', 'float', 'categorical'"]),
    ({"sampler": {"type": "cmaes"}}, ["sampler 'cmaes'", "'tpe', 'nsga2', 'gp', 'grid', 'random'"]),
    ({"sampler": {"type": "tpe", "n_startup": 3}}, ["unknown options ['n_startup']", "n_startup_trials"]),
    ({"pruner": {"type": "asha"}}, ["pruner 'asha'", "'median'"]),
    ({"objectives": [{"metric": "test/accuracy"}]}, ["objective 'test/accuracy'", "test/nmse_db", "params.trainable"]),
    ({"objectives": [{"metric": "test/nmse_db", "direction": "down"}]}, ["direction 'down'", "'minimize', 'maximize'"]),
    ({"objectives": ["test/nmse_db", "params.trainable"], "pruner": {"type": "median"}},
     ["Optuna does not prune multi-objective studies"]),
    ({"constraints": ["trainable below 5"]}, ["constraint 'trainable below 5'", "params.trainable <= 80000"]),
    ({"constraints": ["params.trainabel <= 5"]}, ["'params.trainabel' is not a figure"]),
    ({"fixed": {"test_after_fit": False}}, ["test_after_fit: false", "test_after_fit: true"]),
    ({"base_config": "nope.yaml"}, ["run config 'nope.yaml' does not exist"]),
    ({"n_trials": 0}, ["n_trials=0 must be a positive integer"]),
    ({"heartbeat": {"interval": 10, "grace_period": 5}}, ["grace_period 5 must exceed interval 10"]),
    ({"workers": 3}, ["unknown keys ['workers']", "valid keys"]),
    ({"fixed": {"experiment": "x"}}, ["'experiment' is set by the search itself"]),
]


@pytest.mark.parametrize("change, expected", CASES, ids=[str(i) for i in range(len(CASES))])
def test_bad_search_config_is_refused_before_any_trial(tmp_path, cache_dir, monkeypatch, capsys, change, expected):
    base = tiny_run_config(tmp_path / "run.yaml", cache_dir)
    cfg = search_config(tmp_path / "search.yaml", base, **change)
    err = _fails(tmp_path, monkeypatch, capsys, ["--config", str(cfg)])
    for text in expected:
        assert text in err, err


def test_unreachable_storage_is_named(tmp_path, cache_dir, monkeypatch, capsys):
    cfg = search_config(tmp_path / "search.yaml", tiny_run_config(tmp_path / "run.yaml", cache_dir))
    err = _fails(tmp_path, monkeypatch, capsys, ["--config", str(cfg), "--storage", "postgresql://hpeft:secret@127.0.0.1:9/none"])
    assert "storage postgresql://hpeft:***@127.0.0.1:9/none is not reachable" in err and "secret" not in err
    err = _fails(tmp_path, monkeypatch, capsys, ["--config", str(cfg), "--storage", "redis://127.0.0.1/0"])
    assert "scheme 'redis'" in err


def test_sqlite_with_several_workers_points_at_postgresql(tmp_path, cache_dir, monkeypatch, capsys):
    cfg = search_config(tmp_path / "search.yaml", tiny_run_config(tmp_path / "run.yaml", cache_dir))
    err = _fails(tmp_path, monkeypatch, capsys, ["--config", str(cfg), "--workers", "2"])
    assert "--workers 2 with SQLite" in err and "--storage postgresql://" in err


def test_a_config_search_key_checks_every_run_config(tmp_path, cache_dir, monkeypatch, capsys):
    good = tiny_run_config(tmp_path / "run.yaml", cache_dir)
    other = tmp_path / "prompt.yaml"
    config = yaml.safe_load(good.read_text())
    config["model"]["init_args"].pop("lora_rank")
    config["model"]["class_path"] = "hpeft.PromptOnly"
    other.write_text(yaml.safe_dump(config))
    cfg = search_config(tmp_path / "search.yaml", good, base_config=None,
                        space={"config": [str(good), str(other)], "model.init_args.lora_rank": [2]})
    err = _fails(tmp_path, monkeypatch, capsys, ["--config", str(cfg)])
    assert f"'model.init_args.lora_rank' is not in run config {other}" in err


def test_dry_run_prints_every_grid_point(tmp_path, cache_dir, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = search_config(tmp_path / "search.yaml", tiny_run_config(tmp_path / "run.yaml", cache_dir), sampler={"type": "grid"}, n_trials=None,
                        space={"model.init_args.lora_rank": {"type": "int", "low": 2, "high": 6, "step": 2},
                               "model.init_args.lora_targets": [["q", "v"], ["q", "k", "v"]]})
    search_command(["--config", str(cfg), "--dry-run"])
    out = capsys.readouterr().out
    assert "6 trials, sampler grid" in out
    assert out.count("hpeft fit --config") == 6
    assert "'--model.init_args.lora_targets=[\"q\", \"k\", \"v\"]' --experiment=t" in out
    assert not (tmp_path / "runs").exists()


def test_space_values_round_trip_through_optuna_and_the_command_line():
    space = parse_space({"a": {"type": "float", "low": 0.1, "high": 0.5, "step": 0.2}, "b": [["x", "y"], 3, None]})
    assert space["a"].grid_values() == [0.1, 0.3, 0.5]
    assert parse_space({"r": {"type": "int", "low": 2, "high": 5}})["r"].grid_values() == [2, 3, 4, 5]  # step 1
    assert [decode(encode(c)) for c in space["b"].choices] == [["x", "y"], 3, None]
    assert encode(["x", "y"]) == 'json:["x", "y"]'  # Optuna stores only primitives
    assert len(grid_points(space)) == 9
    assert [cli_value(v) for v in (["q", "v"], 3, None, True, "InF")] == ['["q", "v"]', "3", "null", "true", "InF"]


def test_a_trial_that_would_launch_ddp_processes_is_refused(tmp_path, cache_dir, monkeypatch, capsys):
    cfg = search_config(tmp_path / "search.yaml", tiny_run_config(tmp_path / "run.yaml", cache_dir),
                        fixed={"trainer.strategy": "ddp", "trainer.devices": 2})
    err = _fails(tmp_path, monkeypatch, capsys, ["--config", str(cfg)])
    assert "one device" in err and "one worker per GPU" in err
