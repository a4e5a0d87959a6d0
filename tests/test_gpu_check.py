"""benchmarks/gpu_check.sh: it parses, and without a GPU it says so and exits cleanly, writing nothing.

The script's real run needs a CUDA GPU (its CPU dry run, GPU_CHECK_DRY_RUN=1, takes minutes: not here).
"""

import os
import subprocess

from helpers import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def test_gpu_check_parses():
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_gpu_check_without_a_gpu_says_so_and_writes_nothing(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OUT": str(tmp_path / "out")}
    env.pop("GPU_CHECK_DRY_RUN", None)
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no CUDA GPU visible" in done.stdout, done.stdout + done.stderr
    assert not (tmp_path / "out").exists()
