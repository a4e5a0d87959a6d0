"""slurm/*.sh on a real two-node SLURM cluster (slurmctld + two slurmd on loopback, scripts/slurm_local.sh).

The jobs are submitted as a user submits them: the #SBATCH lines unchanged (the emulated nodes
advertise 8 count-only GPUs and 32 CPUs each, so `--gpus-per-node=8 --cpus-per-task=32` is granted),
with DS_ACCELERATOR=cpu, the one documented way to say "train on the CPUs on purpose" where SLURM grants
GPUs that torch cannot see. Output files and run folders go to temporary folders.

CI time: one cluster and one dataset for the module, and one training job serves three tests: its
first run is preempted by hand (`scancel --signal=USR1 --batch`), its second is stopped by slurmctld's
own time-limit signal (`--time=3 --signal=B:USR1@30`), its third finishes. A second job trains the same
steps under plain srun (no torchrun) without interruption: equal test metrics show both the launcher
equivalence and that two requeues lost or repeated nothing. That second job, prepare.sh and the
bad-argument job run while the first job's second run waits for its time limit with its ranks stopped
(the nodes advertise room for them: 16 GPUs and 80 CPUs each here).
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import REPO

pytestmark = pytest.mark.distributed

# enough steps that a run cannot finish between the poll that sees its first step and the signal the test sends
# (tiny trains ~15 steps/s on an idle 2-core machine; with 24 steps, run 2 once finished first)
MAX_STEPS = 96
TRAIN_ARGS = ["--max-steps", str(MAX_STEPS), "--log-every", "1", "--micro-batch-size", "4",
              "--eval-limit", "12", "--num-beams", "4"]
TIME_LIMIT = ["--time=3", "--signal=B:USR1@30"]  # the limit's signal comes 120-150 s into each run
DONE = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
        "DEADLINE")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_block(low: int, high: int, count: int) -> int:
    """A port in [low, high) whose next ``count`` ports are free now."""
    import random

    for _ in range(200):
        base = random.randrange(low, high - count)
        if all(_free(base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no {count} free ports in [{low}, {high})")


class Cluster:
    """The running local cluster: submit jobs, read their logs and their accounting records."""

    def __init__(self, env: dict[str, str], logs: Path):
        self.env, self.logs = env, logs
        self.jobs: dict[str, str] = {}  # name -> job id of the jobs submitted by _once

    def once(self, name: str, submit) -> str:
        """The job ``name``, submitted now by ``submit()`` unless it already was (jobs shared by tests)."""
        if name not in self.jobs:
            self.jobs[name] = submit()
        return self.jobs[name]

    def run(self, *command: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        done = subprocess.run(command, cwd=REPO, env={**self.env, **kwargs.pop("env", {})}, capture_output=True,
                              text=True, timeout=kwargs.pop("timeout", 60), **kwargs)
        assert not check or done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"
        return done

    def submit(self, script: str, *args: str, sbatch: tuple[str, ...] = (), env: dict[str, str] | None = None) -> str:
        done = self.run("sbatch", "--parsable", f"--output={self.logs}/%x-%j.out", f"--error={self.logs}/%x-%j.err",
                        *sbatch, script, *args, env=env or {})
        return done.stdout.strip().split(";")[0]

    def log(self, job: str) -> str:
        """The job's output and error files (appended to by every run of a requeued job)."""
        return "".join(p.read_text(errors="replace") for p in sorted(self.logs.glob(f"*-{job}.out"))
                       + sorted(self.logs.glob(f"*-{job}.err")))

    def records(self, job: str) -> list[dict[str, str]]:
        """The job's jobcomp records (`sacct -c`): one per requeue, then the final one."""
        done = self.run("sacct", "-c", "-j", job, "-n", "-P", "-o", "JobID,State,ExitCode,Start,End")
        fields = ["JobID", "State", "ExitCode", "Start", "End"]
        return [dict(zip(fields, line.split("|"))) for line in done.stdout.splitlines() if line.strip()]

    def running(self, job: str) -> bool:
        """True while the job has not ended; an AssertionError with its log once it has (stop waiting)."""
        records = self.records(job)
        if records and records[-1]["State"].split()[0] in DONE:
            raise AssertionError(f"job {job} ended ({records[-1]['State']}):\n{self.log(job)[-6000:]}")
        return True

    def wait(self, job: str, timeout: float, what: str = "") -> dict[str, str]:
        """The job's final record once it ended (a requeue is not an end)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            records = self.records(job)
            if records and records[-1]["State"].split()[0] in DONE:
                return records[-1]
            time.sleep(1)
        self.run("scancel", job, check=False)
        raise AssertionError(f"job {job} {what} did not end within {timeout} s:\n{self.log(job)[-6000:]}")


def _wait_for(predicate, timeout: float, what: str, log=lambda: ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}:\n{log()[-6000:]}")


def _steps(run: Path) -> list[int]:
    """Every step logged in RUN/train.log, in order, over all the runs of the job."""
    text = (run / "train.log").read_text() if (run / "train.log").is_file() else ""
    return [int(m) for m in re.findall(r"^step +(\d+) \|", text, flags=re.M)]


def _trained_since_resume(run: Path, resumes: int) -> bool:
    """The attempt after the ``resumes``-th resume has logged a step (0: the first attempt has)."""
    text = (run / "train.log").read_text() if (run / "train.log").is_file() else ""
    parts = re.split(r"^resumed from .*$", text, flags=re.M)
    return len(parts) == resumes + 1 and re.search(r"^step +\d+ \|", parts[-1], flags=re.M) is not None


def _metrics(path: Path) -> dict:
    return {k: v for k, v in json.loads(path.read_text()).items() if k != "generation"}


def _ranks(log: str) -> set[tuple[int, int, str]]:
    """(rank, node id, node name) from the line slurm/rank.sh prints for every rank it starts."""
    return {(int(r), int(n), name) for r, n, name in
            re.findall(r"peapod-scale slurm: rank (\d+)/2 \(local 0\) on node (\d+) \(([\d.]+), host", log)}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    needed = ("slurmctld", "slurmd", "sbatch", "munged", "mungekey")
    if os.geteuid() != 0 or not all(shutil.which(tool) for tool in needed):
        pytest.skip("a local SLURM cluster needs root and Debian's slurmctld, slurmd, slurm-client and munge "
                    "(.ci/run installs them)")
    # munged wants every folder above its socket open to all; pytest's tmp folders are private.
    folder = Path(tempfile.mkdtemp(prefix="peapod-slurm-", dir="/tmp"))
    first_port = _free_block(15001, 34000, 12)  # jobs rendezvous on 15000 + id: keep them off used ports
    env = {**os.environ, "PEAPOD_SLURM_PORT": str(_free_block(40000, 60000, 4)),
           "PEAPOD_SLURM_FIRST_JOB_ID": str(first_port - 15000), "PEAPOD_SLURM_GPUS": "16", "PEAPOD_SLURM_CPUS": "80"}
    started = subprocess.run(["bash", "scripts/slurm_local.sh", "start", str(folder)], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
    assert started.returncode == 0, started.stdout + started.stderr
    job_env = {**env, "SLURM_CONF": str(folder / "slurm.conf"), "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1",
               "PEAPOD_VENV": os.environ.get("VIRTUAL_ENV", str(REPO / ".venv"))}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        job_env.pop(name, None)
    yield Cluster(job_env, tmp_path_factory.mktemp("slurm-logs"))
    subprocess.run(["bash", "scripts/slurm_local.sh", "stop", str(folder)], cwd=REPO, env=env, timeout=60)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("slurm-raw")
    lines = [f"{u}\t{(u + k) % 30 + 1}\t4\t{100 * u + k}" for u in range(1, 41) for k in range(10)]
    (root / "u.data").write_text("\n".join(lines) + "\n")
    return root / "u.data"


PREPARE_ARGS = ["--source", "movielens", "--seed", "0", "--num-negatives", "9", "--neighbors", "0"]


@pytest.fixture(scope="module")
def dataset(raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("slurm-data") / "ds"
    done = subprocess.run([sys.executable, "-m", "peapod_scale.cli", "prepare", *PREPARE_ARGS, "--input", str(raw),
                           "--output", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """Run folders and outputs of the module's jobs."""
    return tmp_path_factory.mktemp("slurm-work")


def _plain_job(cluster: Cluster, dataset: Path, work: Path) -> str:
    return cluster.once("plain", lambda: cluster.submit("slurm/train.sh", *TRAIN_ARGS, env={
        "DATA": str(dataset), "RUN": str(work / "plain"), "LAUNCHER": "srun"}))


def _prepare_job(cluster: Cluster, raw: Path, work: Path) -> str:
    return cluster.once("prepare", lambda: cluster.submit("slurm/prepare.sh", *PREPARE_ARGS, "--input", str(raw),
                                                          "--output", str(work / "prepared")))


def _bad_argument_job(cluster: Cluster, dataset: Path, work: Path) -> str:
    return cluster.once("bad", lambda: cluster.submit("slurm/train.sh", "--max-steps", "many", env={
        "DATA": str(dataset), "RUN": str(work / "bad")}))


@pytest.fixture(scope="module")
def resumed(cluster, raw, dataset, work):
    """sbatch slurm/train.sh: preempted by hand in run 1, by its time limit in run 2, finished in run 3."""
    run = work / "resumed"
    job = cluster.submit("slurm/train.sh", *TRAIN_ARGS, sbatch=tuple(TIME_LIMIT),
                         env={"DATA": str(dataset), "RUN": str(run)})
    log = lambda: cluster.log(job)  # noqa: E731
    # run 1: as SLURM does before a time limit, signal the batch shell only
    _wait_for(lambda: cluster.running(job) and _trained_since_resume(run, 0), 400, "run 1 to train a step", log)
    cluster.run("scancel", "--signal=USR1", "--batch", job)
    # run 2: hold its ranks still (SIGSTOP to the steps, the batch shell keeps running: the job's time
    # still counts, unlike `scontrol suspend`) so it cannot finish before slurmctld's time-limit signal
    _wait_for(lambda: cluster.running(job) and _trained_since_resume(run, 1), 400, "run 2 to train a step", log)
    cluster.run("scancel", "--signal=STOP", job)
    for submit in (_plain_job, _bad_argument_job):  # the CPUs are idle meanwhile
        submit(cluster, dataset, work)
    _prepare_job(cluster, raw, work)
    _wait_for(lambda: cluster.running(job) and log().count("got SIGUSR1") == 2, 240,
              "the time limit's SIGUSR1 in run 2", log)
    cluster.run("scancel", "--signal=CONT", job)
    final = cluster.wait(job, 600, "(3 runs)")
    return {"job": job, "run": run, "final": final, "records": cluster.records(job), "log": log()}


@pytest.fixture(scope="module")
def plain(cluster, dataset, work):
    """The same training under LAUNCHER=srun: one srun task per rank, no torchrun, never interrupted."""
    run, job = work / "plain", _plain_job(cluster, dataset, work)
    final = cluster.wait(job, 600, "(LAUNCHER=srun)")
    return {"job": job, "run": run, "final": final, "records": cluster.records(job), "log": cluster.log(job)}


def test_train_sh_asks_for_gpus_cpus_a_time_limit_its_signal_and_requeue():
    header = re.findall(r"^#SBATCH (\S+)", (REPO / "slurm" / "train.sh").read_text(), flags=re.M)
    assert {"--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=8", "--cpus-per-task=32", "--time=24:00:00",
            "--signal=B:USR1@600", "--requeue", "--open-mode=append", "--output=%x-%j.out",
            "--error=%x-%j.err"} <= set(header)


def test_sbatch_trains_on_two_nodes(resumed):
    run, log = resumed["run"], resumed["log"]
    assert (resumed["final"]["State"], resumed["final"]["ExitCode"]) == ("COMPLETED", "0:0"), log[-6000:]
    assert "peapod-scale slurm: done:" in log
    assert log.count("2 node(s) x 1 rank(s)") == 3  # one start line per run
    # every run had one rank on each emulated node (same hostname: told apart by SLURM_NODEID / name)
    assert {(node, name) for _, node, name in _ranks(log)} == {(0, "127.0.0.1"), (1, "127.0.0.2")}
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    assert (run / "checkpoints" / f"step{MAX_STEPS}").is_dir() and (run / "model").is_dir()
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert {e.step for e in events.Scalars("loss/total")} == set(range(1, MAX_STEPS + 1))
    metrics = json.loads((run / "metrics_test.json").read_text())
    assert metrics["step"] == MAX_STEPS and set(metrics) >= {"sequential", "topn"}


def test_preempted_job_checkpoints_requeues_and_resumes_every_step_once(resumed):
    run, log, records = resumed["run"], resumed["log"], resumed["records"]
    print(f"sacct -c -j {resumed['job']}:", *("|".join(r.values()) for r in records), sep="\n")
    stops = [int(s) for s in re.findall(r"preempted at step (\d+) \(checkpoints/step\1, SIGUSR1\): requeueing job "
                                        rf"{resumed['job']} \(restart [12]\)", log)]
    assert len(stops) == 2 and 0 < stops[0] < stops[1] < MAX_STEPS, log[-6000:]
    assert [r["State"] for r in records] == ["PENDING", "PENDING", "COMPLETED"]  # two requeues, one end
    for restart in (0, 1, 2):
        assert f"(restart {restart}) at " in log  # SLURM_RESTART_COUNT seen by each run
    resumed_at = [int(s) for s in re.findall(r"^resumed from .*/step(\d+) at step \1$",
                                             (run / "train.log").read_text(), flags=re.M)]
    assert resumed_at == stops
    assert _steps(run) == list(range(1, MAX_STEPS + 1))  # no step logged twice, none skipped
    assert not (run / "preempted.json").exists()
    # torchrun forwarded the USR1 (--signals-to-handle): had it died of it, srun would say so
    assert "User defined signal 1" not in log


def test_time_limit_signal_requeues_the_job_which_then_finishes(resumed):
    log = resumed["log"]
    # the test sent one SIGUSR1 (run 1); the second came from slurmctld, 30 s before the 3 min limit
    signals = re.findall(r"got SIGUSR1 at", log)
    assert len(signals) == 2
    second_run = log.split("(restart 1) at ", 1)[1].split("(restart 2) at ", 1)[0]
    assert "got SIGUSR1" in second_run and "requeueing job" in second_run
    assert "TIMEOUT" not in {r["State"] for r in resumed["records"]}  # requeued before the limit, not killed
    assert "DUE TO TIME LIMIT" not in log


def test_plain_srun_trains_the_same_model_as_torchrun(resumed, plain):
    assert (plain["final"]["State"], plain["final"]["ExitCode"]) == ("COMPLETED", "0:0"), plain["log"][-6000:]
    assert "launcher srun" in plain["log"] and len(plain["records"]) == 1
    assert "granted 8 GPU(s) and 32 CPU(s) per node" in plain["log"]  # train.sh's own #SBATCH request
    assert {(rank, node) for rank, node, _ in _ranks(plain["log"])} == {(0, 0), (1, 1)}  # SLURM_PROCID per node
    assert _steps(plain["run"]) == list(range(1, MAX_STEPS + 1))
    torchrun_metrics = json.loads((resumed["run"] / "metrics_test.json").read_text())
    assert json.loads((plain["run"] / "metrics_test.json").read_text()) == torchrun_metrics


def test_evaluate_sh_matches_a_local_evaluate(cluster, dataset, resumed, tmp_path):
    options = ["--split", "test", "--eval-limit", "12", "--num-beams", "4"]
    job = cluster.submit("slurm/evaluate.sh", *options, "--output", str(tmp_path / "slurm.json"),
                         sbatch=("--nodes=2",), env={"DATA": str(dataset), "RUN": str(resumed["run"])})
    final = cluster.wait(job, 400, "(evaluate.sh)")
    log = cluster.log(job)
    assert (final["State"], final["ExitCode"]) == ("COMPLETED", "0:0"), log[-6000:]
    assert {(node, name) for _, node, name in _ranks(log)} == {(0, "127.0.0.1"), (1, "127.0.0.2")}
    local = subprocess.run([sys.executable, "-m", "peapod_scale.cli", "evaluate", "--run-dir", str(resumed["run"]),
                            "--data", str(dataset), *options, "--output", str(tmp_path / "local.json")],
                           cwd=REPO, capture_output=True, text=True, timeout=300,
                           env={**cluster.env, "DS_ACCELERATOR": "cpu"})
    assert local.returncode == 0, local.stderr[-4000:]
    # all but "generation" (rows per generate call: 6 per rank there, 12 here)
    assert _metrics(tmp_path / "slurm.json") == _metrics(tmp_path / "local.json")


def test_prepare_sh_writes_the_same_dataset_as_prepare(cluster, raw, dataset, work):
    out, job = work / "prepared", _prepare_job(cluster, raw, work)
    final = cluster.wait(job, 300, "(prepare.sh)")
    assert (final["State"], final["ExitCode"]) == ("COMPLETED", "0:0"), cluster.log(job)[-4000:]
    files = sorted(p.relative_to(dataset) for p in dataset.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    for name in files:
        assert (out / name).read_bytes() == (dataset / name).read_bytes(), name


def test_bad_argument_fails_the_job_with_one_line_and_no_requeue(cluster, dataset, work):
    job = _bad_argument_job(cluster, dataset, work)
    final = cluster.wait(job, 120, "(bad argument)")
    log = cluster.log(job)
    assert final["State"] == "FAILED" and final["ExitCode"] == "2:0", log
    assert re.search(r"^peapod-scale train: error: argument --max-steps\S*: invalid int value: 'many'$", log, flags=re.M)
    assert log.rstrip().splitlines()[-1].startswith("peapod-scale slurm: error: bad arguments")
    assert len(cluster.records(job)) == 1 and "rank 0/" not in log  # no rank started, not requeued


def _rank_pid(job: str, rank: int) -> int | None:
    """The pid of the trainer process of ``rank`` in ``job`` (not one of its loader workers)."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            environ = dict(e.split("=", 1) for e in (proc / "environ").read_text().split("\0") if "=" in e)
            cmdline = (proc / "cmdline").read_text()
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if environ.get("SLURM_JOB_ID") == job and environ.get("RANK") == str(rank) and "peapod_scale.train" in cmdline:
            found[int(proc.name)] = ppid
    mains = [pid for pid, ppid in found.items() if ppid not in found]
    return mains[0] if len(mains) == 1 else None


def test_a_rank_killed_with_sigkill_takes_the_job_down(cluster, dataset, tmp_path):
    """Killed as soon as both ranks exist, while rank 0 still starts up: without srun's --kill-on-bad-exit
    it would wait for rank 1 at the process group's rendezvous (minutes) instead of failing."""
    run = tmp_path / "run"
    job = cluster.submit("slurm/train.sh", "--max-steps", "100000", "--micro-batch-size", "4",
                         env={"DATA": str(dataset), "RUN": str(run)})
    pids = _wait_for(lambda: cluster.running(job) and all(_rank_pid(job, r) for r in (0, 1))
                     and [_rank_pid(job, r) for r in (0, 1)], 300,
                     "both ranks' processes", lambda: cluster.log(job))
    os.kill(pids[1], signal.SIGKILL)
    killed = time.monotonic()
    final = cluster.wait(job, 180, "(a rank killed)")
    assert time.monotonic() - killed < 60, "the job outlived its killed rank by a minute"
    log = cluster.log(job)
    assert final["State"] == "FAILED" and final["ExitCode"] != "0:0", log[-4000:]
    assert "peapod-scale slurm: error: training failed" in log.rstrip().splitlines()[-1]
    assert len(cluster.records(job)) == 1 and not (run / "preempted.json").exists()
