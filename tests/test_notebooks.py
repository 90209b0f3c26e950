"""The analysis notebooks in notebooks/, executed top to bottom on fixture runs (seed 000's example)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from tests.conftest import REPO
from tests.report.fixtures import seed000_runs, write_runs

NOTEBOOK = REPO / "notebooks" / "pareto_analysis.ipynb"


def execute(path: Path, runs: Path, monkeypatch) -> nbformat.NotebookNode:
    """Runs the notebook as Jupyter would (cwd = its folder) with HPEFT_RUNS, which its kernel inherits."""
    monkeypatch.setenv("HPEFT_RUNS", str(runs))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=120, startup_timeout=60, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return nb


def outputs(nb: nbformat.NotebookNode) -> tuple[str, list[str]]:
    """All printed text, and the Markdown of every displayed Markdown object."""
    text, markdown = [], []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                text.append(out.text)
            elif "text/markdown" in out.get("data", {}):
                markdown.append(out.data["text/markdown"])
    return "".join(text), markdown


def table_rows(markdown: str) -> list[dict[str, str]]:
    """The rows of the Markdown tables in `markdown`, keyed by their table's header."""
    rows, header = [], None
    for line in markdown.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif not set(line) <= set("|-"):
            rows.append(dict(zip(header, cells)))
    return rows


def frontiers(markdown: str) -> dict[str, list[str]]:
    """{"trainable parameters" | "FLOPs per sample": run ids on that frontier} of one task/scenario section."""
    found = {}
    for chunk in markdown.split("**Frontier vs ")[1:]:
        axis = chunk.split("**", 1)[0]
        found[axis] = [r["run"] for r in table_rows(chunk)]
    return found


def test_pareto_analysis_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_pareto_analysis_notebook_on_seed000_runs(tmp_path, monkeypatch):
    runs = write_runs(tmp_path / "runs", seed000_runs())
    nb = execute(NOTEBOOK, runs, monkeypatch)
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    text, markdown = outputs(nb)

    assert f"run folder: {runs.resolve()}" in text
    assert "5 runs read, 5 in the table, 0 skipped" in text
    assert "table OK: 5 rows in 1 task/metric/scenario groups" in text

    sections = [m for m in markdown if "**Frontier vs " in m]
    assert len(sections) == 1 and sections[0].startswith("### channel · InF: NMSE (dB), lower is better (5 runs)")
    front = frontiers(sections[0])
    # Prompt (12.8K, -25.9 dB, 900 FLOPs) and LoRA (49.2K, -26.4 dB, 1100 FLOPs) dominate the rest on both axes.
    assert front == {"trainable parameters": ["prompt", "lora"], "FLOPs per sample": ["prompt", "lora"]}
    assert "Dominated: adapter, hybrid_m, hybrid_s" in sections[0]

    synergy = {r["run"]: r for m in markdown if "synergy gain" in m for r in table_rows(m)}
    assert set(synergy) == {"hybrid_m", "hybrid_s"}
    # Seed 000, 6.3: 12.8/62 x (-25.9) + 49.2/62 x (-26.4) = -26.297; -26.35 - (-26.297) = -0.053.
    hybrid = synergy["hybrid_m"]
    assert float(hybrid["linear expectation"]) == pytest.approx(-26.297, abs=1e-3)
    assert round(float(hybrid["synergy gain"]), 2) == -0.05
    assert hybrid["from the parts"] == "20.6% × -25.9 (prompt) + 79.4% × -26.4 (lora)"
    assert float(synergy["hybrid_s"]["synergy gain"]) > 0  # 6.4K prompt + 49.2K LoRA at -26.2 dB: worse than its parts

    plots = [o for c in nb.cells for o in c.get("outputs", []) if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert len(plots) == 5  # two tradeoffs and the surface for the one task, the synergy and the layer heatmaps


def test_pareto_analysis_notebook_fails_loudly_without_runs(tmp_path, monkeypatch):
    (tmp_path / "runs").mkdir()
    with pytest.raises(CellExecutionError, match="no run with a metric under"):
        execute(NOTEBOOK, tmp_path / "runs", monkeypatch)
