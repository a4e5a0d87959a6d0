"""--resume: a run stopped after 3 steps and resumed continues the loss curve of an uninterrupted run exactly."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from peapod_scale.data.prepare import prepare_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume-data")
    lines = [f"{u}\t{(u * 7 + k) % 30 + 1}\t4\t{100 * u + k}" for u in range(1, 31) for k in range(9)]
    (root / "u.data").write_text("\n".join(lines) + "\n")
    prepare_dataset("movielens", str(root / "u.data"), str(root / "ds"), seed=0, num_negatives=9, num_neighbors=0)
    return root / "ds"


def _train(dataset: Path, run_dir: Path, max_steps: int, *extra: str) -> list[float]:
    # warm-up longer than the run: the learning rate of step k does not depend on --max-steps
    command = [sys.executable, "peapod_scale/train.py", "--data", str(dataset), "--output", str(run_dir),
               "--deepspeed", "ds_configs/z2.json", "--max-steps", str(max_steps), "--log-every", "1",
               "--micro-batch-size", "4", "--grad-accum", "2", "--warmup-steps", "10", "--lr", "3e-3",
               "--topn-candidates", "5", "--eval-split", "none", "--num-workers", "2", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_PORT"):
        env.pop(name, None)
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [event.value for event in events.Scalars("loss/total")]


def test_train_3_then_resume_3_continues_the_losses_of_6_steps(dataset, tmp_path):
    uninterrupted = _train(dataset, tmp_path / "six", 6)
    first = _train(dataset, tmp_path / "three", 3)
    state = torch.load(tmp_path / "three" / "checkpoints" / "step3" / "mp_rank_00_model_states.pt", weights_only=False)
    assert state["stream"]["micro_batches"] == 6 and state["stream"]["task_weights"] == {"sequential": 1.0, "topn": 1.0}
    resumed = _train(dataset, tmp_path / "resumed", 6, "--resume", str(tmp_path / "three" / "checkpoints"))
    assert len(uninterrupted) == 6 and len(resumed) == 3
    assert first == pytest.approx(uninterrupted[:3], rel=1e-6)
    assert resumed == pytest.approx(uninterrupted[3:], rel=1e-6)
    assert uninterrupted[3:] != pytest.approx(_train(dataset, tmp_path / "fresh", 3), rel=1e-6)  # not a restart


def test_resume_from_a_folder_without_a_checkpoint_is_explained(dataset, tmp_path):
    command = [sys.executable, "peapod_scale/train.py", "--data", str(dataset), "--output", str(tmp_path / "run"),
               "--max-steps", "1", "--eval-split", "none", "--resume", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0 and f"--resume {tmp_path}: not a checkpoints folder" in result.stderr
