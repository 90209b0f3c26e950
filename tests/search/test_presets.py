"""sweeps/optuna/*.yaml: every preset loads, and every key and value of its space is checked against the run
configs it names (the Mamba presets against configs/mamba/). A study with `table: true` prints seed 000's
comparison table, one column per scenario."""

import pytest
import yaml

from hpeft import search
from hpeft.search.results import comparison, print_comparison
from hpeft.search.run_config import check_against_run_configs
from hpeft.search.space import grid_points
from hpeft.search.study import open_study, run_worker
from tests.conftest import REPO
from tests.search.conftest import search_config, tiny_run_config

PRESETS = sorted((REPO / "sweeps" / "optuna").glob("*.yaml"))
TABLE_CONFIGS = ["prompt", "lora", "adapter", "hybrid_s", "hybrid_m", "hybrid_l", "control_lora12", "control_prompt434",
                 "control_prompt570"]


@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_preset_is_valid_against_its_run_configs(path, monkeypatch):
    monkeypatch.chdir(REPO)
    config = search.load(path)
    resolved = check_against_run_configs(config)
    assert len(resolved) == len(config.base_configs())


@pytest.mark.parametrize("name", ["seed000_table.yaml", "seed000_table_cpu.yaml"])
def test_seed000_table_covers_every_variant_and_control_on_both_scenarios(name):
    config = search.load(REPO / "sweeps" / "optuna" / name)
    assert config.sampler_type == "grid" and config.table
    points = grid_points(config.space)
    assert len(points) == config.total_trials == 9 * 2 * 3
    assert {p["config"] for p in points} == {f"configs/channel/{c}_inf.yaml" for c in TABLE_CONFIGS}
    assert {p["data.init_args.scenario"] for p in points} == {"InF", "RMa"}
    assert {p["seed_everything"] for p in points} == {0, 1, 2}


def test_cpu_table_only_shrinks_the_cluster_table():
    full, cpu = (yaml.safe_load((REPO / "sweeps" / "optuna" / n).read_text()) for n in ("seed000_table.yaml", "seed000_table_cpu.yaml"))
    assert full["space"] == cpu["space"] and full["objectives"] == cpu["objectives"]
    assert cpu["fixed"]["model.init_args.base_checkpoint"] == "runs/bases/quickstart.safetensors"


def test_table_study_prints_one_column_per_scenario(tmp_path, cache_dir, monkeypatch, capsys, one_thread):
    monkeypatch.chdir(tmp_path)
    lora = tiny_run_config(tmp_path / "lora.yaml", cache_dir)
    prompt = tmp_path / "prompt.yaml"
    config = yaml.safe_load(lora.read_text())
    config["model"] = {"class_path": "hpeft.PromptOnly", "init_args": {"prompt_length": 4, "backbone": config["model"]["init_args"]["backbone"]}}
    prompt.write_text(yaml.safe_dump(config))
    cfg = search_config(tmp_path / "table.yaml", lora, study="table", base_config=None, sampler={"type": "grid", "seed": 0},
                        n_trials=None, table=True,
                        space={"config": [str(lora), str(prompt)], "data.init_args.scenario": ["TDL-A", "TDL-C"],
                               "seed_everything": [0, 1]})
    loaded = search.load(cfg)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    assert run_worker(loaded, url) == 8
    study = open_study(loaded, url)
    scenarios, rows = comparison(study)
    assert scenarios == ["TDL-A", "TDL-C"]
    assert sorted(r["variant"] for r in rows) == ["LoRAOnly", "PromptOnly"]
    assert all(cell[2] == 2 for r in rows for cell in r["cells"].values())  # two seeds in every cell
    print_comparison(study)
    out = capsys.readouterr().out
    assert "TDL-A" in out and "TDL-C" in out and "+-" in out
