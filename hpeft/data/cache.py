"""Atomic, checksummed on-disk cache of named tensors.

One entry per key, in its own folder under ``root``::

    root/<key>/tensors.safetensors   the tensors
    root/<key>/manifest.json         config, sha256 and size of every file, names/shapes/dtypes, time

Every file is written to a temporary file in the same folder, flushed, fsync'ed and renamed over the
final name, and the manifest goes last: an entry without a manifest is partial by construction.
``load`` re-checks everything the manifest promises and returns ``None`` (after a logged warning that
names the file and the reason) for anything short of a perfect entry, so a caller rebuilds it
instead of training on a truncated or corrupted file.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from hpeft.utils.atomic import atomic_write, atomic_write_json

__all__ = ["TensorCache", "cache_key", "CACHE_FORMAT"]

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # layout of an entry (file names, manifest fields); bump to invalidate every entry
TENSORS_FILE = "tensors.safetensors"
MANIFEST_FILE = "manifest.json"


def cache_key(config: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of ``config`` (sorted keys, no whitespace): equal configs, equal keys."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


class TensorCache:
    """A folder of cache entries, each a dict of named tensors plus a JSON-able ``meta`` dict.

    >>> cache = TensorCache("data_cache")
    >>> cache.save(key, {"h": h}, meta={"config": cfg})  # doctest: +SKIP
    >>> cache.load(key)                                   # dict of tensors, or None  # doctest: +SKIP
    """

    def __init__(self, root: str | os.PathLike[str] = "data_cache") -> None:
        self.root = Path(root)

    def entry_dir(self, key: str) -> Path:
        """Folder that holds (or would hold) the entry for ``key``."""
        if not key or any(c in key for c in "/\\") or key.startswith("."):
            raise ValueError(f"invalid cache key {key!r}: use a plain name such as a hex digest")
        return self.root / key

    def manifest(self, key: str) -> dict[str, Any] | None:
        """The parsed manifest of ``key``, or ``None`` when it is missing or unreadable (no checks on tensors)."""
        try:
            return json.loads((self.entry_dir(key) / MANIFEST_FILE).read_text())
        except (OSError, ValueError):
            return None

    def exists(self, key: str) -> bool:
        """Cheap test: the entry has a manifest. ``load`` is the one that verifies it."""
        return (self.entry_dir(key) / MANIFEST_FILE).is_file()

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Exclusive inter-process lock for ``key`` (flock on a side file), so that parallel workers
        asking for the same missing entry build it once: take the lock, ``load``, build only on a miss."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.entry_dir(key)  # validates the key
        with open(self.root / f".{key}.lock", "a+") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    # ------------------------------------------------------------------ load

    def load(
        self,
        key: str,
        expected_shapes: Mapping[str, tuple[int, ...]] | None = None,
    ) -> dict[str, torch.Tensor] | None:
        """Tensors of ``key`` after full verification, or ``None``.

        ``None`` without a warning when there is no entry at all; ``None`` with a warning naming the file and
        the reason when the entry is partial (no manifest), its manifest is unreadable, a file is missing,
        has the wrong size or checksum, does not parse as safetensors, or holds other names/shapes/dtypes
        than the manifest (or ``expected_shapes``) says.
        """
        folder = self.entry_dir(key)
        if not folder.exists():
            return None
        manifest_path = folder / MANIFEST_FILE
        if not manifest_path.is_file():
            log.warning("cache entry %s is partial (no %s): rebuilding it", folder, MANIFEST_FILE)
            return None
        try:
            manifest = json.loads(manifest_path.read_text())
            files = manifest["files"]
            spec = manifest["tensors"]
            if manifest.get("format") != CACHE_FORMAT or manifest.get("key") != key:
                raise ValueError(f"format/key mismatch ({manifest.get('format')!r}, {manifest.get('key')!r})")
            if not isinstance(files, dict) or TENSORS_FILE not in files or not isinstance(spec, dict):
                raise ValueError("missing 'files' or 'tensors' section")
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("cache manifest %s is corrupt (%s): rebuilding the entry", manifest_path, e)
            return None

        for name, info in files.items():
            path = folder / name
            if not path.is_file():
                log.warning("cache file %s is missing: rebuilding the entry", path)
                return None
            size = path.stat().st_size
            if size != info.get("bytes"):
                log.warning(
                    "cache file %s is truncated or resized (%d bytes, manifest says %s): rebuilding the entry",
                    path, size, info.get("bytes"),
                )
                return None
            digest = _sha256_file(path)
            if digest != info.get("sha256"):
                log.warning("cache file %s fails its sha256 check: rebuilding the entry", path)
                return None

        path = folder / TENSORS_FILE
        try:
            tensors = load_file(path)
        except Exception as e:  # safetensors raises its own error types
            log.warning("cache file %s does not load (%s): rebuilding the entry", path, e)
            return None

        if set(tensors) != set(spec):
            log.warning(
                "cache file %s holds tensors %s, manifest lists %s: rebuilding the entry",
                path, sorted(tensors), sorted(spec),
            )
            return None
        for name, t in tensors.items():
            want = spec[name]
            if list(t.shape) != list(want.get("shape", [])) or str(t.dtype) != want.get("dtype"):
                log.warning(
                    "cache file %s: tensor %r is %s %s, manifest says %s %s: rebuilding the entry",
                    path, name, str(t.dtype), list(t.shape), want.get("dtype"), want.get("shape"),
                )
                return None
        for name, shape in (expected_shapes or {}).items():
            if name not in tensors or tuple(tensors[name].shape) != tuple(shape):
                got = tuple(tensors[name].shape) if name in tensors else "absent"
                log.warning(
                    "cache file %s: tensor %r is %s, expected %s: rebuilding the entry", path, name, got, tuple(shape)
                )
                return None
        return tensors

    # ------------------------------------------------------------------ save

    def save(self, key: str, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None = None) -> Path:
        """Write ``tensors`` and ``meta`` as the entry ``key`` atomically, replacing any previous entry.

        Returns the entry's folder."""
        folder = self.entry_dir(key)
        folder.mkdir(parents=True, exist_ok=True)
        manifest_path = folder / MANIFEST_FILE
        # Drop the old manifest first: from here until the new one lands, the entry reads as partial.
        with contextlib.suppress(FileNotFoundError):
            manifest_path.unlink()
        for stray in folder.iterdir():  # leftovers of an interrupted write, and files of an old layout
            if stray.name != TENSORS_FILE:
                if stray.is_dir():
                    shutil.rmtree(stray, ignore_errors=True)
                else:
                    stray.unlink(missing_ok=True)

        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        tensors_path = atomic_write(folder / TENSORS_FILE, lambda tmp: save_file(tensors, tmp))
        manifest = {
            "format": CACHE_FORMAT,
            "key": key,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "files": {TENSORS_FILE: {"sha256": _sha256_file(tensors_path), "bytes": tensors_path.stat().st_size}},
            "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in tensors.items()},
            "meta": dict(meta or {}),
        }
        # The manifest goes last: an entry without one reads as partial and is rebuilt.
        atomic_write_json(manifest_path, manifest, sort_keys=True)
        return folder

    def remove(self, key: str) -> None:
        """Delete the entry for ``key`` if present."""
        shutil.rmtree(self.entry_dir(key), ignore_errors=True)
