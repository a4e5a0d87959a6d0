"""`sbatch slurm/train.sh` on a real two-node SLURM cluster (slurmctld + two slurmd on loopback)."""

import json
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.distributed


def _free_port_block(count: int) -> int:
    """A base port whose next ``count`` ports are free now."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count < 65535 and all(_is_free(base + i) for i in range(count)):
            return base
    raise RuntimeError("no block of free ports")


def _is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0 and not shutil.which("slurmctld"):
        pytest.skip("needs root (or Debian's slurmctld, slurmd, munge installed) to run a local SLURM cluster")
    # munged wants every folder above its socket open to all; pytest's tmp folders are private.
    folder = Path(tempfile.mkdtemp(prefix="peapod-slurm-", dir="/tmp"))
    env = {**os.environ, "PEAPOD_SLURM_PORT": str(_free_port_block(4))}
    started = subprocess.run(["bash", "scripts/slurm_local.sh", "start", str(folder)], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
    assert started.returncode == 0, started.stderr
    yield {**env, "SLURM_CONF": str(folder / "slurm.conf")}
    subprocess.run(["bash", "scripts/slurm_local.sh", "stop", str(folder)], cwd=REPO, env=env, timeout=60)
    shutil.rmtree(folder, ignore_errors=True)


def test_sbatch_trains_on_two_nodes(cluster, tmp_path):
    from peapod_scale.data.prepare import prepare_dataset

    lines = [f"{u}\t{(u + k) % 30 + 1}\t4\t{100 * u + k}" for u in range(1, 41) for k in range(10)]
    (tmp_path / "u.data").write_text("\n".join(lines) + "\n")
    prepare_dataset("movielens", str(tmp_path / "u.data"), str(tmp_path / "ds"), seed=0, num_negatives=9)
    run_dir = tmp_path / "run"
    env = {**cluster, "DATA": str(tmp_path / "ds"), "RUN": str(run_dir), "OMP_NUM_THREADS": "1",
           "RDZV_PORT": str(_free_port_block(1)), "PEAPOD_VENV": os.environ.get("VIRTUAL_ENV", str(REPO / ".venv"))}
    job = subprocess.run(["sbatch", "--wait", f"--output={tmp_path}/job-%j.out", "slurm/train.sh",
                          "--max-steps", "6", "--log-every", "3", "--micro-batch-size", "4", "--eval-split", "none"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = "".join(p.read_text() for p in tmp_path.glob("job-*.out"))
    assert job.returncode == 0, job.stderr + log[-4000:]
    assert "2 node(s) x 1 rank(s)" in log
    config = json.loads((run_dir / "config.json").read_text())
    assert config["world_size"] == 2  # one rank on each emulated node, joined by torchrun's rendezvous
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss/total")] == [3, 6]
