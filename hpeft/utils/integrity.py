"""Is a file whole? Checks that name what is wrong with a truncated or corrupted checkpoint or adapter.

torch.save writes a zip archive whose members carry CRC-32s, so `checkpoint_problem` finds a truncated file (no
central directory) and flipped bytes (a CRC mismatch) without unpickling anything. safetensors files have no
checksum of their data, so adapters record the SHA-256 of their tensor file in their JSON (hpeft.peft.io).
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Results by (path, size, mtime): a resume checks last.ckpt when choosing it and again when Lightning loads it;
# the second time must not read a multi-GB file once more.
_checked: dict[tuple[str, int, int], str | None] = {}


def checkpoint_problem(path: str | Path) -> str | None:
    """See _checkpoint_problem; a file unchanged since its last check is not read again."""
    path = Path(path)
    if not path.is_file():
        return "not found"
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _checked:
        _checked[key] = _checkpoint_problem(path)
    return _checked[key]


def _checkpoint_problem(path: Path) -> str | None:
    """None if `path` is an intact torch checkpoint (or one this cannot check: torch's legacy non-zip format, or a
    zip saved with CRC-32s off, torch.serialization.set_crc32_options(False)); else what is wrong, in words.
    Reads the whole file once (the CRCs); torch.load reads it again, mostly from the page cache."""
    if path.stat().st_size == 0:
        return "empty (0 bytes)"
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(2)
        if head == b"PK":
            return "truncated (a zip archive without its end)"
        return None if head[:1] == b"\x80" else "not a torch checkpoint (neither a zip archive nor a pickle)"
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            if infos and all(i.CRC == 0 for i in infos if i.file_size):
                return None  # saved without CRC-32s: nothing to check against
            bad = archive.testzip()
    except zipfile.BadZipFile as err:
        return f"truncated or corrupt ({err})"
    except (OSError, EOFError, ValueError) as err:  # a member cut short, a header pointing past the end
        return f"unreadable ({type(err).__name__}: {err})"
    return None if bad is None else f"corrupt: member {bad} fails its CRC check"
