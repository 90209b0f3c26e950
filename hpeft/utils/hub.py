"""Hugging Face hub look-ups that answer at once, for `hpeft inspect`: transformers' own look-up of a name that
is neither a local folder nor in the Hugging Face cache retries an unreachable hub for about 30 s before it
fails. Here local files come first, and the hub is asked only where one short request shows that it answers:
not HF_HUB_OFFLINE for everything, since on a machine with the hub (a login node) inspect should still fetch a
config.json or tokenizer that is not cached yet, as fit would."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


@functools.cache
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers now: one request without retries, through huggingface_hub's own
    session (so HF_ENDPOINT and proxies count as for a download); False under HF_HUB_OFFLINE."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception:  # no DNS, refused, timed out, a proxy or TLS failure: all mean "cannot download now"
        return False
    return True


def local_first(load: Callable[..., T], name: str) -> T | None:
    """`load(name, local_files_only=True)` (the Hugging Face cache, no network); where that finds nothing,
    `load(name)` from the hub if it answers, else None. A local folder is loaded as it is; its errors, and those
    of the online load (a gated or unknown repo), are raised."""
    if Path(name).expanduser().exists():
        return load(name)
    try:
        return load(name, local_files_only=True)
    except OSError:  # transformers' "couldn't find them in the cached files"
        if not hub_reachable():
            return None
    return load(name)
