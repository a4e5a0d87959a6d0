"""Files and folders that are either absent, the old version or the whole new one: never half-written.

A crash (kill -9, node failure, full disk) can stop a process at any byte of a write. Writing to a
temporary name in the same folder, flushing it to disk and then ``os.replace``-ing it over the final
name makes the switch a single rename, which POSIX guarantees atomic; the folder's own entry is
flushed too, so the rename itself survives a power loss.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
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


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two names in one step (Linux renameat2 RENAME_EXCHANGE); False where the system or filesystem cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # not glibc >= 2.28, not Linux
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # e.g. a network filesystem: rename in two steps
        return False
    raise OSError(error, f"cannot exchange {a} and {b}: {os.strerror(error)}")


def replace_folder(tmp: str | Path, final: str | Path) -> None:
    """Put the finished folder ``tmp`` at ``final``, replacing what is there: complete or invisible.

    A reader of ``final`` (``evaluate`` of a model being saved, a teammate's ``recommend``) sees the old folder
    or the new one, never a mix and, where the filesystem can swap two names at once (Linux: ext4, xfs, btrfs,
    tmpfs), never no folder. Elsewhere the old folder is moved aside just before the new one is renamed in. The
    old folder is deleted last; a crash before that leaves it hidden beside ``final`` (``.NAME.old-PID``).
    """
    tmp, final = Path(tmp), Path(final)
    fsync_path(tmp)
    if not final.exists():
        os.rename(tmp, final)
    elif _exchange(tmp, final):
        shutil.rmtree(tmp)  # the old folder, under the temporary name now
    else:
        aside = final.with_name(f".{final.name}.old-{os.getpid()}")
        shutil.rmtree(aside, ignore_errors=True)
        os.rename(final, aside)
        try:
            os.rename(tmp, final)
        except BaseException:
            os.rename(aside, final)
            raise
        shutil.rmtree(aside, ignore_errors=True)
    fsync_path(final.parent)
