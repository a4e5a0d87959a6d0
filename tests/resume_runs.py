"""Real training runs for the checkpoint, preemption and resume tests: launched, watched, signalled, killed.

The ranks are started the way srun starts them (one process per rank, RANK / WORLD_SIZE / MASTER_* in
the environment, no launcher in between) and all in ONE process group, so that a test can kill "the
whole job" with one ``killpg`` (loader workers included) and read every rank's own exit status.
``torchrun`` is used where its signal forwarding is what a test is about.

A reference run (uninterrupted) is shared by the test modules of one session: ``reference()``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from peapod_scale.data.prepare import prepare_dataset

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 900  # seconds for one run: the CI machine is small and shared

# dropout on (the preset's 0.1), gradient accumulation 2, 2 loader workers, every task; warm-up longer than
# the run so that the learning rate of step k does not depend on --max-steps
OPTIONS = ("--deepspeed", "ds_configs/z2.json", "--log-every", "1", "--micro-batch-size", "4", "--grad-accum", "2",
           "--warmup-steps", "20", "--lr", "3e-3", "--topn-candidates", "5", "--eval-split", "none",
           "--num-workers", "2", "--task-weights", "sequential=1,topn=1,explanation=0.5", "--save-every", "3")
STEPS = 10


def prepare(root: Path) -> Path:
    """30 users x 9 reviews, two in three with text: all three tasks train."""
    root.mkdir(parents=True, exist_ok=True)
    reviews = [{"reviewerID": f"U{u}", "asin": f"a{(u * 7 + k) % 30}", "unixReviewTime": 100 * u + k,
                "reviewText": "" if (u + k) % 3 == 0 else f"Item {k} is a fine choice for me.", "summary": ""}
               for u in range(30) for k in range(9)]
    (root / "reviews.json").write_text("".join(json.dumps(r) + "\n" for r in reviews))
    prepare_dataset("amazon-reviews", str(root / "reviews.json"), str(root / "ds"), seed=0, num_negatives=9,
                    num_neighbors=0)
    return root / "ds"


def env() -> dict:
    base = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        base.pop(name, None)
    return base


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_args(data: Path, run_dir: Path, *extra: str, steps: int = STEPS) -> list[str]:
    return ["peapod_scale/train.py", "--data", str(data), "--output", str(run_dir), "--max-steps", str(steps),
            *OPTIONS, *extra]


class Job:
    """The ranks of one training attempt, in one process group of their own."""

    def __init__(self, args: list[str], ranks: int = 2, logs: Path | None = None):
        port = free_port()
        self.logs = logs or Path(args[args.index("--output") + 1]).parent
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs: list[subprocess.Popen] = []
        for rank in range(ranks):
            rank_env = {**env(), "RANK": str(rank), "WORLD_SIZE": str(ranks), "LOCAL_RANK": str(rank),
                        "LOCAL_WORLD_SIZE": str(ranks), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
            group = {"process_group": 0 if rank == 0 else self.procs[0].pid}  # one group, ours
            out = open(self.logs / f"{Path(args[args.index('--output') + 1]).name}-{time.time_ns()}-rank{rank}.log", "w")
            self.procs.append(subprocess.Popen([sys.executable, *args], cwd=REPO, env=rank_env, stdout=out,
                                               stderr=subprocess.STDOUT, **group))
            self.procs[-1].log_path = Path(out.name)
            out.close()

    @property
    def pgid(self) -> int:
        return self.procs[0].pid

    def running(self) -> bool:
        return any(p.poll() is None for p in self.procs)

    def output(self) -> str:
        return "\n".join(p.log_path.read_text()[-3000:] for p in self.procs)

    def signal_ranks(self, sig: int) -> None:
        """``sig`` to every process of the job (ranks and their loader workers), as a cluster does."""
        os.killpg(self.pgid, sig)

    def wait(self, timeout: float = TIMEOUT) -> list[int]:
        deadline = time.monotonic() + timeout
        codes = []
        for proc in self.procs:
            try:
                codes.append(proc.wait(max(1.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                os.killpg(self.pgid, signal.SIGKILL)
                raise AssertionError(f"the job did not end in {timeout} s:\n{self.output()}") from None
        return codes

    def kill(self) -> None:
        """kill -9 of the whole process group, then reap it."""
        os.killpg(self.pgid, signal.SIGKILL)
        for proc in self.procs:
            proc.wait(60)
        deadline = time.monotonic() + 60
        while _group_alive(self.pgid) and time.monotonic() < deadline:  # loader workers are not our children
            time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def wait_until(condition, job: Job, what: str, timeout: float = TIMEOUT, poll: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if not job.running():
            raise AssertionError(f"the job ended before {what}:\n{job.output()}")
        time.sleep(poll)
    job.kill()
    raise AssertionError(f"no {what} in {timeout} s:\n{job.output()}")


def logged_step(run_dir: Path) -> int:
    """The last step rank 0 logged in RUN/train.log (--log-every 1), 0 before the first."""
    log = run_dir / "train.log"
    steps = [int(line.split()[1]) for line in log.read_text().splitlines() if line.startswith("step ")] \
        if log.is_file() else []
    return steps[-1] if steps else 0


def latest(run_dir: Path) -> str | None:
    path = run_dir / "checkpoints" / "latest"
    return path.read_text().strip() if path.is_file() else None


def run(args: list[str], ranks: int = 2, expect: int = 0) -> list[int]:
    """Start a job and wait for it; assert every rank's exit status."""
    job = Job(args, ranks)
    codes = job.wait()
    assert codes == [expect] * ranks, f"exit statuses {codes}:\n{job.output()}"
    return codes


def losses(run_dir: Path, tag: str = "loss/total") -> dict[int, float]:
    """TensorBoard's view of one scalar: step -> value (after purges, as TensorBoard shows it)."""
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    scalars = events.Scalars(tag)
    steps = [event.step for event in scalars]
    assert len(steps) == len(set(steps)), f"{tag}: a step is shown twice: {steps}"
    return {event.step: event.value for event in scalars}


def copy_run(run_dir: Path, to: Path) -> Path:
    shutil.copytree(run_dir, to)
    return to


_REFERENCES: dict[tuple, Path] = {}


def reference(tmp_path_factory, *extra: str, steps: int = STEPS, ranks: int = 2) -> tuple[Path, Path]:
    """(dataset, run folder) of an uninterrupted run with OPTIONS + ``extra``: made once per session."""
    key = (extra, steps, ranks)
    if key not in _REFERENCES:
        root = tmp_path_factory.mktemp("reference")
        data = prepare(root / "data")
        run(train_args(data, root / "run", *extra, steps=steps), ranks)
        _REFERENCES[key] = root / "run"
    run_dir = _REFERENCES[key]
    return run_dir.parent / "data" / "ds", run_dir
