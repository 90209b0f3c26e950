"""Architectures (config.json fields only, no weights) of the hub models hpeft's cluster configs name, so that
`hpeft inspect` and benchmarks/seed_scale.py can build the real architecture, randomly initialised, on a machine
that cannot reach the Hugging Face hub. Each file holds the architecture fields of the model's public
config.json (file name: the hub name with "/" as "--"); tests/models/test_architectures.py checks each against
the parameter count its model card states. Where the hub or a local copy is reachable, the real config.json is
used instead: these are a fallback, never a substitute for the weights."""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent


def shipped_architecture(name: str) -> dict | None:
    """The shipped architecture fields of hub model `name` (with its model_type), or None."""
    path = HERE / f"{name.replace('/', '--')}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def shipped_names() -> list[str]:
    return sorted(p.stem.replace("--", "/") for p in HERE.glob("*.json"))
