"""A study's outputs: study.json (the numbers), results.md (a table a paper can take), report.html (the hpeft
report of its runs with the hypotheses and per-arm error bars on top) and main.png (the metric against
trainable parameters, mean and 95% CI per arm). All written atomically."""

from __future__ import annotations

import html
import math
from pathlib import Path

from hpeft.utils.atomic import atomic_write, atomic_write_json, atomic_write_text

VERDICT_MARK = {"supported": "supported", "refuted": "REFUTED", "inconclusive": "inconclusive"}


def _num(x, spec: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, (int, float)) and abs(x) >= 1e5 and spec == ".3g":
        return f"{x:,.0f}"
    return format(x, spec)


def _ci(ci) -> str:
    return f"[{_num(ci[0])}, {_num(ci[1])}]" if ci else "-"


def _level(level: dict) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in level.items()) or "all"



def _mean_sd(d: dict, spec: str = ".3g") -> str:
    if not d or d.get("mean") is None:
        return "-"
    return _num(d["mean"], spec) + (f" ± {_num(d['sd'], '.2g')}" if d.get("sd") is not None else "")


def results_markdown(result: dict, command: str) -> str:
    lines = [f"# {result['title']}", "", f"Scale `{result['scale']}`, {result['seeds']} seeds per arm (paired: arm i and arm j "
             f"of seed s share its data order and initialisation), 95% confidence intervals ({result['ci']}-based, scipy.stats). "
             f"{result['runs_found']} of {result['runs_expected']} runs found.", ""]
    if result.get("question"):
        lines += [result["question"], ""]
    if result.get("note"):
        lines += [result["note"], ""]
    lines += [f"Regenerate: `{command}`", "", "## Hypotheses", "",
              f"Verdicts: {result['verdicts']['supported']} supported, {result['verdicts']['refuted']} refuted, "
              f"{result['verdicts']['inconclusive']} inconclusive. Supported: the whole 95% CI lies on the claimed side; "
              "refuted: wholly on the other side; inconclusive: it straddles (or fewer than 2 seeds).", "",
              "| id | claim | estimate | 95% CI | n | verdict |", "|---|---|---:|---|---:|---|"]
    for h in result["hypotheses"]:
        detail = " vs ".join(x for x in (h.get("a"), h.get("b") or h.get("against") or h.get("best")) if x)
        claim = f"{h['statement']} ({h['claim']}{'; ' + detail if detail else ''}{'; ' + h['note'] if h.get('note') else ''})"
        lines.append(f"| {h['id']} | {claim} | {_num(h['estimate'])} | {_ci(h['ci95'])} | {h['n']} | {VERDICT_MARK[h['verdict']]} |")
    metric = result["metric"]
    for level in _levels(result):
        lines += ["", f"## Arms: {_level(level)}", "",
                  f"| arm | method | trainable | deployed | fp16 KB | {metric} mean ± sd | 95% CI | FLOPs fwd/sample | "
                  "train memory MB | train samples/s | latency ms (b=1) | fit s |",
                  "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
        for a in (a for a in result["arms"] if a["level"] == level):
            method = next((r["method"] for r in result["runs"] if r["arm"] == a["arm"] and r["level"] == level), "")
            lines.append(
                f"| {a['arm']} | {method} | {_num(a['params_trainable']['mean'], ',.0f')} | {_num(a['params_deployed']['mean'], ',.0f')} | "
                f"{_num((a['adapter_bytes_fp16']['mean'] or 0) / 1024, '.1f')} | {_mean_sd(a['metric'], '.4g')} | {_ci(a['metric']['ci95'])} | "
                f"{_num(a['flops_forward']['mean'], ',.0f')} | {_mean_sd(a['train_memory_mb'], '.1f')} | "
                f"{_mean_sd(a['train_samples_per_s'], '.0f')} | {_mean_sd(a['latency_ms_batch1'], '.3g')} | {_mean_sd(a['fit_seconds'], '.1f')} |")
    if result.get("stages"):
        lines += ["", "## Stages (staged arms): exact weights and optimizer state, time", "",
                  "| arm | stage | optimizer | 4-bit | trainable | weights KB | optimizer state KB | steps | seconds mean ± sd |",
                  "|---|---|---|---|---:|---:|---:|---:|---:|"]
        for r in result["stages"]:
            lines.append(f"| {r['arm']} | {r['stage']}: {r['name']} | {r['optimizer']} | {r['quantized'] or '-'} | "
                         f"{_num(r['trainable_params']['mean'], ',.0f')} | {_num((r['weight_bytes']['mean'] or 0) / 1024, ',.1f')} | "
                         f"{_num((r['optimizer_state_bytes']['mean'] or 0) / 1024, ',.1f')} | {_num(r['trained_steps']['mean'], '.0f')} | "
                         f"{_mean_sd(r['seconds'], '.2f')} |")
    if result.get("grid") and result.get("grid_kind") == "plain":
        axes = list(result["grid_axes"])
        lines += ["", f"## Grid: {', '.join(axes)}", "",
                  "| " + " | ".join(axes) + f" | {metric} mean ± sd | 95% CI | efficiency mean |",
                  "|" + "---|" * len(axes) + "---:|---|---:|"]
        for g in sorted(result["grid"], key=lambda g: [str(g["cell"][a]) for a in axes]):
            lines.append("| " + " | ".join(str(g["cell"][a]) for a in axes) +
                         f" | {_mean_sd(g['metric'], '.4g')} | {_ci(g['metric']['ci95'])} | {_num(g['efficiency']['mean'])} |")
    elif result.get("grid") and result.get("grid_axes"):
        axes = list(result["grid_axes"])
        lines += ["", f"## Synergy grid: hybrid minus linear expectation of its parts, {metric} (95% CI)", ""]
        for level in _levels(result):
            cells = [g for g in result["grid"] if g["level"] == level]
            if not cells:
                continue
            rows = sorted({g["cell"][axes[0]] for g in cells})
            cols = sorted({g["cell"][axes[1]] for g in cells})
            lines += [f"{_level(level)}: rows {axes[0]}, columns {axes[1]}", "",
                      "| | " + " | ".join(str(c) for c in cols) + " |", "|---|" + "---|" * len(cols)]
            for r in rows:
                cell = {g["cell"][axes[1]]: g for g in cells if g["cell"][axes[0]] == r}
                lines.append(f"| {r} | " + " | ".join(
                    (f"{_num(cell[c]['gain'])} {_ci(cell[c]['gain_ci95'])}" if c in cell and cell[c]["gain"] is not None
                     else f"({_num(cell[c]['metric']['mean'], '.4g')} alone)" if c in cell else "") for c in cols) + " |")
            lines.append("")
    return "\n".join(lines) + "\n"


def _levels(result: dict) -> list[dict]:
    seen = []
    for a in result["arms"]:
        if a["level"] not in seen:
            seen.append(a["level"])
    return seen


def error_bar_figure(result: dict):
    """Mean metric against mean trainable parameters per arm, with 95% CI bars, one trace per level."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for level in _levels(result):
        arms = [a for a in result["arms"] if a["level"] == level and (a["params_trainable"]["mean"] or 0) > 0 and a["metric"]["mean"] is not None]
        lo = [a["metric"]["mean"] - a["metric"]["ci95"][0] if a["metric"]["ci95"] else 0 for a in arms]
        hi = [a["metric"]["ci95"][1] - a["metric"]["mean"] if a["metric"]["ci95"] else 0 for a in arms]
        fig.add_trace(go.Scatter(
            x=[a["params_trainable"]["mean"] for a in arms], y=[a["metric"]["mean"] for a in arms], mode="markers+text",
            text=[a["arm"] for a in arms], textposition="top center", name=_level(level),
            error_y=dict(type="data", symmetric=False, array=hi, arrayminus=lo),
            meta={"task": "*", "scenario": "*", "method": "*study*"}))
    fig.update_layout(title=f"{result['title']}: {result['metric']}, mean and 95% CI over {result['seeds']} seeds",
                      xaxis=dict(title="trainable parameters (log)", type="log"), yaxis=dict(title=result["metric"]),
                      template="plotly_white", height=520)
    return fig


def hypotheses_html(result: dict) -> str:
    rows = "".join(
        f"<tr class='{h['verdict']}'><td>{html.escape(h['id'])}</td><td>{html.escape(h['statement'])}"
        f"<br><small>{html.escape(h['claim'])}</small></td><td>{html.escape(_num(h['estimate']))}</td>"
        f"<td>{html.escape(_ci(h['ci95']))}</td><td>{h['n']}</td><td><b>{html.escape(h['verdict'])}</b></td></tr>"
        for h in result["hypotheses"])
    return ("<h2>Hypotheses</h2><p class='note'>Supported: the whole 95% CI on the claimed side; refuted: wholly on the "
            "other side; inconclusive: it straddles, or fewer than 2 seeds.</p>"
            "<table class='hyp'><tr><th>id</th><th>claim</th><th>estimate</th><th>95% CI</th><th>n</th><th>verdict</th></tr>"
            f"{rows}</table>")


def write_png(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = _levels(result)
    fig, axes = plt.subplots(1, len(levels), figsize=(6.5 * len(levels), 4.8), squeeze=False)
    for ax, level in zip(axes[0], levels):
        arms = [a for a in result["arms"] if a["level"] == level and (a["params_trainable"]["mean"] or 0) > 0 and a["metric"]["mean"] is not None]
        for a in arms:
            ci = a["metric"]["ci95"]
            err = [[a["metric"]["mean"] - ci[0]], [ci[1] - a["metric"]["mean"]]] if ci else None
            ax.errorbar(a["params_trainable"]["mean"], a["metric"]["mean"], yerr=err, fmt="o", capsize=3)
            ax.annotate(a["arm"], (a["params_trainable"]["mean"], a["metric"]["mean"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        for ref in (a for a in result["arms"] if a["level"] == level and not a["params_trainable"]["mean"] and a["metric"]["mean"] is not None):
            ax.axhline(ref["metric"]["mean"], linestyle="--", linewidth=1, color="grey")  # a reference arm (nothing trained)
            ax.text(0.01, ref["metric"]["mean"], f" {ref['arm']} (nothing trained)", fontsize=7, color="grey",
                    va="bottom", transform=ax.get_yaxis_transform())
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters")
        name = arms[0].get("metric_name", result["metric"]) if arms else result["metric"]
        ax.set_ylabel(f"{name} ({'higher' if result.get('higher_is_better') else 'lower'} is better)")
        ax.set_title(f"{_level(level)}: mean, 95% CI, {result['seeds']} seeds", fontsize=10)
        ax.grid(alpha=0.3)
    fig.suptitle(result["title"], fontsize=11)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path


def write_outputs(result: dict, records: list[dict], out: Path, command: str) -> dict[str, Path]:
    from hpeft.report.page import build_page
    from hpeft.report.rows import to_rows

    summaries = [{**r["summary"], "_dir": r["run_dir"]} for r in records]
    rows, skipped = to_rows(summaries)
    page = build_page(rows, skipped, title=f"{result['title']} ({result['scale']})",
                      lead=[(hypotheses_html(result), None), ("<h2>Arms: mean and 95% CI</h2>", error_bar_figure(result))])
    return {
        "study.json": atomic_write_json(out / "study.json", result),
        "results.md": atomic_write_text(out / "results.md", results_markdown(result, command)),
        "report.html": atomic_write_text(out / "report.html", page),
        "main.png": write_png(result, out / "main.png"),
    }


def write_composite(joined: dict, parts: list[dict], out: Path, command: str) -> dict[str, Path]:
    """A study of studies: the joined numbers, the parts' tables one after the other, one page with the joined
    hypotheses and error bars that links each part's own report, one figure with a panel per part."""
    md = results_markdown({**joined, "arms": []}, command).rstrip("\n")
    for r in parts:
        body = (out / r["study"] / "results.md").read_text()
        md += "\n\n" + body.replace("\n## ", "\n### ").replace("# ", "## ", 1)
    links = "".join(f"<li><a href='{html.escape(r['study'])}/report.html'>{html.escape(r['title'])}</a></li>" for r in parts)
    from hpeft.report.page import build_page

    page = build_page([], [], title=f"{joined['title']} ({joined['scale']})",
                      lead=[(f"<ul>{links}</ul>" + hypotheses_html(joined), None),
                            *((f"<h2>{html.escape(r['title'])}: arms, mean and 95% CI</h2>", error_bar_figure(r)) for r in parts)])
    return {
        "study.json": atomic_write_json(out / "study.json", joined),
        "results.md": atomic_write_text(out / "results.md", md + "\n"),
        "report.html": atomic_write_text(out / "report.html", page),
        "main.png": write_png(joined, out / "main.png"),
    }
