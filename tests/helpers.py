"""What several test modules share: the repository's paths, small data sets written as a user writes them,
a scripted PeaPOD for evaluation, the compose op's inputs and tolerances, and real training jobs.

Test modules import from here (``from helpers import ...``: tests/ is on sys.path through conftest.py), never
from each other.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from peapod_scale.data.dataset import read_manifest
from peapod_scale.data.prepare.dataset import prepare_dataset
from peapod_scale.data.tokenizer import load_codec
from peapod_scale.model.peapod import PeaPOD, PeaPODConfig

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


# -- small data sets ------------------------------------------------------------------------------------------------

def write_udata(where: Path, rows) -> Path:
    """A MovieLens u.data file (``where`` itself, or ``where/u.data`` for a folder) from (user, item) pairs, which
    get rating 3 and their position as the time, or from (user, item, rating, timestamp) rows."""
    path = where / "u.data" if where.is_dir() else where
    rows = [row if len(row) == 4 else (row[0], row[1], 3, t) for t, row in enumerate(rows)]
    path.write_text("".join("\t".join(map(str, row)) + "\n" for row in rows))
    return path


def synthetic_ratings(users=30, items=25, seed=0):
    """Two taste groups (even/odd items), so similar users exist; timestamps give the order."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(1, users + 1):
        pool = np.arange(1 + user % 2, items + 1, 2)
        for t, item in enumerate(rng.choice(pool, size=int(rng.integers(4, 9)), replace=False)):
            rows.append((user, int(item), 4, 1000 + t))
    return rows


def random_ratings(users: int = 40, items: int = 30, per_user: int = 8) -> list[tuple[int, int, int, int]]:
    """``per_user`` distinct random items for every user, rating 5."""
    rng = np.random.default_rng(0)
    return [(u, int(i), 5, t) for u in range(1, users + 1)
            for t, i in enumerate(rng.choice(np.arange(1, items + 1), per_user, replace=False))]


def prepare_small(root, users: int, items: int = 40, num_negatives: int = 9):
    """(dataset folder, manifest, codec) of a small synthetic MovieLens-style dataset under ``root``."""
    data = root / "data"
    prepare_dataset("movielens", str(write_udata(root, synthetic_ratings(users=users, items=items))), str(data),
                    num_negatives=num_negatives, neighbors=0)
    return data, read_manifest(data), load_codec(data)


# -- evaluation ---------------------------------------------------------------------------------------------------

class ScriptedBeams(PeaPOD):
    """A real (tiny) PeaPOD whose beam search returns fixed answers: ``script(row) -> texts, best first``.

    The beams are the test's input; everything after them (decoding, parsing, ranking, metrics,
    gathering) is evaluate()'s own code. It records the prompts it was shown, per task.
    """

    def __init__(self, manifest, codec, rows, script):
        config = PeaPODConfig(num_users=manifest["counts"]["users"], pool_size=4, user_dim=8, key_dim=8)
        super().__init__(config, PeaPOD.from_preset("tiny", codec.vocab_size, config, dropout_rate=0.0).t5)
        self.codec, self.rows = codec, {r["user"]: r for r in rows}
        self.script, self.prompts, self.calls = script, {}, []

    def generate(self, input_ids, attention_mask, whole_word_ids, user_ids, task_ids, constraint=None, **kwargs):
        task = {0: "sequential", 1: "topn", 2: "explanation"}[int(task_ids[0])]
        self.calls.append(len(user_ids))
        self.prompts.setdefault(task, []).extend(self.codec.decode(input_ids.tolist()))
        texts = []
        for user in user_ids.tolist():
            answers = [str(a) for a in self.script(self.rows[user], task)][: kwargs["num_return_sequences"]]
            texts += answers + ["no item"] * (kwargs["num_return_sequences"] - len(answers))
        return self.codec.encode(texts)["input_ids"]


# -- the compose op -----------------------------------------------------------------------------------------------

HAS_TRITON = importlib.util.find_spec("triton") is not None

TOLERANCE = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    # the interpreter truncates fp32 -> bf16 (one unit in the last place, 2**-7 relative)
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
}

TAU_TOLERANCE = dict(rtol=1e-4, atol=1e-4)  # dtau is accumulated in fp32 whatever the input dtype


def make_inputs(batch, heads, pool, length, width, dtype, device="cpu", logits_dtype=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, heads, pool, generator=gen) * 2
    values = torch.randn(pool, length, width, generator=gen)
    return logits.to(device, logits_dtype or dtype), values.to(device, dtype)


def grads_of(fn, logits, values, tau, grad_out):
    """Run ``fn`` forward and backward on fresh leaves; return (out, dlogits, dvalues, dtau or None)."""
    logits = logits.detach().requires_grad_()
    values = values.detach().requires_grad_()
    tau_leaf = tau.detach().requires_grad_() if isinstance(tau, torch.Tensor) else tau
    out = fn(logits, values, tau_leaf)
    out.backward(grad_out)
    dtau = tau_leaf.grad if isinstance(tau_leaf, torch.Tensor) else None
    return out.detach(), logits.grad, values.grad, dtau


# -- real training jobs -------------------------------------------------------------------------------------------
# Real training runs for the checkpoint, preemption and resume tests: launched, watched, signalled, killed.
#
# The ranks are started the way srun starts them (one process per rank, RANK / WORLD_SIZE / MASTER_* in
# the environment, no launcher in between) and all in ONE process group, so that a test can kill "the
# whole job" with one ``killpg`` (loader workers included) and read every rank's own exit status.
# ``torchrun`` is used where its signal forwarding is what a test is about.
#
# A reference run (uninterrupted) is shared by the test modules of one session: ``reference()``.

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
                    neighbors=0)
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


def kill_after_checkpoint(args: list[str], run_dir: Path) -> int:
    """Start the job, kill -9 it in the middle of step 4 (after the checkpoint of step 3); the step it logged."""
    job = Job(args)
    wait_until(lambda: latest(run_dir) == "step3" and logged_step(run_dir) >= 4, job, "step 4 after checkpoint step3",
               poll=0.01)
    job.kill()
    return logged_step(run_dir)


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
