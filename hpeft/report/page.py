"""The report as one self-contained HTML page: plotly.js inlined, the figures as JSON, filters in a few
lines of script. Opened from disk it needs no network; `hpeft dashboard` serves the same page."""

from __future__ import annotations

import html
import json

import plotly.io as pio
from plotly.offline import get_plotlyjs

from hpeft.report.figures import efficiency_surface, layer_heatmap, synergy_heatmap, tradeoff
from hpeft.report.rows import groups, mark_pareto, synergy_rows

# window.onerror collects script errors on the page itself, so a headless browser's DOM dump shows them.
SCRIPT = """
const hpeftErrors = [];
window.addEventListener('error', e => { hpeftErrors.push(String(e.message)); document.body.dataset.errors = hpeftErrors.join(' | '); });
function hpeftFilter() {
  const want = {};
  document.querySelectorAll('select.filter').forEach(s => want[s.name] = s.value);
  const ok = m => !m || (['task', 'scenario', 'method'].every(k => want[k] === '*' || m[k] === '*' || m[k] === undefined
      || m[k] === want[k] || (k === 'method' && m[k].startsWith('*'))));
  document.querySelectorAll('.plot').forEach(div => {
    if (!div.data) return;
    Plotly.restyle(div, {visible: div.data.map(t => ok(t.meta) ? (t.type === 'heatmap' && t.visible === false ? false : true) : false)});
  });
  document.querySelectorAll('tr[data-task]').forEach(tr => {
    tr.style.display = ok({task: tr.dataset.task, scenario: tr.dataset.scenario, method: tr.dataset.method}) ? '' : 'none';
  });
}
document.addEventListener('DOMContentLoaded', () => {
  let drawn = 0;
  for (const [id, fig] of Object.entries(HPEFT_FIGURES)) {
    Plotly.newPlot(id, fig.data, fig.layout, {responsive: true});
    drawn += 1;
  }
  document.querySelectorAll('select.filter').forEach(s => s.addEventListener('change', hpeftFilter));
  document.body.dataset.rendered = String(drawn);
});
"""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table.hyp td:nth-child(2) { text-align: left; } tr.supported td:last-child { color: #186a1e; }
tr.refuted td:last-child { color: #a11; } tr.inconclusive td:last-child { color: #777; }
table { border-collapse: collapse; font-size: 0.85em; } td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
td:first-child, th:first-child { text-align: left; } .filters { position: sticky; top: 0; background: #fff; padding: .5em 0; }
.note { color: #666; font-size: .9em; } .plot { width: 100%; }
"""


def _fmt(value, spec: str = ",") -> str:
    return "" if value is None else format(value, spec)


def comparison_table(rows: list[dict]) -> str:
    """One line per (task, method): params, the metric per scenario, peak memory, fit time."""
    scenarios = sorted({r["scenario"] for r in rows})
    head = "".join(f"<th>{html.escape(s or '-')}</th>" for s in scenarios)
    lines = [f"<tr><th>method</th><th>task</th><th>trainable params</th>{head}<th>peak memory MB</th><th>fit s</th></tr>"]
    for (task, method), group in sorted(groups(rows, ("task", "method")).items()):
        by_scenario = {s: [r["metric"] for r in group if r["scenario"] == s] for s in scenarios}
        cells = "".join(f"<td>{sum(v) / len(v):.4g}" + (f" (n={len(v)})" if len(v) > 1 else "") + "</td>" if v else "<td></td>"
                        for v in by_scenario.values())
        params = sorted({r["trainable"] for r in group})
        lines.append(
            f'<tr data-task="{html.escape(task)}" data-scenario="*" data-method="{html.escape(method)}">'
            f"<td>{html.escape(method)}</td><td>{html.escape(task)}</td><td>{' / '.join(f'{p:,}' for p in params)}</td>{cells}"
            f"<td>{_fmt(max(r['peak_mb'] for r in group), ',.0f')}</td><td>{_fmt(max(r['fit_s'] for r in group), ',.1f')}</td></tr>")
    return "<table>" + "\n".join(lines) + "</table>"


def synergy_table(synergy: list[dict]) -> str:
    if not synergy:
        return '<p class="note">No hybrid has runs of each of its methods alone for the same task and scenario.</p>'
    lines = ["<tr><th>hybrid</th><th>scenario</th><th>metric</th><th>parts alone (params in hybrid: metric)</th>"
             "<th>linear expectation</th><th>synergy gain</th><th>gain per 1K params</th></tr>"]
    for s in synergy:
        parts = "; ".join(f"{p['method']} ({p['params']:,}: {p['metric_alone']:.4g})" for p in s["parts"])
        lines.append(
            f'<tr data-task="{html.escape(s["task"])}" data-scenario="{html.escape(s["scenario"])}" data-method="{html.escape(s["method"])}">'
            f"<td>{html.escape(s['method'])}</td><td>{html.escape(s['scenario'])}</td><td>{s['metric']:.4g}</td><td>{html.escape(parts)}</td>"
            f"<td>{s['linear_expectation']:.4g}</td><td>{s['gain']:+.4g}</td><td>{_fmt(s['gain_per_kparam'], '+.4g')}</td></tr>")
    return "<table>" + "\n".join(lines) + "</table>"


def _select(name: str, values: list[str]) -> str:
    options = "".join(f'<option value="{html.escape(v)}">{html.escape(v or "-")}</option>' for v in sorted(set(values)))
    return f'<label>{name} <select class="filter" name="{name}"><option value="*">all</option>{options}</select></label>'


def build_page(rows: list[dict], skipped: list[tuple[str, str]], title: str = "hpeft report", refresh_s: int | None = None,
               lead: list[tuple[str, object]] | None = None) -> str:
    """The page for these rows (Pareto flags are set on them here). `lead`: (html, figure or None) sections
    placed first, e.g. a study's hypotheses and error bars."""
    mark_pareto(rows)
    synergy = synergy_rows(rows)
    figures: dict[str, dict] = {}
    sections: list[str] = []

    def add(fig, caption: str = "") -> str:
        fid = f"fig{len(figures)}"
        figures[fid] = json.loads(pio.to_json(fig))
        return f'<div id="{fid}" class="plot"></div>' + (f'<p class="note">{caption}</p>' if caption else "")

    for text, fig in lead or []:
        sections.append(text + (add(fig) if fig is not None else ""))
    tasks = groups(rows, ("task", "metric_name"))
    if len({t for t, _ in tasks}) > 1:
        sections.append(f'<p class="note">Runs of {len(tasks)} tasks/metrics: each gets its own axes, never a shared one.</p>')
    for (task, metric), task_rows in sorted(tasks.items()):
        sections.append(f"<h2>{html.escape(task)}: {html.escape(task_rows[0]['metric_label'])}</h2>")
        sections.append(add(tradeoff(task_rows, "trainable"), "Filled: on the Pareto frontier of its scenario; open: dominated."))
        sections.append(add(tradeoff(task_rows, "flops")))
        sections.append(add(efficiency_surface(task_rows)))
    sections.append("<h2>Synergy</h2>" + synergy_table(synergy))
    heat = synergy_heatmap(synergy)
    if heat is not None:
        sections.append(add(heat))
    layers = layer_heatmap(rows)
    if layers is not None:
        sections.append("<h2>Per-layer allocation</h2>" + add(layers))
    sections.append("<h2>Comparison</h2>" + comparison_table(rows))
    if skipped:
        items = "".join(f"<li><code>{html.escape(str(w))}</code>: {html.escape(why)}</li>" for w, why in skipped)
        sections.append(f"<h2>Skipped ({len(skipped)})</h2><ul>{items}</ul>")
    filters = " ".join(_select(k, [r[k] for r in rows]) for k in ("task", "scenario", "method"))
    meta = f'<meta http-equiv="refresh" content="{refresh_s}">' if refresh_s else ""
    return (f"<!doctype html><html><head><meta charset='utf-8'>{meta}<title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style><script>{get_plotlyjs()}</script>"
            # "</" escaped: a run name holding "</script>" must not end the script (nor inject one).
            f"<script>const HPEFT_FIGURES = {json.dumps(figures).replace('</', '<' + chr(92) + '/')};{SCRIPT}</script></head><body>"
            f"<h1>{html.escape(title)}</h1><p class='note'>{len(rows)} runs, {len(skipped)} skipped.</p>"
            f"<div class='filters'>{filters}</div>" + "\n".join(sections) + "</body></html>")
