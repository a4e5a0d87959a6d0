"""Process-group rules that must hold on GPU clusters, checked on CPU with real ranks."""

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from peapod_scale.distributed import ranks as distributed

# Two real ranks whose world group takes CUDA tensors only, as NCCL does: a backend registered with
# devices=["cuda"] (gloo underneath). A CPU tensor handed to it fails exactly as on a GPU node.
RANK = textwrap.dedent("""
    import json, os, sys, types
    import torch, torch.distributed as dist
    from torch._C._distributed_c10d import ProcessGroupGloo
    from peapod_scale.config.train import TrainConfig
    from peapod_scale.distributed.ranks import HostCollectives
    from peapod_scale.training.metrics import StepMeter
    from peapod_scale.training.trainer import Trainer

    dist.Backend.register_backend("cudaonly", lambda store, rank, size, timeout: ProcessGroupGloo(store, rank, size, timeout),
                                  devices=["cuda"])
    rank = int(sys.argv[1])
    dist.init_process_group("cudaonly", rank=rank, world_size=2, init_method="tcp://127.0.0.1:" + sys.argv[2])
    try:
        dist.all_reduce(torch.ones(1))
        raw = "ok"
    except Exception as error:  # what every rank hit at step 20 before HostCollectives
        raw = str(error)
    collectives = HostCollectives.for_world(2)
    cfg = TrainConfig(data="d", output="o", tasks="sequential,topn")
    losses = Trainer._reduce_task_losses(types.SimpleNamespace(cfg=cfg, collectives=collectives),
                                         {"sequential": [torch.tensor(2.0 * (rank + 1)), 2], "topn": [0.0, 0]})
    meter = StepMeter()
    meter.samples, meter.steps = 10.0 * (rank + 1), 1
    summary = meter.summary(collectives)
    gathered = collectives.gather_objects({"rank": rank})
    collectives.barrier()
    print(json.dumps({"raw": raw, "losses": losses, "samples": summary["throughput/samples_per_s"] > 0,
                      "gathered": gathered}))
    dist.destroy_process_group()
""")


def test_host_reductions_work_on_a_group_that_takes_cuda_tensors_only():
    port = str(distributed._free_port())
    procs = [subprocess.Popen([sys.executable, "-c", RANK, str(rank), port], stdout=subprocess.PIPE, text=True)
             for rank in range(2)]
    outs = [json.loads(p.communicate(timeout=240)[0].strip().splitlines()[-1]) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    for out in outs:
        assert "No backend type associated with device type cpu" in out["raw"]  # the setup reproduces the crash
        assert out["losses"] == {"sequential": pytest.approx((2.0 + 4.0) / 4)}  # sums over ranks, topn had no batch
        assert out["samples"]
        assert out["gathered"] == [{"rank": 0}, {"rank": 1}]


def test_srun_without_a_launcher_gets_a_rendezvous_from_slurm_variables(monkeypatch):
    monkeypatch.setattr(os, "environ", dict(os.environ))  # discover() writes the variables it derives
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")  # no scontrol: the node list is read by the package itself
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "2(x2)")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[07-08]")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    info = distributed.discover()
    assert (info.rank, info.world_size, info.local_rank, info.local_world_size) == (3, 4, 1, 2)
    assert os.environ["MASTER_ADDR"] == "gpu07" and os.environ["MASTER_PORT"] == str(distributed.job_port("4242"))
    assert distributed.job_port("4242") != distributed.job_port("4243")


@pytest.mark.parametrize("nodelist, first", [("gpu[03-05,07],cpu1", "gpu03"), ("127.0.0.1,127.0.0.2", "127.0.0.1"),
                                             ("node7", "node7"), ("a-b[10-12]", "a-b10")])
def test_first_host_of_a_node_list(monkeypatch, nodelist, first):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert distributed.first_host(nodelist) == first


# Two ranks as the deepspeed launcher starts them on one CPU node (LOCAL_SIZE = world size): DeepSpeed's
# CPU backend maps a shared-memory segment per rank. After setup, no segment of this job is left in
# /dev/shm, and DeepSpeed's shared-memory all-reduce still works on the mappings.
SHM_RANK = textwrap.dedent("""
    import json, os, sys
    import torch
    import deepspeed.comm as ds_comm
    from peapod_scale.distributed import ranks as distributed

    info, collectives = distributed.setup()
    collectives.barrier()
    prefix = os.path.basename(distributed.cpu_allreduce_buffer(0))[:-1]
    left = sorted(n for n in os.listdir(distributed.SHM_FOLDER) if n.startswith(prefix))
    summed = torch.full((1 << 20,), float(info.rank + 1))
    ds_comm.inference_all_reduce(summed)
    print(json.dumps({"left": left, "sum": sorted(set(summed.tolist()))}))
""")


@pytest.mark.skipif(not os.path.isdir(distributed.SHM_FOLDER), reason="POSIX shared memory in /dev/shm is Linux's")
def test_no_shared_memory_segment_outlives_setup_on_cpu_ranks():
    port = str(distributed._free_port())
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": "2", "LOCAL_SIZE": "2",
           "LOCAL_WORLD_SIZE": "2", "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", SHM_RANK], stdout=subprocess.PIPE, text=True,
                              env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}) for rank in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    for out in outs:
        result = json.loads(out.strip().splitlines()[-1])
        assert result["left"] == []
        assert result["sum"] == [3.0]  # 1 + 2 through the mapped segments
    assert not [n for n in os.listdir(distributed.SHM_FOLDER) if n.endswith(f"_{port}_0") or n.endswith(f"_{port}_1")]


def test_a_build_lock_left_by_a_killed_build_is_reported_before_start_up_waits_on_it(tmp_path, monkeypatch):
    """A real start-up: DeepSpeed's CPU backend JIT-loads its extension and waits on the lock torch left."""
    from torch.utils.cpp_extension import _get_build_directory

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))
    assert distributed.warn_on_build_lock(distributed.CPU_COMM_EXTENSION) is None  # no lock: nothing said
    lock = os.path.join(_get_build_directory(distributed.CPU_COMM_EXTENSION, False), "lock")
    open(lock, "w").close()
    os.utime(lock, (0, os.path.getmtime(lock) - 3600))
    code = "from peapod_scale.tools.log import setup_cli_logging; setup_cli_logging(); " \
           "from peapod_scale.distributed import ranks; ranks.setup(); print('started', flush=True)"
    child = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"})
    watchdog = threading.Timer(180, child.kill)  # without the warning the child would wait forever
    watchdog.start()
    try:
        warned = next((line for line in child.stderr if line.startswith("warning: ")), None)
        assert warned is not None and lock in warned and "(60 min old)" in warned and "delete it" in warned
        time.sleep(3)
        assert child.poll() is None  # still waiting on the lock: the warning is the last thing the user sees
    finally:
        watchdog.cancel()
        child.kill()
        child.wait()
