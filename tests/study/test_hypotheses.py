"""Each hypothesis kind on constructed per-seed figures whose answer is known by construction."""

import numpy as np
import pytest

from hpeft.study.hypotheses import Results, evaluate

LEVEL = ("InF",)
SEEDS = range(5)
RNG = np.random.default_rng(0)
SPREAD = RNG.normal(0.0, 1.0, size=5)  # seed effects every arm shares


def arm(metric: float, params: int, methods: dict | None = None, noise: float = 0.02, **figures):
    """Per-seed figures: metric + the shared seed effect + a little noise of its own."""
    own = RNG.normal(0.0, noise, size=5)
    return ({s: {"metric": metric + SPREAD[s] + own[s], "params_trainable": params, **{k: v for k, v in figures.items()}}
             for s in SEEDS}, methods or {})


def results(**arms) -> Results:
    runs = {(name, LEVEL): a[0] for name, a in arms.items()}
    methods = {(name, LEVEL): a[1] for name, a in arms.items()}
    return Results(runs=runs, higher_is_better=False, methods=methods)


def one(h: dict, res: Results) -> list[dict]:
    return evaluate([{"statement": "s", **h}], res)


def test_synergy_against_the_parameter_weighted_parts():
    parts = dict(prompt=arm(-20.0, 1000, {"prompt": 1000}), lora=arm(-22.0, 3000, {"lora": 3000}),
                 lora_small=arm(-21.0, 500, {"lora": 500}))
    # Linear expectation for 1000 prompt + 3000 LoRA parameters: 0.25 x -20 + 0.75 x -22 = -21.5.
    res = results(**parts, good=arm(-22.0, 4000, {"prompt": 1000, "lora": 3000}),
                  plain=arm(-21.5, 4000, {"prompt": 1000, "lora": 3000}))
    good, plain = one({"id": "H1", "kind": "synergy", "hybrids": ["good", "plain"]}, res)
    assert good["verdict"] == "supported" and good["estimate"] == pytest.approx(-0.5, abs=0.05)
    assert [p["arm"] for p in good["parts"]] == ["prompt", "lora"]  # lora (3000) is closer than lora_small (500)
    assert good["linear_expectation"] == pytest.approx(-21.5 + SPREAD.mean(), abs=0.05)
    assert plain["verdict"] == "inconclusive" and abs(plain["estimate"]) < 0.05
    assert good["id"] == "H1:good:InF" and good["n"] == 5


def test_frontier_and_dominance():
    res = results(cheap=arm(-20.0, 1000), mid=arm(-21.0, 2000), bad=arm(-19.0, 3000), big=arm(-21.5, 9000))
    verdicts = {e["scope"]: e["verdict"] for e in one({"id": "F", "kind": "frontier", "arms": ["cheap", "mid", "bad", "big"]}, res)}
    assert verdicts == {"cheap": "supported", "mid": "supported", "bad": "refuted", "big": "supported"}
    assert one({"id": "D", "kind": "dominates", "any_of": ["mid", "bad"], "over": "big"}, res)[0]["verdict"] == "refuted"
    win = one({"id": "D", "kind": "dominates", "any_of": ["bad", "mid"], "over": "bad"}, res)[0]
    assert win["verdict"] == "supported" and win["best"] == "mid"
    nobody = one({"id": "D", "kind": "dominates", "any_of": ["big"], "over": "cheap"}, res)[0]
    assert nobody["verdict"] == "refuted" and "at most" in nobody["note"]


def test_better_picks_the_best_of_a_list_and_follows_the_figure_direction():
    res = results(a=arm(-21.0, 100, efficiency=2.0), b=arm(-20.0, 100, efficiency=3.0), c=arm(-20.5, 100, efficiency=1.0))
    e = one({"id": "B", "kind": "better", "a": "a", "b": ["b", "c"]}, res)[0]
    assert e["b"] == "c" and e["verdict"] == "supported" and e["estimate"] == pytest.approx(-0.5, abs=0.05)
    eff = one({"id": "E", "kind": "better", "a": "a", "b": ["b", "c"], "figure": "efficiency"}, res)[0]
    assert eff["b"] == "b" and eff["verdict"] == "refuted"  # efficiency: higher is better, and b's is higher


def test_ratio_threshold_and_additive():
    res = results(full=arm(-20.0, 100, fit_seconds=10.0), peft=arm(-19.8, 10, fit_seconds=3.0),
                  base=arm(-18.0, 100), p1=arm(-18.5, 10), p2=arm(-18.5, 10), both=arm(-20.0, 20))
    for e in res.runs[("peft", LEVEL)].values():
        e["fit_seconds"] += RNG.normal(0, 0.1)
    r = one({"id": "R", "kind": "ratio", "a": ["peft"], "b": "full", "figure": "fit_seconds", "op": "<=", "value": 0.35}, res)[0]
    assert r["estimate"] == pytest.approx(0.3, abs=0.02) and r["verdict"] == "supported" and r["claim"] == "estimate <= 0.35"
    t = one({"id": "T", "kind": "threshold", "arms": ["peft"], "figure": "params_trainable", "op": "<=", "value": 5}, res)[0]
    assert t["verdict"] == "refuted" and t["ci95"] == [10.0, 10.0]
    # both gains 2.0 over base; the parts 0.5 each: 1.0 more than additive (lower is better: -1.0)
    add = one({"id": "A", "kind": "additive", "combined": "both", "parts": ["p1", "p2"], "reference": "base"}, res)[0]
    assert add["estimate"] == pytest.approx(-1.0, abs=0.1) and add["verdict"] == "supported"
