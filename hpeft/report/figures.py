"""The report's plotly figures, built from the rows of hpeft.report.rows. Every scatter trace carries
`meta` = {task, scenario, method} so the page's filters can show and hide it."""

from __future__ import annotations

import math

import plotly.graph_objects as go

from hpeft.utils.names import layer_index
from hpeft.report.rows import goodness, groups

LAYOUT = dict(template="plotly_white", height=460, margin=dict(l=60, r=20, t=50, b=50), legend=dict(font=dict(size=10)))


def _hover(r: dict) -> str:
    return (f"{r['method']}<br>{r['scenario']}<br>{r['metric_label']} {r['metric']:.4g}<br>trainable {r['trainable']:,}"
            f"<br>FLOPs/sample {r['flops']:,}<br>run {r['run']}")


def tradeoff(rows: list[dict], axis: str) -> go.Figure:
    if not rows:
        raise ValueError("tradeoff needs at least one run")
    """Metric against trainable params (axis 'trainable') or FLOPs ('flops') for one task: a trace per
    (scenario, method), frontier points filled and dominated ones open, the frontier drawn per scenario."""
    flag = "pareto_params" if axis == "trainable" else "pareto_flops"
    fig = go.Figure()
    for (scenario, method), group in sorted(groups(rows, ("scenario", "method")).items()):
        fig.add_trace(go.Scatter(
            x=[r[axis] for r in group], y=[r["metric"] for r in group], mode="markers", name=f"{method} ({scenario})",
            marker=dict(size=11, symbol=["circle" if r[flag] else "circle-open" for r in group], line=dict(width=2)),
            text=[_hover(r) for r in group], hoverinfo="text",
            meta={"task": rows[0]["task"], "scenario": scenario, "method": method}))
    for (scenario,), group in sorted(groups(rows, ("scenario",)).items()):
        front = sorted((r for r in group if r[flag]), key=lambda r: r[axis])
        fig.add_trace(go.Scatter(
            x=[r[axis] for r in front], y=[r["metric"] for r in front], mode="lines", name=f"Pareto frontier ({scenario})",
            line=dict(dash="dot", width=1.5), hoverinfo="skip",
            meta={"task": rows[0]["task"], "scenario": scenario, "method": "*frontier*"}))
    positive = all(r[axis] > 0 for r in rows)
    what = "trainable parameters" if axis == "trainable" else "forward FLOPs per sample"
    fig.update_layout(title=f"{rows[0]['task']}: {rows[0]['metric_label']} against {what}",
                      xaxis=dict(title=what + (" (log)" if positive else ""), type="log" if positive else "linear"),
                      yaxis=dict(title=rows[0]["metric_label"]), **LAYOUT)
    return fig


def efficiency_surface(rows: list[dict]) -> go.Figure:
    """Accuracy against log params and log FLOPs in 3-D, coloured by accuracy / (FLOPs x params)."""
    if not rows:
        raise ValueError("efficiency_surface needs at least one run")
    usable = [r for r in rows if r["trainable"] > 0 and r["flops"] > 0]
    x = [math.log10(r["trainable"]) for r in usable]
    y = [math.log10(r["flops"]) for r in usable]
    z = [goodness(r) for r in usable]
    eff = [goodness(r) / (r["flops"] * r["trainable"]) for r in usable]
    fig = go.Figure()
    if len(usable) >= 3 and len(set(zip(x, y))) >= 3:
        fig.add_trace(go.Mesh3d(x=x, y=y, z=z, opacity=0.35, delaunayaxis="z", name="surface", hoverinfo="skip",
                                meta={"task": rows[0]["task"], "scenario": "*", "method": "*surface*"}))
    fig.add_trace(go.Scatter3d(
        x=x, y=y, z=z, mode="markers", text=[_hover(r) + f"<br>efficiency {e:.3g}" for r, e in zip(usable, eff)],
        hoverinfo="text", marker=dict(size=5, color=eff, colorscale="Viridis", colorbar=dict(title="acc/(FLOPs·params)")),
        name="runs", meta={"task": rows[0]["task"], "scenario": "*", "method": "*"}))
    sign = "" if rows[0]["higher_is_better"] else ("−" if rows[0]["metric_name"].endswith("_db") else "1/")
    fig.update_layout(title=f"{rows[0]['task']}: efficiency surface", scene=dict(
        xaxis_title="log10 trainable params", yaxis_title="log10 FLOPs/sample", zaxis_title=f"{sign}{rows[0]['metric_label']}"),
        **{**LAYOUT, "height": 560})
    return fig


def synergy_heatmap(synergy: list[dict]) -> go.Figure | None:
    """Synergy gain over prompt length x LoRA rank (seed 000's heatmap) for the Prompt+LoRA hybrids."""
    cells = {}
    for s in synergy:
        hp = s["hparams"]
        if "prompt_length" in hp and "lora_rank" in hp:
            cells.setdefault((hp["prompt_length"], hp["lora_rank"]), []).append(s["gain"])
    if not cells:
        return None
    lengths = sorted({k[0] for k in cells})
    ranks = sorted({k[1] for k in cells})
    z = [[(sum(cells[(p, r)]) / len(cells[(p, r)])) if (p, r) in cells else None for r in ranks] for p in lengths]
    fig = go.Figure(go.Heatmap(z=z, x=[str(r) for r in ranks], y=[str(p) for p in lengths], colorscale="RdBu",
                               zmid=0, colorbar=dict(title="gain"), hovertemplate="prompt %{y}, rank %{x}: %{z:.3f}<extra></extra>"))
    fig.update_layout(title="Synergy gain (hybrid − linear expectation), prompt length × LoRA rank",
                      xaxis_title="LoRA rank", yaxis_title="prompt length", **LAYOUT)
    return fig


def layer_heatmap(rows: list[dict]) -> go.Figure | None:
    """Trainable parameters per layer (and the methods there) for each run, and layer importance where a
    run recorded it (HybridLoRAAdapter, the Mamba pillars)."""
    runs = [r for r in rows if r["layers"]]
    if not runs:
        return None
    per_run = []
    for r in runs:
        cells: dict[int, dict] = {}
        for entry in r["layers"]:
            i = layer_index(entry["module"])
            if i is None:
                continue
            cell = cells.setdefault(i, {"params": 0, "methods": set()})
            cell["params"] += entry["params"]
            cell["methods"].add(entry["method"])
        per_run.append((r, cells))
    width = max((max(c) + 1 for _, c in per_run if c), default=0)
    if not width:
        return None
    labels = [f"{r['method']} ({r['scenario']}) {r['run'][-6:]}" for r, _ in per_run]
    z = [[cells.get(i, {}).get("params") for i in range(width)] for _, cells in per_run]
    text = [[", ".join(sorted(cells[i]["methods"])) if i in cells else "" for i in range(width)] for _, cells in per_run]
    fig = go.Figure(go.Heatmap(z=z, x=list(range(width)), y=labels, text=text, colorscale="Blues", colorbar=dict(title="params"),
                               hovertemplate="%{y}<br>layer %{x}: %{z:,} params<br>%{text}<extra></extra>", name="params"))
    importance = [r["hparams"].get("layer_importance") for r, _ in per_run]
    if any(importance):
        zi = [[(imp or {}).get(str(i), (imp or {}).get(i)) for i in range(width)] for imp in importance]
        fig.add_trace(go.Heatmap(z=zi, x=list(range(width)), y=labels, colorscale="Oranges", visible=False,
                                 colorbar=dict(title="importance"), name="importance"))
        fig.update_layout(updatemenus=[dict(type="buttons", direction="right", x=0, y=1.15, buttons=[
            dict(label="parameters", method="update", args=[{"visible": [True, False]}]),
            dict(label="importance", method="update", args=[{"visible": [False, True]}])])])
    fig.update_layout(title="Per-layer method allocation", xaxis_title="layer", **{**LAYOUT, "height": max(300, 60 + 28 * len(labels))})
    return fig
