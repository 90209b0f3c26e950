"""A study's trials are real `hpeft fit` runs (in this process, as `hpeft search` runs them): the Pareto front
equals a brute-force one, constraints reach Optuna, pruning stops a bad trial, and `hpeft report` reads the study."""

import json
import math
from pathlib import Path

import pytest
from optuna.trial import TrialState

from hpeft import search
from hpeft.report.sources import collect
from hpeft.search.study import open_study, run_worker
from tests.search.conftest import search_config, tiny_run_config

BOUND = 2000  # LoRA rank r on the tiny model has 448 r trainable parameters: ranks 1-4 are feasible


def _brute_force_front(trials):
    def dominates(a, b):
        return all(x <= y for x, y in zip(a.values, b.values)) and any(x < y for x, y in zip(a.values, b.values))

    return {t.number for t in trials if not any(dominates(o, t) for o in trials if o is not t)}


@pytest.fixture(scope="module")
def pareto_study(tmp_path_factory, cache_dir):
    """A multi-objective NSGA-II study with a budget constraint, run once for the tests below."""
    import torch

    tmp = tmp_path_factory.mktemp("pareto")
    mp = pytest.MonkeyPatch()
    mp.chdir(tmp)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see ONE_THREAD
    base = tiny_run_config(tmp / "run.yaml", cache_dir)
    cfg = search_config(tmp / "search.yaml", base, study="pareto", n_trials=6,
                        space={"model.init_args.lora_rank": {"type": "int", "low": 1, "high": 8},
                               "model.init_args.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True}},
                        objectives=[{"metric": "test/nmse_db", "direction": "minimize"},
                                    {"metric": "params.trainable", "direction": "minimize"}],
                        constraints=[f"params.trainable <= {BOUND}"], sampler={"type": "nsga2", "seed": 1, "population_size": 4})
    config = search.load(cfg)
    url = f"sqlite:///{tmp / 'optuna.db'}"
    assert run_worker(config, url) == 6
    torch.set_num_threads(threads)
    yield open_study(config, url), url
    mp.undo()


def test_pareto_front_equals_brute_force(pareto_study):
    study, _ = pareto_study
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 6
    feasible = [t for t in complete if all(c <= 0 for c in t.constraints.values())]
    assert feasible, "no feasible trial"
    assert {t.number for t in study.best_trials} == _brute_force_front(feasible)


def test_constraints_reach_optuna_and_are_respected_by_the_front(pareto_study):
    study, _ = pareto_study
    for t in study.trials:
        trainable = t.user_attrs["trainable"]
        assert trainable == 448 * t.params["model.init_args.lora_rank"]
        assert t.constraints == {f"params.trainable <= {BOUND}": trainable - BOUND}
        assert t.user_attrs["constraint"] == [trainable - BOUND]  # the list form Optuna's examples read
    assert all(t.user_attrs["trainable"] <= BOUND for t in study.best_trials)


def test_each_trial_is_an_ordinary_run_named_by_its_trial(pareto_study):
    study, _ = pareto_study
    for t in study.trials:
        run_dir = Path(t.user_attrs["run_dir"])
        assert run_dir.parent.name == "pareto"  # runs/<study>/<run_id>: the study is the experiment
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["search"] == {"study": "pareto", "trial": t.number, "params": t.params, "sampler": "nsga2"}
        assert summary["hparams"]["lora_rank"] == t.params["model.init_args.lora_rank"]
        assert math.isclose(summary["hparams"]["lr"], t.params["model.init_args.lr"])
        assert list(t.values) == [summary["metrics"]["test/nmse_db"], summary["params"]["trainable"]]
        assert (run_dir / "config.yaml").is_file() and (run_dir / "adapter.safetensors").is_file()


def test_report_reads_the_study(pareto_study, tmp_path):
    study, url = pareto_study
    summaries, skipped = collect(storage=url, study="pareto")
    assert skipped == []
    assert sorted(s["search"]["trial"] for s in summaries) == sorted(t.number for t in study.trials)
    assert all(s["_source"].startswith("optuna:pareto#") for s in summaries)
    from hpeft.report.command import report_command

    report_command(["--storage", url, "--study", "pareto", "--out", str(tmp_path / "report.html")])
    assert (tmp_path / "report.html").stat().st_size > 10_000


def test_pruning_stops_a_bad_trial_and_keeps_its_run_record(tmp_path, cache_dir, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    base = tiny_run_config(tmp_path / "run.yaml", cache_dir, max_epochs=3)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    pruner = {"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0}
    # A good learning rate first (it completes: the pruner needs one finished trial to compare with), then
    # the same study with a learning rate too small to move: worse than the median at the first epoch.
    good = search_config(tmp_path / "good.yaml", base, study="prune", n_trials=1, pruner=pruner,
                         space={"model.init_args.lr": {"type": "float", "low": 0.02, "high": 0.03}})
    run_worker(search.load(good), url)
    bad = search_config(tmp_path / "bad.yaml", base, study="prune", n_trials=2, pruner=pruner,
                        space={"model.init_args.lr": {"type": "float", "low": 1e-9, "high": 2e-9}})
    run_worker(search.load(bad), url)
    study = open_study(search.load(bad), url)
    first, second = study.trials
    assert first.state == TrialState.COMPLETE and sorted(first.intermediate_values) == [0, 1, 2]
    assert second.state == TrialState.PRUNED and list(second.intermediate_values) == [0]
    assert second.intermediate_values[0] > first.intermediate_values[0]
    pruned = json.loads((Path(second.user_attrs["run_dir"]) / "summary.json").read_text())
    assert pruned["metrics"]["val/nmse_db"] == pytest.approx(second.intermediate_values[0])
    assert "test/nmse_db" not in pruned["metrics"]  # it stopped before the test
    assert pruned["search"]["pruned"] is True and pruned["search"]["trial"] == second.number
