"""What every benchmark records beside its figures, written once: which commit was measured, on what machine,
with which packages, and how its rows are appended.

The figures of a shared 2-core VM and of a GPU machine are only comparable, and only reproducible, with the
code, the stack and the load they were measured under; the scripts had grown a copy each of these, with
slightly different rules (three for ``PEAPOD_COMMIT`` alone), so a field in one script's rows could not be trusted
to mean what it meant in another's.

The scripts run as ``python benchmarks/bench_x.py``, so ``benchmarks/`` is ``sys.path[0]`` and ``import common``
finds this file; their children find it the same way (bench_data's ``-c`` children put ``benchmarks/`` on their
path before importing bench_data, bench_train's torchrun children run the script by its path). Only the
standard library is imported, so importing it costs nothing before a measurement and works where the project is
not installed (gpu_check.sh's copy of the tree).
"""

from __future__ import annotations

import datetime
import functools
import importlib.metadata
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

# git runs here and exports come from here, whatever the caller's working directory (bench_data's children run in
# the exported folder, bench_train's in a scratch folder)
REPO = Path(__file__).resolve().parents[1]
# rows, tables and plots by default; the scripts' --report options read earlier runs' rows back from here
RESULTS = REPO / "benchmarks" / "results"
# the folders the installed package is made of: pyproject's package-dir installs kernels/ and ds_configs/ inside
# peapod_scale, and measured code must import the way an install does
CODE = ("peapod_scale", "kernels", "ds_configs")


def _run_git(*args: str) -> subprocess.CompletedProcess | None:
    """git in REPO; None where there is no git at all.

    ``GIT_OPTIONAL_LOCKS=0``: others commit in this checkout while a benchmark runs, and a ``git status`` or
    ``git diff`` that refreshed the index would take ``index.lock`` and make their ``git commit`` fail.
    """
    try:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False,
                              env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
    except OSError:
        return None


@functools.lru_cache(maxsize=None)
def in_checkout() -> bool:
    """Whether REPO is a git checkout of its own.

    Not merely "inside some repository": a copy of the tree without ``.git`` that happens to lie inside another
    repository would otherwise be labelled with that repository's commits.
    """
    done = _run_git("rev-parse", "--show-toplevel")
    return bool(done and done.returncode == 0 and done.stdout.strip()
                and Path(done.stdout.strip()).resolve() == REPO)


def git(*args: str) -> str | None:
    """git's output in REPO, stripped; None without a checkout of REPO or when git fails.

    For the few descriptions a script adds of its own (a commit's subject, the last commit that touched a
    folder): the same rule as ``commit``, git answers only about this repository's own history.
    """
    if not in_checkout():
        return None
    done = _run_git(*args)
    return done.stdout.strip() if done is not None and done.returncode == 0 else None


def differs(paths: Iterable[str], ref: str = "HEAD") -> bool:
    """Whether the working tree's ``paths`` differ from ``ref``: files edited (staged or not) or new, not ignored ones.

    Figures measured on edits nobody committed must say so, since the commit alone does not name that code.
    False without a checkout: there is nothing to compare with.
    """
    paths = list(paths)
    if not paths or not in_checkout():
        return False
    return bool(git("diff", "--name-only", ref, "--", *paths)
                or git("ls-files", "--others", "--exclude-standard", "--", *paths))


def commit(ref: str = "HEAD", dirty_paths: Iterable[str] | None = None) -> str:
    """The short commit id of ``ref``, with ``+dirty`` when any of ``dirty_paths`` differs from it in the working tree.

    One rule for ``PEAPOD_COMMIT``, git first. In a checkout of this repository the checkout is the record of
    what ran, so a variable left set in a shell cannot mislabel rows (gpu_check.sh, which always exports it,
    sets it from the same git there). ``PEAPOD_COMMIT`` names the commit only where git cannot: a copy of the
    tree without ``.git``, as the GPU check runs on a machine the tree was shipped to; ``unknown`` when neither
    says. Such a copy gets no ``+dirty``: without the commit's files there is nothing to compare with, and
    whoever set the variable vouches for the copy.

    In a checkout, a ``ref`` that names no commit is an error (ValueError), not ``unknown``: it is a mistyped
    ``--code``, and the rows would record a commit that was never measured.
    """
    if not in_checkout():
        return os.environ.get("PEAPOD_COMMIT") or "unknown"
    short = git("rev-parse", "--verify", "--quiet", "--short", f"{ref}^{{commit}}")
    if not short:
        raise ValueError(f"{ref!r} names no commit of {REPO}")
    return short + ("+dirty" if dirty_paths is not None and differs(dirty_paths, ref) else "")


def export_code(ref: str, scratch: Path) -> Path:
    """``ref``'s package laid out as the install lays it out (peapod_scale/, kernels/ and ds_configs/ inside it),
    in ``scratch/<short commit>``; the caller puts that folder first on its children's path.

    Others edit the working tree while a benchmark runs: measuring the files of a commit keeps their
    uncommitted edits out of the figures, and makes the commit a row records the code that ran. The folder is
    named by the commit (bench_neighbors records that name as the row's ``code_commit``), so refs naming the
    same commit share one export and an existing export is reused; it appears only once complete. A folder that
    ``ref`` predates (kernels/, ds_configs/) is left out rather than failing, so older commits stay measurable.
    """
    if not in_checkout():
        raise RuntimeError(f"exporting {ref!r} needs the git checkout of {REPO}, and there is none here "
                           "(measure the working tree instead)")
    target = Path(scratch) / commit(ref)
    if target.exists():
        return target
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    (partial / "peapod_scale").mkdir(parents=True)
    for folder in CODE:
        if folder != "peapod_scale" and _run_git("cat-file", "-e", f"{ref}:{folder}").returncode != 0:
            continue
        archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, folder], capture_output=True, check=True)
        inside = partial if folder == "peapod_scale" else partial / "peapod_scale"
        subprocess.run(["tar", "-x", "-C", str(inside)], input=archive.stdout, check=True)
    partial.rename(target)
    return target


def versions(*packages: str) -> dict[str, str]:
    """Python's, torch's and each of ``packages``' version, keyed by the names given; "not installed" for a missing one.

    A figure is only comparable with figures from the same stack. The version is the module's own
    ``__version__`` when the caller has imported it, i.e. what ran, also where no install's metadata carries
    that name (triton from the pytorch-triton distribution, peapod_scale from gpu_check.sh's folder of links);
    otherwise the installed distribution's metadata, which needs no import (deepspeed takes seconds to import).
    """
    found = {"python": platform.python_version()}
    for name in ("torch", *packages):
        version = getattr(sys.modules.get(name), "__version__", None)
        if version is None:
            try:
                version = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                version = "not installed"
        found[name] = str(version)
    return found


def machine(load: float | None = None) -> dict:
    """``host``, ``cpus``, ``platform`` and ``load_1min`` (the 1-minute load average).

    Timings on a shared machine are only readable beside the load they ran under; ``load`` is the figure taken
    at a measurement's start, when the caller took it before measuring (the default: now).
    """
    return {"host": platform.node(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "load_1min": os.getloadavg()[0] if load is None else load}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a rendezvous (MASTER_PORT, ``deepspeed --master_port``).

    On a machine shared with other distributed jobs the default 29500 may be taken, and the ranks then wait at
    start-up without a word. The port is free when returned, not reserved: another process could take it first,
    which the run then reports as a failure to start.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def now_utc() -> str:
    """A row's date: UTC, ISO 8601 to the second, so rows from machines in different time zones sort together."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def append_rows(path: Path | str, rows: Iterable[dict]) -> None:
    """Append ``rows`` to the JSON Lines file ``path``, one ``json.dumps`` a line, creating its folder; closed
    (so flushed) before returning.

    Rows go out as they are measured: a run cut short keeps what it measured, and the rows of earlier runs,
    which the --report options read back, are never rewritten.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
