"""The comparison table: one row per run (method, trainable params, task metric, cost), with the
test set's classical baselines as rows of their own where the runs recorded them."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

BASELINES = {"ls": "LS, linear interp. (Sionna)", "lmmse": "LMMSE (Sionna)"}


def _method_label(summary: dict) -> str:
    methods = summary.get("methods") or []
    if not methods:
        return "base, full training" if summary.get("trained_steps", 0) > 0 else "base, no transfer"
    parts = []
    for m in methods:
        configs = m.get("configs") or [m.get("config") or {}]  # "config" in records written before 0.2
        ranks = sorted({c["rank"] for c in configs if "rank" in c})
        parts.append(f"{m['name']} r={'/'.join(map(str, ranks))}" if ranks else m["name"])
    return " + ".join(parts)


def comparison_rows(summaries: list[dict], metric: str = "test/nmse_db") -> list[dict]:
    rows = []
    baselines: dict[str, float] = {}
    for s in summaries:
        m = s.get("metrics", {})
        for key in BASELINES:
            if f"test/{key}_nmse_db" in m:
                baselines.setdefault(key, m[f"test/{key}_nmse_db"])
        if metric not in m:
            continue
        rows.append({
            "method": _method_label(s),
            "variant": s.get("variant"),
            "scenario": ",".join(s.get("data", {}).get("scenario", [])) if isinstance(s.get("data", {}).get("scenario"), list)
            else s.get("data", {}).get("scenario"),
            "trainable": s["params"].get("trainable"),
            "metric": m[metric],
            "flops_forward": s.get("flops", {}).get("forward_per_sample"),
            "peak_mb": s.get("memory", {}).get("peak_bytes", 0) / 2**20 or None,
            "fit_s": s.get("speed", {}).get("fit_seconds") or None,
            "run": s.get("run_id"),
        })
    for key, value in baselines.items():
        rows.append({"method": BASELINES[key], "variant": "baseline", "scenario": "", "trainable": 0, "metric": value,
                     "flops_forward": None, "peak_mb": None, "fit_s": None, "run": ""})
    return sorted(rows, key=lambda r: r["metric"])


def print_comparison(rows: list[dict], title: str = "Channel estimation on the test set", console: Console | None = None) -> None:
    table = Table(title=title)
    for col, justify in (("method", "left"), ("trainable params", "right"), ("NMSE dB", "right"),
                         ("FLOPs fwd/sample", "right"), ("peak mem MB", "right"), ("fit s", "right"), ("run", "left")):
        table.add_column(col, justify=justify)
    fmt = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
    for r in rows:
        table.add_row(r["method"], f"{r['trainable']:,}", f"{r['metric']:.2f}", fmt(r["flops_forward"], ","),
                      fmt(r["peak_mb"], ".0f"), fmt(r["fit_s"], ".1f"), r["run"])
    (console or Console(width=max(Console().width, 130))).print(table)
