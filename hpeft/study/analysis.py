"""Run records -> the study's numbers: per-run figures, per-(arm, level) mean, sd and 95% CI of each figure,
the synergy grid, and the hypotheses' verdicts. The result is study.json's content."""

from __future__ import annotations

import json
import math

from hpeft.report.rows import goodness, method_label, to_row
from hpeft.search.objectives import figure as record_figure
from hpeft.study.hypotheses import FIGURES, Results, evaluate, synergy
from hpeft.study.stats import describe
from hpeft.study.spec import Study

FP16_BYTES = 2  # an adapter shipped in fp16 or bf16


def run_figures(summary: dict, metric: str) -> dict:
    """The figures a study compares, from one run record (DESIGN.md's summary.json contract)."""
    value = record_figure(summary, metric)
    methods = summary.get("methods") or []
    trainable = int(summary["params"]["trainable"])
    # Deployed: what a deployed model keeps (pruned weights' non-zeros, a reparameterised prefix flattened);
    # full fine-tuning keeps all it trained.
    deployed = sum(int(m.get("deployed", m.get("params", 0))) for m in methods) if methods else trainable
    flops = int(summary.get("flops", {}).get("forward_per_sample", 0))
    row = to_row({**summary, "metric": {"name": metric, "higher_is_better": (summary.get("metric") or {}).get("higher_is_better", False)}})
    quality = goodness(row) if row else None
    speed = summary.get("speed", {})
    memory = summary.get("memory", {})
    stages = summary.get("stages") or []
    return {
        "metric": value,
        "quality": quality,
        "params_trainable": trainable,
        "params_deployed": deployed,
        "adapter_bytes_fp16": deployed * FP16_BYTES,
        "flops_forward": flops,
        "flops_train_step": int(summary.get("flops", {}).get("train_step_per_sample", 0)),
        "peak_memory_mb": memory.get("peak_bytes", 0) / 2**20,
        "train_memory_mb": _train_memory_mb(memory),
        "train_samples_per_s": speed.get("train_samples_per_s"),
        "latency_ms_batch1": speed.get("latency_ms_batch1"),
        "fit_seconds": speed.get("fit_seconds"),
        # Staged runs: the largest stage's weights (4-bit ones by codes and scales) + optimizer state, exact bytes.
        "stage_state_mb": max(((st.get("weight_bytes") or 0) + (st.get("optimizer_state_bytes") or 0) for st in stages),
                              default=0) / 2**20 or None,
        # Seed 002's efficiency: accuracy / (FLOPs x params); 0 trainable (a reference run) has none.
        "efficiency": quality / (flops * trainable) if quality is not None and flops and trainable else None,
    }


def _stage_rows(study: Study, records: list[dict]) -> list[dict]:
    """Per staged arm and stage: mean and CI over seeds of its seconds, trained steps and exact state bytes."""
    found: dict[tuple, list[dict]] = {}
    for rec in records:
        for st in rec["summary"].get("stages") or []:
            found.setdefault((rec["arm"], json.dumps(rec["level"], sort_keys=True), st["index"], st["name"]), []).append(st)
    rows = []
    for (arm, level, index, name), stages in sorted(found.items()):
        figures = {k: describe([st.get(k) for st in stages if st.get(k) is not None], study.ci)
                   for k in ("seconds", "trained_steps", "trainable_params", "weight_bytes", "optimizer_state_bytes")}
        rows.append({"arm": arm, "level": json.loads(level), "stage": index, "name": name,
                     "optimizer": stages[0].get("optimizer"), "quantized": stages[0].get("quantized"), **figures})
    return rows


def _train_memory_mb(memory: dict) -> float | None:
    """On a GPU the measured peak (CUDA max allocated); on the CPU the modelled training memory
    (metrics/memory.py), because a CPU run's RSS is its process's, shared with every run before it."""
    if memory.get("device") == "cuda":
        return memory.get("peak_bytes", 0) / 2**20
    return memory["train_model_bytes"] / 2**20 if memory.get("train_model_bytes") else None


def _level_key(study: Study, level: dict) -> tuple:
    return tuple(level.get(k) for k in study.factors)


def analyse(study: Study, records: list[dict]) -> dict:
    runs: dict[tuple, dict[int, dict]] = {}
    methods: dict[tuple, dict] = {}
    run_list = []
    for rec in records:
        key = (rec["arm"], _level_key(study, rec["level"]))
        figs = run_figures(rec["summary"], study.metric)
        runs.setdefault(key, {})[rec["seed"]] = figs
        methods.setdefault(key, {m["name"]: int(m.get("params", 0)) for m in rec["summary"].get("methods") or []})
        run_list.append({"arm": rec["arm"], "level": rec["level"], "seed": rec["seed"], "run_dir": rec["run_dir"],
                         "run_id": rec["summary"].get("run_id"), "method": method_label(rec["summary"]), **figs})
    res = Results(runs=runs, higher_is_better=study.higher_is_better, ci=study.ci, methods=methods)
    arms = []
    for (arm, level), by_seed in sorted(runs.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        spec = study.arms[arm]
        arms.append({
            "arm": arm, "label": spec.label, "config": spec.config, "set": spec.set, "command": spec.command,
            "level": dict(zip(study.factors, level)), "seeds": sorted(by_seed),
            "methods": methods.get((arm, level), {}),
            **{f: describe([s[f] for s in by_seed.values() if s.get(f) is not None], study.ci) for f in FIGURES},
        })
    grid = []
    if study.grid:
        for arm, spec in study.arms.items():
            if spec.grid_cell is None:
                continue
            for level in res.levels():
                if (arm, level) not in runs:
                    continue
                s = synergy(res, arm, level) if len(methods.get((arm, level), {})) > 1 else None
                result = (s or {}).get("result") or {}
                grid.append({"arm": arm, "cell": spec.grid_cell, "level": dict(zip(study.factors, level)),
                             "metric": describe(list(res.values(arm, level, "metric").values()), study.ci),
                             "efficiency": describe(list(res.values(arm, level, "efficiency").values()), study.ci),
                             "gain": result.get("estimate"), "gain_ci95": result.get("ci95"), "gain_n": result.get("n", 0),
                             "parts": (s or {}).get("parts")})
    stage_rows = _stage_rows(study, records)
    hypotheses = evaluate(study.hypotheses, res)
    expected = len(study.arms) * study.seeds * max(1, math.prod(len(v) for v in study.factors.values()))
    return {
        "study": study.name, "title": study.title, "question": study.question, "scale": study.scale, "note": study.note,
        "metric": study.metric, "higher_is_better": study.higher_is_better, "seeds": study.seeds, "ci": study.ci,
        "factors": study.factors, "runs_expected": expected, "runs_found": len(run_list),
        "arms": arms, "stages": stage_rows, "grid": grid, "grid_axes": (study.grid or {}).get("axes"),
        "grid_kind": (study.grid or {}).get("kind"), "hypotheses": hypotheses, "runs": run_list,
        "verdicts": {v: sum(h["verdict"] == v for h in hypotheses) for v in ("supported", "refuted", "inconclusive")},
    }
