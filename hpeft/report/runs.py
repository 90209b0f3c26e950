"""Collect run summaries from run directories. A broken summary is skipped with its reason, never fatal."""

from __future__ import annotations

import json
from pathlib import Path


def load_summaries(paths: list[str | Path]) -> tuple[list[dict], list[tuple[Path, str]]]:
    """Summaries of the runs at or below `paths`, and the (path, reason) of every run skipped."""
    found: list[dict] = []
    skipped: list[tuple[Path, str]] = []
    files: list[Path] = []
    for path in map(Path, paths):
        files += [path / "summary.json"] if (path / "summary.json").is_file() else sorted(path.rglob("summary.json"))
    for file in files:
        try:
            summary = json.loads(file.read_text())
            missing = [k for k in ("run_id", "variant", "metrics", "params") if k not in summary]
            if missing:
                raise ValueError(f"missing keys {missing}")
        except (OSError, ValueError) as err:
            skipped.append((file.parent, str(err)))
            continue
        summary["_dir"] = str(file.parent)
        found.append(summary)
    return found, skipped
