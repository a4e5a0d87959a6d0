"""Files that are either absent, the old version or the whole new one: never half-written.

A crash (kill -9, node failure, full disk) can stop a process at any byte of a write. Writing to a
temporary name in the same folder, flushing it to disk and then ``os.replace``-ing it over the final
name makes the switch a single rename, which POSIX guarantees atomic; the folder's own entry is
flushed too, so the rename itself survives a power loss.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def fsync_path(path: str | Path) -> None:
    """Flush a file's (or a folder's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_name(path: str | Path) -> Path:
    """A hidden name beside ``path`` that no other process writes (it carries this process id)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    path = Path(path)
    tmp = temporary_name(path)
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, payload) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")
