"""Rank discovery and process-group setup that behave the same under deepspeed, torchrun and srun."""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list ('gpu[03-05,07],cpu1' -> 'gpu03'); scontrol when present."""

    if shutil.which("scontrol"):
        done = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.split()[0]
    head = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if head is None:
        raise ValueError(f"SLURM_JOB_NODELIST={nodelist!r}: cannot read its first host")
    prefix, ranges = head.groups()
    return prefix if ranges is None else prefix + ranges.split(",")[0].split("-")[0]


def job_port(job_id: str) -> int:
    """A rendezvous port derived from the job id, so that two jobs sharing a node do not collide."""
    return 15000 + int(job_id or 0) % 20000


def discover(local_rank_arg: int = -1) -> DistInfo:
    """Ranks from the launcher's environment; SLURM's variables when srun started us directly."""
    env = os.environ
    if "RANK" not in env and "SLURM_PROCID" in env:
        env["RANK"], env["WORLD_SIZE"] = env["SLURM_PROCID"], env["SLURM_NTASKS"]
        env.setdefault("LOCAL_RANK", env.get("SLURM_LOCALID", "0"))
        env.setdefault("LOCAL_WORLD_SIZE", env.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0])
        env.setdefault("MASTER_ADDR", first_host(env.get("SLURM_JOB_NODELIST", "127.0.0.1")))
        env.setdefault("MASTER_PORT", str(job_port(env.get("SLURM_JOB_ID", "0"))))
    if "RANK" not in env:  # a plain `python train.py`: one rank
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", str(_free_port()))
    local_rank = int(env.get("LOCAL_RANK", local_rank_arg if local_rank_arg >= 0 else 0))
    world_size = int(env["WORLD_SIZE"])
    local_world = int(env.get("LOCAL_WORLD_SIZE", env.get("DS_LOCAL_WORLD_SIZE", world_size)))
    return DistInfo(int(env["RANK"]), world_size, local_rank, local_world)


def use_cuda() -> bool:
    """The one rule for whether this process computes on CUDA: a GPU is visible and DS_ACCELERATOR is not 'cpu'.

    Tests (and CPU-only jobs on GPU hosts) set DS_ACCELERATOR=cpu: DeepSpeed then runs on the CPU, so the
    process group, the precision and the model's device must all follow it, not torch.cuda.is_available().
    """
    return torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "").lower() not in ("cpu",)


def process_group_backend() -> str:
    return "nccl" if use_cuda() else "gloo"


def setup(local_rank_arg: int = -1) -> tuple[DistInfo, "HostCollectives"]:
    """Pick the accelerator, cap CPU threads per rank, start the process group (NCCL or gloo)."""
    if not use_cuda():
        os.environ["DS_ACCELERATOR"] = "cpu"
    info = discover(local_rank_arg)
    if "OMP_NUM_THREADS" not in os.environ:  # the deepspeed launcher leaves it unset: ranks would fight
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, info.local_world_size)))
    if use_cuda():
        torch.cuda.set_device(info.local_rank)
    # lazy: deepspeed is needed to train and to read ZeRO checkpoints, not to evaluate or recommend
    import deepspeed

    if not use_cuda() and info.local_rank == 0:
        warn_on_build_lock(CPU_COMM_EXTENSION)
    deepspeed.init_distributed(dist_backend=process_group_backend())
    if not use_cuda():
        release_cpu_allreduce_buffer(info.rank, info.world_size)
    return info, HostCollectives.for_world(info.world_size)


SHM_FOLDER = "/dev/shm"
CPU_COMM_EXTENSION = "deepspeed_shm_comm"  # what DeepSpeed's CPU backend JIT-builds when its process group starts


def warn_on_build_lock(extension: str) -> str | None:
    """Say so when a torch extension's build lock exists: a build killed mid-way leaves it behind.

    DeepSpeed JIT-builds ``extension`` through torch.utils.cpp_extension, whose lock file makes every
    other process wait, silently and forever, until it is gone. A job preempted or killed during the
    minute that build takes (the first run in a fresh environment) leaves the lock, and every later
    job then hangs at start-up without a word; this line is the one the user gets to see.
    """
    try:
        # lazy: cpp_extension imports setuptools (~0.3 s), needed only on this CPU-rank path
        from torch.utils.cpp_extension import _get_build_directory

        lock = os.path.join(_get_build_directory(extension, False), "lock")
        age = time.time() - os.path.getmtime(lock)
    except (ImportError, OSError):
        return None
    message = (f"warning: {lock} exists ({age / 60:.0f} min old): start-up waits until it is gone; if no build "
               f"of {extension} is running (a killed one leaves it), delete it")
    logging.getLogger(__name__).warning(message)
    return message


def cpu_allreduce_buffer(rank: int) -> str:
    """The path of ``rank``'s shared-memory segment that DeepSpeed's CPU backend creates for this job."""
    env = os.environ
    name = f"deepspeed_allreduce_buffer_{os.getuid()}_{env.get('MASTER_ADDR', '')}_{env.get('MASTER_PORT', '')}_{rank}"
    return os.path.join(SHM_FOLDER, name)


def release_cpu_allreduce_buffer(rank: int, world_size: int) -> None:
    """Unlink this rank's /dev/shm segment of DeepSpeed's CPU backend once every rank has mapped it.

    When all ranks share a node (the deepspeed launcher sets LOCAL_SIZE), DeepSpeed's CPU accelerator
    gives each rank a ~66 MB shared-memory segment for its low-latency all-reduce and never unlinks it:
    every CPU run leaked 2 x 66 MB of RAM into /dev/shm, killed or not (313 segments, 21 GB, on the
    machine that found it), and a relaunch on the same port (SLURM's job port) could map a dead job's
    segment. ``init_distributed`` returns only after this rank has mapped every peer's segment; after
    a barrier all have, so the names can go: the mappings stay valid until the processes exit, and the
    kernel frees the memory then, even after ``kill -9``.
    """
    if world_size > 1:  # on every rank, segment or not: a barrier that only some ranks take would hang
        torch.distributed.barrier()
    try:
        os.unlink(cpu_allreduce_buffer(rank))
    except FileNotFoundError:
        pass


class HostCollectives:
    """Every collective of the package on host values (metrics, losses, flags), in one place.

    NCCL takes CUDA tensors only ("No backend type associated with device type cpu"), so host values are
    reduced over a gloo group made once beside the main group whenever the main backend cannot take CPU
    tensors. Chosen over moving them to the GPU because these values live on the host anyway: a GPU round
    trip would cost a copy and a host-device sync each time; chosen over a "cpu:gloo,cuda:nccl" world
    group so that the main group stays the plain 'nccl' one DeepSpeed is written and tested against.
    """

    def __init__(self, world_size: int, group=None):
        self.world_size, self.group = world_size, group

    @classmethod
    def for_world(cls, world_size: int) -> "HostCollectives":
        """Call on every rank after the process group exists (new_group is itself a collective)."""
        if world_size <= 1 or not torch.distributed.is_initialized():
            return cls(world_size)
        backend = str(torch.distributed.get_backend())
        takes_cpu = "cpu" in torch.distributed.Backend.backend_capability.get(backend, ["cpu"])
        return cls(world_size, None if takes_cpu else torch.distributed.new_group(backend="gloo"))

    def _reduce(self, values: list[float], op) -> list[float]:
        packed = torch.tensor(values, dtype=torch.float64)
        if self.world_size > 1:
            torch.distributed.all_reduce(packed, op=op, group=self.group)
        return packed.tolist()

    def sum(self, values: list[float]) -> list[float]:
        return self._reduce(values, torch.distributed.ReduceOp.SUM)

    def max(self, values: list[float]) -> list[float]:
        return self._reduce(values, torch.distributed.ReduceOp.MAX)

    def gather_objects(self, obj) -> list:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if self.world_size <= 1:
            return [obj]
        gathered = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, obj, group=self.group)
        return gathered

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier(group=self.group)


def setup_inference() -> DistInfo:
    """For commands without DeepSpeed (evaluate): join the launcher's process group if there is one.

    Under torchrun / the deepspeed launcher / srun with more than one rank: a gloo (CPU) or NCCL group;
    a plain process: rank 0 of 1 and no group.
    """
    env = os.environ
    if "RANK" not in env and "SLURM_PROCID" not in env:
        return DistInfo(0, 1, 0, 1)
    info = discover()
    if info.world_size > 1 and not torch.distributed.is_initialized():
        if use_cuda():
            torch.cuda.set_device(info.local_rank)
        if "OMP_NUM_THREADS" not in env:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, info.local_world_size)))
        torch.distributed.init_process_group(process_group_backend(),
                                             rank=info.rank, world_size=info.world_size)
    return info
