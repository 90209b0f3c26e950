"""Every shipped study end to end at --scale tiny (real pretraining and training, a few steps each): the
numbers in study.json are checked against the run records on disk, recomputed here from summary.json."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from hpeft.cli import main
from hpeft.study.stats import VERDICTS
from tests.conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """Each study run once for the module, from the repository root (the studies name configs/ by path)."""
    done = {}

    def run(name: str) -> Path:
        if name not in done:
            out = tmp_path_factory.mktemp(name)
            cwd = Path.cwd()
            import os

            os.chdir(REPO)
            try:
                main(["study", name, "--scale", "tiny", "--out", str(out)])
            finally:
                os.chdir(cwd)
            done[name] = out
        return done[name]

    return run


def summary(run_dir: str) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())


def check_against_records(result: dict) -> None:
    assert result["runs_found"] == result["runs_expected"] > 0
    by_arm: dict = {}
    for run in result["runs"]:
        s = summary(run["run_dir"])
        assert s["seed"] == run["seed"]  # the seed the study paired on is the run's own
        assert run["metric"] == pytest.approx(s["metrics"][result["metric"]])
        assert run["params_trainable"] == s["params"]["trainable"]
        by_arm.setdefault((run["arm"], json.dumps(run["level"], sort_keys=True)), []).append(s["metrics"][result["metric"]])
    for arm in result["arms"]:
        values = by_arm[(arm["arm"], json.dumps(arm["level"], sort_keys=True))]
        assert arm["metric"]["n"] == len(values) == result["seeds"]
        assert arm["metric"]["mean"] == pytest.approx(float(np.mean(values)))
        assert arm["metric"]["sd"] == pytest.approx(float(np.std(values, ddof=1)))
    seeds = {a["arm"]: tuple(a["seeds"]) for a in result["arms"]}
    assert len(set(seeds.values())) == 1  # every arm ran on the same seeds: the comparisons are paired
    for h in result["hypotheses"]:
        assert h["verdict"] in VERDICTS and {"id", "statement", "estimate", "ci95", "n"} <= set(h)
        if h["ci95"] is not None and h["estimate"] is not None and h["kind"] not in ("frontier", "dominates"):
            assert h["ci95"][0] - 1e-9 <= h["estimate"] <= h["ci95"][1] + 1e-9
        if h["n"] < 2 and not h.get("note"):  # a note: decided by construction (no cheaper arm, none eligible)
            assert h["verdict"] == "inconclusive"


def check_outputs(out: Path, result: dict) -> None:
    md = (out / "results.md").read_text()
    page = (out / "report.html").read_text()
    assert (out / "main.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for h in result["hypotheses"]:
        assert h["id"] in md and h["id"] in page
    for a in result["arms"]:
        assert f"| {a['arm']} |" in md
    assert "Hypotheses" in page and "HPEFT_FIGURES" in page


def test_seed000_tiny(studies):
    out = studies("seed000")
    result = json.loads((out / "study.json").read_text())
    check_against_records(result)
    check_outputs(out, result)
    arms = {a["arm"] for a in result["arms"]}
    assert {"prompt100", "lora20", "adapter", "hybrid_s", "hybrid_m", "hybrid_l", "control_lora12", "control_prompt570", "base"} <= arms
    assert {"synergy_prompt4_rank0", "synergy_prompt0_rank2", "synergy_prompt4_rank2"} <= arms
    params = {a["arm"]: a["params_trainable"]["mean"] for a in result["arms"]}
    # The controls are matched by exact count: no other length or rank comes closer to the hybrid's.
    d_model = 32
    assert abs(params["control_prompt570"] - params["hybrid_s"]) <= d_model / 2
    # H1 recomputed from the run records: hybrid - sum of its parts weighted by its own parameter shares.
    h1 = next(h for h in result["hypotheses"] if h["id"] == "H1:hybrid_m:InF")
    runs = {(r["arm"], r["seed"]): summary(r["run_dir"]) for r in result["runs"]}
    hybrid_methods = {m["name"]: m["params"] for m in runs[("hybrid_m", 0)]["methods"]}
    shares = [p["params_in_hybrid"] / sum(hybrid_methods.values()) for p in h1["parts"]]
    gains = [runs[("hybrid_m", s)]["metrics"]["test/nmse_db"]
             - sum(w * runs[(p["arm"], s)]["metrics"]["test/nmse_db"] for w, p in zip(shares, h1["parts"]))
             for s in range(result["seeds"])]
    assert h1["estimate"] == pytest.approx(float(np.mean(gains)))
    base = next(a for a in result["arms"] if a["arm"] == "base")
    assert base["params_trainable"]["mean"] == 0 and base["latency_ms_batch1"]["mean"] > 0
    fp16 = next(h for h in result["hypotheses"] if h["id"] == "fp16-budget:hybrid_m:InF")
    assert fp16["estimate"] == 2 * params["hybrid_m"]  # 2 bytes a parameter


def test_seed003_tiny(studies):
    out = studies("seed003")
    result = json.loads((out / "study.json").read_text())
    check_against_records(result)
    check_outputs(out, result)
    runs = {(r["arm"], r["seed"]): r for r in result["runs"]}
    full, hybrid = runs[("full", 0)], runs[("lora_adapter", 0)]
    assert full["params_trainable"] == summary(full["run_dir"])["params"]["total"] > hybrid["params_trainable"]  # every weight trains
    # Modelled training memory: Adam's two moments per trainable element make full fine-tuning's state larger.
    parts = {a: summary(runs[(a, 0)]["run_dir"])["memory"]["train_model_parts"] for a in ("full", "lora_adapter")}
    assert parts["full"]["optimizer_state_bytes"] == 2 * 4 * full["params_trainable"]
    assert parts["lora_adapter"]["optimizer_state_bytes"] == 2 * 4 * hybrid["params_trainable"]
    mem = next(h for h in result["hypotheses"] if h["id"] == "memory:lora_adapter/full:InF")
    assert mem["estimate"] == pytest.approx(hybrid["train_memory_mb"] / full["train_memory_mb"], rel=1e-6)
    assert {h["hypothesis"] for h in result["hypotheses"]} == {"quality", "train-throughput", "inference-speed", "memory",
                                                               "train-compute", "hybrid-vs-parts"}


def test_seed004_tiny(studies):
    out = studies("seed004")
    result = json.loads((out / "study.json").read_text())
    check_against_records(result)
    check_outputs(out, result)
    ensemble = [r for r in result["runs"] if r["arm"] == "ensemble"]
    assert len(ensemble) == result["seeds"]
    members = summary(ensemble[0]["run_dir"])
    assert members["metrics"]["test/perplexity"] > 1
    # The ensemble of seed s combines the QLoRA and GaLore runs of seed s.
    cfg = (Path(ensemble[0]["run_dir"]) / "config.yaml").read_text()
    seed0 = {r["arm"]: r["run_dir"] for r in result["runs"] if r["seed"] == ensemble[0]["seed"]}
    assert Path(seed0["qlora"]).name in cfg and Path(seed0["galore"]).name in cfg


def test_seed002_tiny_joins_its_parts(studies):
    out = studies("seed002")
    joined = json.loads((out / "study.json").read_text())
    assert joined["parts"] == ["seed002_channel", "seed002_lm"]
    for part in joined["parts"]:
        result = json.loads((out / part / "study.json").read_text())
        check_against_records(result)
        check_outputs(out / part, result)
        assert {f"{part}:{h['id']}" for h in result["hypotheses"]} <= {h["id"] for h in joined["hypotheses"]}
        hp = [a for a in result["arms"] if a["arm"].startswith("hp_")]
        assert len(hp) == 1 and all(a["methods"] for a in hp)  # the tiny grid: one cell
    assert joined["runs_found"] == sum(json.loads((out / p / "study.json").read_text())["runs_found"] for p in joined["parts"])
    check_outputs(out, joined)
    eff = next(h for h in joined["hypotheses"] if h["id"].startswith("seed002_channel:all-vs-best-single-efficiency"))
    assert eff["b"] in ("p1", "p2", "p3") and not math.isnan(eff["estimate"])
