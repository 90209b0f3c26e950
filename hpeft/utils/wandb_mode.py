"""W&B's mode for a run, decided without importing wandb."""

from __future__ import annotations

import os
from pathlib import Path

WANDB_MODES = ("auto", "offline", "online", "disabled")


def resolve_wandb_mode(mode: str) -> str:
    """'auto' is online only when the user's W&B setup says so (WANDB_MODE, an API key, or a login in
    ~/.netrc); otherwise offline, so no account is needed and nothing ever waits for a login prompt."""
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    netrc = Path.home() / ".netrc"
    if os.environ.get("WANDB_API_KEY") or (netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")):
        return "online"
    return "offline"

