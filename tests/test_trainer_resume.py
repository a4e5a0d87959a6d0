"""--resume: a run stopped after 3 steps and resumed continues the loss curve of an uninterrupted run exactly.

The runs train all three tasks with --task-weights (reviews with and without text), so the stream
state being restored covers both row sources.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from peapod_scale.data.prepare import prepare_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume-data")
    reviews = [{"reviewerID": f"U{u}", "asin": f"a{(u * 7 + k) % 30}", "unixReviewTime": 100 * u + k,
                "reviewText": "" if (u + k) % 3 == 0 else f"Item {k} is a fine choice for me.", "summary": ""}
               for u in range(30) for k in range(9)]
    (root / "reviews.json").write_text("".join(json.dumps(r) + "\n" for r in reviews))
    prepare_dataset("amazon-reviews", str(root / "reviews.json"), str(root / "ds"), seed=0, num_negatives=9,
                    num_neighbors=0)
    return root / "ds"


def _train(dataset: Path, run_dir: Path, max_steps: int, *extra: str) -> dict[str, list[float]]:
    # warm-up longer than the run: the learning rate of step k does not depend on --max-steps
    command = [sys.executable, "peapod_scale/train.py", "--data", str(dataset), "--output", str(run_dir),
               "--deepspeed", "ds_configs/z2.json", "--max-steps", str(max_steps), "--log-every", "1",
               "--micro-batch-size", "4", "--grad-accum", "2", "--warmup-steps", "10", "--lr", "3e-3",
               "--topn-candidates", "5", "--eval-split", "none", "--num-workers", "2",
               "--task-weights", "sequential=1,topn=1,explanation=0.5", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_PORT"):
        env.pop(name, None)
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag: [event.value for event in events.Scalars(tag)] for tag in events.Tags()["scalars"] if "loss" in tag}


def test_train_3_then_resume_3_continues_the_losses_of_6_steps(dataset, tmp_path):
    six = _train(dataset, tmp_path / "six", 6)
    assert {"loss/sequential", "loss/topn", "loss/explanation"} <= set(six)  # every task trained
    uninterrupted = six["loss/total"]
    first = _train(dataset, tmp_path / "three", 3)["loss/total"]
    state = json.loads((tmp_path / "three" / "checkpoints" / "step3" / "peapod_checkpoint.json").read_text())
    assert state["stream"]["micro_batches"] == 6 and set(state["stream"]["sources"]) == {"train", "train_explanation"}
    resumed = _train(dataset, tmp_path / "resumed", 6, "--resume", str(tmp_path / "three" / "checkpoints"))["loss/total"]
    assert len(uninterrupted) == 6 and len(resumed) == 3
    assert first == pytest.approx(uninterrupted[:3], rel=1e-6)
    assert resumed == pytest.approx(uninterrupted[3:], rel=1e-6)
    assert uninterrupted[3:] != pytest.approx(_train(dataset, tmp_path / "fresh", 3)["loss/total"], rel=1e-6)  # no restart


def test_resume_from_a_folder_without_a_checkpoint_is_explained(dataset, tmp_path):
    command = [sys.executable, "peapod_scale/train.py", "--data", str(dataset), "--output", str(tmp_path / "run"),
               "--max-steps", "1", "--eval-split", "none", "--resume", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0 and f"--resume {tmp_path}: not a checkpoints folder" in result.stderr
