"""The default data set: the real MovieLens-100K ratings, taken from RecBole's wheel on PyPI.

RecBole 1.2.1 ships ML-100K as ``recbole/dataset_example/ml-100k/ml-100k.inter``. The wheel is
downloaded once with pip (RecBole itself is never installed), the member is extracted into the
cache and checked. Nothing is stored in the repository.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

RECBOLE_VERSION = "1.2.1"
ML100K_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"
ML100K_FILE = "ml-100k.inter"
ML100K_SHAPE = {"rows": 100_000, "users": 943, "items": 1_682}


def default_cache_dir() -> Path:
    """``$PEAPOD_CACHE`` when set, else ``~/.cache/peapod-scale``."""
    return Path(os.environ.get("PEAPOD_CACHE") or Path.home() / ".cache" / "peapod-scale")


def _wheel(cache: Path) -> Path:
    pattern = f"recbole-{RECBOLE_VERSION}-*.whl"
    found = sorted(cache.glob(pattern))
    if not found:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   f"recbole=={RECBOLE_VERSION}", "-d", str(cache)]
        done = subprocess.run(command, capture_output=True, text=True)
        found = sorted(cache.glob(pattern))
        if done.returncode != 0 or not found:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
            raise RuntimeError(
                f"could not download recbole=={RECBOLE_VERSION} (it holds the MovieLens-100K "
                f"ratings): `{' '.join(command)}` failed:\n{tail}\n"
                f"Put the wheel into {cache} by hand, or pass --input with your own ratings file."
            )
    return found[0]


def _check_shape(path: Path, data: bytes) -> None:
    """Refuse a member that is not the ML-100K we expect (100,000 rows, 943 users, 1,682 items)."""
    rows = data.decode("utf-8").splitlines()[1:]
    users = {row.split("\t", 1)[0] for row in rows}
    items = {row.split("\t", 2)[1] for row in rows}
    shape = {"rows": len(rows), "users": len(users), "items": len(items)}
    if shape != ML100K_SHAPE:
        raise RuntimeError(f"{path}: {ML100K_MEMBER} has {shape}, expected {ML100K_SHAPE}")


def movielens_100k(cache_dir: str | None = None) -> Path:
    """Path of the ML-100K ratings (RecBole .inter format), downloading and caching on first use."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    target = cache / ML100K_FILE
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    wheel = _wheel(cache)
    with zipfile.ZipFile(wheel) as archive:
        data = archive.read(ML100K_MEMBER)
    _check_shape(wheel, data)
    # Write under a temporary name, then rename: a reader never sees half a file.
    partial = cache / f".{ML100K_FILE}.tmp-{os.getpid()}"
    try:
        partial.write_bytes(data)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target
