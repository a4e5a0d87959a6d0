"""Rank discovery and process-group setup that behave the same under deepspeed, torchrun and srun."""

from __future__ import annotations

import os
import socket
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


def discover(local_rank_arg: int = -1) -> DistInfo:
    """Ranks from the launcher's environment; SLURM's variables when srun started us directly."""
    env = os.environ
    if "RANK" not in env and "SLURM_PROCID" in env:
        env["RANK"], env["WORLD_SIZE"] = env["SLURM_PROCID"], env["SLURM_NTASKS"]
        env.setdefault("LOCAL_RANK", env.get("SLURM_LOCALID", "0"))
        env.setdefault("LOCAL_WORLD_SIZE", env.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0])
    if "RANK" not in env:  # a plain `python train.py`: one rank
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", str(_free_port()))
    local_rank = int(env.get("LOCAL_RANK", local_rank_arg if local_rank_arg >= 0 else 0))
    world_size = int(env["WORLD_SIZE"])
    local_world = int(env.get("LOCAL_WORLD_SIZE", env.get("DS_LOCAL_WORLD_SIZE", world_size)))
    return DistInfo(int(env["RANK"]), world_size, local_rank, local_world)


def setup(local_rank_arg: int = -1) -> DistInfo:
    """Pick the accelerator, cap CPU threads per rank, and start the process group (NCCL or gloo)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    info = discover(local_rank_arg)
    if "OMP_NUM_THREADS" not in os.environ:  # the deepspeed launcher leaves it unset: ranks would fight
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, info.local_world_size)))
    if torch.cuda.is_available():
        torch.cuda.set_device(info.local_rank)
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    return info


def progress_interval() -> float:
    """Seconds between progress-bar refreshes: live on a terminal, sparse in a log file."""
    import sys

    return 0.5 if sys.stderr.isatty() else 30.0


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
        if torch.cuda.is_available():
            torch.cuda.set_device(info.local_rank)
        if "OMP_NUM_THREADS" not in env:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, info.local_world_size)))
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                                             rank=info.rank, world_size=info.world_size)
    return info
