"""Run summaries -> one flat row per run, the table every view of the report is drawn from."""

from __future__ import annotations

import math

from hpeft.report.pareto import linear_expectation, pareto_mask, per_kparam, synergy_gain

# Runs written before summary.json named its metric.
DEFAULT_METRICS = {"channel": ("test/nmse_db", False), "lm": ("test/perplexity", False)}
LABELS = {"test/nmse_db": "NMSE (dB)", "test/perplexity": "perplexity"}


def method_label(summary: dict) -> str:
    methods = summary.get("methods") or []
    if not methods:
        return "base, full training" if summary.get("trained_steps", 0) > 0 else "base, no transfer"
    parts = []
    for m in methods:
        configs = m.get("configs") or [m.get("config") or {}]  # "config": records written before 0.2
        ranks = sorted({c["rank"] for c in configs if "rank" in c})
        lengths = sorted({c["length"] for c in configs if "length" in c})
        detail = f" r={'/'.join(map(str, ranks))}" if ranks else f" {'/'.join(map(str, lengths))}" if lengths else ""
        parts.append(m["name"] + detail)
    return " + ".join(parts)


def _scenario(summary: dict) -> str:
    scenario = summary.get("data", {}).get("scenario", "")
    return ",".join(scenario) if isinstance(scenario, list) else str(scenario or "")


def metric_of(summary: dict) -> tuple[str, bool]:
    declared = summary.get("metric")
    if isinstance(declared, dict) and "name" in declared:
        return declared["name"], bool(declared.get("higher_is_better", False))
    if summary.get("task") in DEFAULT_METRICS:
        return DEFAULT_METRICS[summary["task"]]
    test = sorted(k for k in summary.get("metrics", {}) if k.startswith("test/"))
    return (test[0] if test else ""), False


def to_row(summary: dict) -> dict | None:
    """The flat row of one run, or None when it has no value for its task's metric."""
    name, higher = metric_of(summary)
    try:
        value = float(summary.get("metrics", {}).get(name))
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value):
        return None
    methods = {m["name"]: m.get("params", 0) for m in summary.get("methods") or []}
    return {
        "run": summary.get("run_id", ""),
        "dir": summary.get("_dir", ""),
        "source": summary.get("_source", "runs"),
        "experiment": summary.get("experiment", ""),
        "task": summary.get("task", ""),
        "variant": summary.get("variant", ""),
        "method": method_label(summary),
        "methods": methods,
        "scenario": _scenario(summary),
        "metric_name": name,
        "metric_label": LABELS.get(name, name),
        "higher_is_better": higher,
        "metric": float(value),
        "trainable": int(summary.get("params", {}).get("trainable", 0)),
        "total": int(summary.get("params", {}).get("total", 0)),
        "flops": int(summary.get("flops", {}).get("forward_per_sample", 0)),
        "peak_mb": summary.get("memory", {}).get("peak_bytes", 0) / 2**20,
        "fit_s": summary.get("speed", {}).get("fit_seconds", 0.0),
        "hparams": summary.get("hparams", {}),
        "layers": summary.get("layers", []),
    }


def to_rows(summaries: list[dict]) -> tuple[list[dict], list[tuple[str, str]]]:
    rows, skipped = [], []
    for s in summaries:
        try:
            row = to_row(s)
        except (AttributeError, TypeError, ValueError, KeyError) as err:  # a field of the wrong type (e.g. "flops": null)
            skipped.append((s.get("_dir", s.get("run_id", "?")), f"unreadable field: {type(err).__name__}: {err}"))
            continue
        if row is None:
            skipped.append((s.get("_dir", s.get("run_id", "?")), f"no value for its metric {metric_of(s)[0]!r}"))
        else:
            rows.append(row)
    return rows, skipped


def goodness(row: dict) -> float:
    """The metric turned into higher-is-better: as is, negated for dB, inverted for perplexity-like metrics."""
    if row["higher_is_better"]:
        return row["metric"]
    if row["metric_name"].endswith("_db") or row["metric"] <= 0:
        return -row["metric"]
    return 1.0 / row["metric"]


def to_minimise(row: dict) -> float:
    return -row["metric"] if row["higher_is_better"] else row["metric"]


def mark_pareto(rows: list[dict]) -> None:
    """Flags `pareto_params` (metric vs trainable params) and `pareto_flops` (metric vs FLOPs) per task,
    metric and scenario: runs of different tasks or metrics are never compared."""
    for group in groups(rows, ("task", "metric_name", "scenario")).values():
        for axis in ("trainable", "flops"):
            mask = pareto_mask([(to_minimise(r), r[axis]) for r in group])
            for r, on in zip(group, mask):
                r[f"pareto_{'params' if axis == 'trainable' else 'flops'}"] = on


def groups(rows: list[dict], keys: tuple[str, ...]) -> dict[tuple, list[dict]]:
    found: dict[tuple, list[dict]] = {}
    for r in rows:
        found.setdefault(tuple(r[k] for k in keys), []).append(r)
    return found


def synergy_rows(rows: list[dict]) -> list[dict]:
    """For each run with several methods: its parts measured alone (single-method runs of the same task and
    scenario, the one closest in that method's parameter count), the linear expectation weighted by the
    hybrid's own parameter shares, the synergy gain and the gain per 1K parameters."""
    out = []
    for (task, metric, scenario), group in groups(rows, ("task", "metric_name", "scenario")).items():
        singles: dict[str, list[dict]] = {}
        for r in group:
            if len(r["methods"]) == 1:
                singles.setdefault(next(iter(r["methods"])), []).append(r)
        for hybrid in (r for r in group if len(r["methods"]) > 1):
            parts = []
            for name, params in hybrid["methods"].items():
                alone = singles.get(name)
                if not alone or params <= 0:
                    break
                best = min(alone, key=lambda r: abs(r["methods"][name] - params))
                parts.append((name, params, best))
            else:
                pairs = [(params, best["metric"]) for _, params, best in parts]
                gain = synergy_gain(hybrid["metric"], pairs)
                out.append({
                    "run": hybrid["run"], "method": hybrid["method"], "task": task, "scenario": scenario,
                    "metric_label": hybrid["metric_label"], "metric": hybrid["metric"],
                    "parts": [{"method": name, "params": params, "metric_alone": best["metric"], "run": best["run"]}
                              for name, params, best in parts],
                    "linear_expectation": linear_expectation(pairs),
                    "gain": gain,
                    "gain_per_kparam": per_kparam(gain, hybrid["trainable"]) if hybrid["trainable"] else None,
                    "hparams": hybrid["hparams"],
                })
    return out
