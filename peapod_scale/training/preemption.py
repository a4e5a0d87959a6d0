"""SIGTERM / SIGUSR1: finish the step, agree on the stop step, checkpoint, say so, exit 75.

A cluster that preempts a job (or ends its time limit) signals it and kills it a little later. A
signal handler that only records the signal keeps the current optimizer step, and any checkpoint
save under way, intact (a second signal during the save is recorded the same way and changes
nothing). At every step boundary the ranks all-reduce the signal they saw (MAX over the signal
numbers), so they all stop after the same step even when the signal reached them at different
moments or reached only some of them. The launcher-side contract (torchrun turns every worker's exit
status into 1, so the status alone cannot carry it): rank 0 writes ``RUN/preempted.json`` after the
checkpoint is complete and deletes a stale one when an attempt starts, so after the launcher returns
the file exists exactly when that attempt was preempted and checkpointed; every rank exits with 75
(EX_TEMPFAIL: "temporary failure, try again").

Loader workers must outlive the signal too: torchrun signals each rank's whole process group and a
cluster signals every process of a job step, loader workers included, and a dead worker fails the
step being finished. PyTorch's workers install their own SIGTERM handler (they exit on it), so the
loader forks them while SIGTERM is blocked (``forking_without_sigterm``): a child keeps the blocked
mask, SIGTERM stays pending there and never acts; the workers end when the loader shuts them down.
SIGUSR1 reaches them as the recording handler they inherit.
"""

from __future__ import annotations

import contextlib
import os
import signal
from datetime import datetime, timezone
from pathlib import Path

from peapod_scale.tools.atomic_files import write_json_atomic
from peapod_scale.tools.run_dir import RunDir

EXIT_PREEMPTED = 75
MARKER = RunDir(".").preempted.name  # preempted.json; slurm/train.sh reads it by name
HANDLED = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """A stop signal arrived when no step was left to finish (after training: restore, export, evaluation)."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name


class StopSignals:
    """Records SIGTERM / SIGUSR1 for the training loop; see the module docstring."""

    def __init__(self):
        self.received = 0  # the first signal's number, 0 while none came
        self.repeats = 0  # signals after the first: recorded, never acted on twice
        self._interrupt = False
        self._previous: dict[int, object] = {}

    def install(self) -> "StopSignals":
        for sig in HANDLED:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.received:
            self.repeats += 1
        else:
            self.received = signum
        if self._interrupt:
            raise Preempted(signal.Signals(signum).name)

    def agreed(self, collectives) -> str | None:
        """The stop signal any rank received so far (the same answer on every rank), or None: a collective."""
        signum = int(collectives.max([float(self.received)])[0])
        return signal.Signals(signum).name if signum else None

    @contextlib.contextmanager
    def interrupting(self):
        """Inside: a signal raises Preempted at once (there is no step to finish); one already received too."""
        if self.received:
            raise Preempted(signal.Signals(self.received).name)
        self._interrupt = True
        try:
            yield
        finally:
            self._interrupt = False


@contextlib.contextmanager
def forking_without_sigterm():
    """Children forked inside never act on SIGTERM; here, one that arrives meanwhile is delivered on leaving."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def clear_marker(run_dir: Path) -> None:
    """Rank 0, when an attempt starts: a marker left by an earlier attempt must not speak for this one."""
    RunDir(run_dir).preempted.unlink(missing_ok=True)


def _env_int(name: str) -> int | str | None:
    value = os.environ.get(name)
    return None if value is None else int(value) if value.isdigit() else value


def write_marker(run_dir: Path, step: int, signal_name: str, checkpoint: str) -> None:
    """Rank 0, after the checkpoint of ``step`` is complete."""
    write_json_atomic(RunDir(run_dir).preempted, {
        "step": step, "signal": signal_name, "checkpoint": checkpoint,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "slurm_job_id": _env_int("SLURM_JOB_ID"), "slurm_restart_count": _env_int("SLURM_RESTART_COUNT"),
    })
