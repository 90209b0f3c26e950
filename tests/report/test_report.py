"""The report's analyses on inputs whose answers are known, its sources (run dirs, a real Optuna SQLite
study, W&B offline) and its handling of bad input."""

import json
from pathlib import Path

import optuna
import pytest

from hpeft.report import collect, linear_expectation, mark_pareto, pareto_mask, synergy_gain, synergy_rows, to_rows
from hpeft.report.page import build_page
from tests.conftest import run_hpeft
from tests.report.fixtures import seed000_runs, summary, write_runs


def test_pareto_mask_on_points_with_known_frontier():
    # (error, params): a staircase of 3 frontier points, one dominated point, a duplicate of a frontier point
    points = [(3.0, 1.0), (2.0, 2.0), (1.0, 5.0), (2.5, 3.0), (2.0, 2.0), (1.0, 6.0)]
    assert pareto_mask(points) == [True, True, True, False, True, False]
    assert pareto_mask([(1.0, 1.0)]) == [True]
    # In three objectives a point can be on the frontier by one coordinate alone.
    assert pareto_mask([(1, 9, 9), (9, 1, 9), (9, 9, 1), (5, 5, 5), (9, 9, 9)]) == [True, True, True, True, False]


def test_synergy_on_seed_000_hybrid_m_example():
    """Seed 000, 6.3: prompt 12.8K params at -25.9 dB, LoRA 49.2K at -26.4 dB, hybrid -26.35 dB:
    linear expectation -26.30 dB, synergy gain -0.05 dB."""
    parts = [(12_800, -25.9), (49_200, -26.4)]
    assert round(linear_expectation(parts), 2) == -26.30
    assert round(synergy_gain(-26.35, parts), 2) == -0.05
    with pytest.raises(ValueError, match="parameters"):
        linear_expectation([(0, -25.0)])


def test_rows_frontiers_and_synergy_from_run_records(tmp_path):
    summaries, skipped = collect(runs=[write_runs(tmp_path / "runs", seed000_runs())])
    rows, _ = to_rows(summaries)
    mark_pareto(rows)
    on_params = {r["run"] for r in rows if r["pareto_params"]}
    on_flops = {r["run"] for r in rows if r["pareto_flops"]}
    assert on_params == {"prompt", "lora"}  # hybrid_m (62K, -26.35) is dominated by lora (49.2K, -26.4)
    assert on_flops == {"prompt", "lora"}
    (m,) = [s for s in synergy_rows(rows) if s["run"] == "hybrid_m"]
    assert [p["run"] for p in m["parts"]] == ["prompt", "lora"]
    assert m["linear_expectation"] == pytest.approx(12.8 / 62 * -25.9 + 49.2 / 62 * -26.4)
    assert m["gain_per_kparam"] == pytest.approx(m["gain"] / 62.0)


def test_runs_of_different_tasks_never_share_an_axis(tmp_path):
    lm = [summary("lm1", "LoRAOnly", {"lora": 100}, 35.0, task="lm", metric_name="test/perplexity", scenario="wikitext"),
          summary("lm2", "IA3Only", {"ia3": 10}, 40.0, task="lm", metric_name="test/perplexity", scenario="wikitext")]
    rows, _ = to_rows(collect(runs=[write_runs(tmp_path, seed000_runs() + lm)])[0])
    mark_pareto(rows)
    # The LM runs have more perplexity than any NMSE: compared with the channel runs, they would be dominated.
    assert {r["run"] for r in rows if r["task"] == "lm" and r["pareto_params"]} == {"lm1", "lm2"}
    page = build_page(rows, [])
    assert "Runs of 2 tasks/metrics: each gets its own axes" in page
    assert "lm: perplexity against trainable parameters" in page and "channel: NMSE (dB) against trainable parameters" in page


def test_broken_and_metricless_runs_are_skipped_with_their_reason(tmp_path):
    runs = write_runs(tmp_path / "runs", seed000_runs()[:2])
    (runs / "t" / "broken").mkdir()
    (runs / "t" / "broken" / "summary.json").write_text("{truncated")
    (runs / "t" / "partial").mkdir()
    (runs / "t" / "partial" / "summary.json").write_text(json.dumps({"run_id": "partial", "variant": "LoRAOnly"}))
    untested = summary("untested", "LoRAOnly", {"lora": 5}, -20.0)
    untested["metrics"] = {"val/nmse_db": -20.0}
    write_runs(runs, [untested])
    result = run_hpeft(["report", "--runs", str(runs), "--out", str(tmp_path / "r.html")], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 runs ->" in result.stdout
    for name, why in (("broken", "Expecting"), ("partial", "missing keys"), ("untested", "no value for its metric 'test/nmse_db'")):
        line = next(l for l in result.stdout.splitlines() if l.startswith("skipped") and name in l)
        assert why in line, line
    page = (tmp_path / "r.html").read_text()
    assert "Skipped (3)" in page


def test_no_runs_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_hpeft(["report", "--runs", str(tmp_path / "empty"), "--out", str(tmp_path / "r.html")], tmp_path)
    assert result.returncode == 2 and "no runs with a test metric found in" in result.stderr
    assert not (tmp_path / "r.html").exists()
    missing = run_hpeft(["report", "--runs", str(tmp_path / "nope")], tmp_path)
    assert missing.returncode == 2 and "no such directory" in missing.stderr


def test_optuna_study_as_a_source(tmp_path):
    """A real SQLite study: trials that name their run dir bring its summary; others bring their values."""
    runs = write_runs(tmp_path / "runs", seed000_runs())
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="minimize")
    for s in seed000_runs()[:3]:
        trial = study.ask()
        trial.set_user_attr("run_dir", str(runs / "t" / s["run_id"]))
        study.tell(trial, s["metrics"]["test/nmse_db"])
    bare = study.ask({"lora_rank": optuna.distributions.IntDistribution(1, 32)})
    study.tell(bare, -24.0)
    failed = study.ask()
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    summaries, skipped = collect(storage=storage, study="s")
    assert sorted(s["run_id"] for s in summaries) == ["hybrid_m", "lora", "prompt", "s-3"]
    assert skipped == [("s trial 4", "state FAIL")]
    rows, _ = to_rows(summaries)
    assert {r["run"]: r["metric"] for r in rows}["s-3"] == -24.0
    with pytest.raises(ValueError, match="no study 'other'.*studies there: \\['s'\\]"):
        collect(storage=storage, study="other")
    with pytest.raises(ValueError, match="needs both --storage URL and --study NAME"):
        collect(storage=storage)


def test_report_logs_the_pareto_table_to_wandb_offline(tmp_path):
    runs = write_runs(tmp_path / "runs", seed000_runs())
    result = run_hpeft(["report", "--runs", str(runs), "--out", str(tmp_path / "r.html"), "--wandb", "me/hpeft-report"],
                       tmp_path, env={"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Pareto table logged to W&B me/hpeft-report (offline)" in result.stdout
    (table,) = list(Path(tmp_path / "wandb").rglob("pareto_*.table.json"))
    logged = json.loads(table.read_text())
    runs_on_front = {row[0] for row in logged["data"] if row[logged["columns"].index("pareto_params")]}
    assert logged["columns"][:4] == ["run", "task", "scenario", "method"] and runs_on_front == {"prompt", "lora"}


def test_odd_records_do_not_break_the_analyses(tmp_path):
    odd = seed000_runs() + [summary("h0", "Hybrid", {"prompt": 0, "lora": 0}, -26.0),
                            summary("zero_loss", "LoRAOnly", {"lora": 10}, 0.0, task="x", metric_name="test/loss")]
    odd[0] = {**odd[0], "metrics": {"test/nmse_db": "nan"}}
    rows, skipped = to_rows(odd)
    assert [s for s in skipped if "prompt" in s[0]] and "prompt" not in {r["run"] for r in rows}
    mark_pareto(rows)
    assert all(s["run"] != "h0" for s in synergy_rows(rows))  # no parts with parameters: no synergy row
    build_page(rows, skipped)
    copy = write_runs(tmp_path / "a", seed000_runs()[:1])
    write_runs(tmp_path / "b", seed000_runs()[:1])
    summaries, skipped = collect(runs=[copy, tmp_path / "b"])
    assert len(summaries) == 1 and "same run_id 'prompt'" in skipped[0][1]


def test_run_fields_cannot_break_the_page_or_the_table(tmp_path):
    hostile = summary("p</script><script>alert(1)</script>", "PromptOnly", {"prompt": 12_800}, -25.9)
    null_flops = {**summary("x", "LoRAOnly", {"lora": 10}, -20.0), "flops": None}
    rows, skipped = to_rows(seed000_runs() + [hostile, null_flops])
    assert [(w, why.split(":")[0]) for w, why in skipped] == [("x", "unreadable field")]
    page = build_page(rows, skipped)
    script = page[page.index("const HPEFT_FIGURES"):]
    assert "</script><script>alert(1)" not in script.split("</script>", 1)[0]
