"""Atomic file writes: write a temporary file beside the target, fsync it, rename it over the target,
then fsync the folder. A reader sees the old file or the new one, never half of one, even if the
writer is killed; and after return the rename survives a crash."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file, or a folder (so a rename inside it is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)` to produce the file's content, then move it to `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; run records and caches are shared with other users
        write(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fsync_path(path.parent)
    return path


def remove_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that writers killed mid-write (SIGKILL, OOM) left in `folder`: atomic_write's
    `.NAME.*.tmp`. Call it only where no other process writes, e.g. in a run directory being resumed."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, write)


def atomic_write_json(path: str | os.PathLike, obj, **dump_kwargs) -> Path:
    return atomic_write_text(path, json.dumps(obj, **({"indent": 2, "default": str} | dump_kwargs)) + "\n")
