"""The global random generators' state (torch, CUDA, numpy, Python): captured, restored, and kept intact around
code that reseeds them (Sionna's `config.seed` reseeds torch's default generator). Plain tensors and lists, so a
checkpoint holding them loads with torch.load(weights_only=True)."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch


def capture() -> dict:
    state = {"torch": torch.get_rng_state(), "python": _plain(random.getstate())}
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state["numpy"] = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])  # another GPU count: the devices keep their seeded states


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, tuple) else value


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


@contextlib.contextmanager
def preserved_rng():
    """Run the body, then put every global generator back where it was: what the body draws or reseeds does
    not change what the caller draws next (a run's training randomness must not depend on a cold data cache)."""
    state = capture()
    try:
        yield
    finally:
        restore(state)
