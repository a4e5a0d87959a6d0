"""A DeepSpeed checkpoint is scanned before DeepSpeed unpickles it: plain records pass, code is refused."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from peapod_scale.inference.export import export
from peapod_scale.training.checkpoint import verify_checkpoint

from helpers import REPO, synthetic_ratings, write_udata


class _RunsCode:
    """Unpickling this calls os.system: what a hostile checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A real 1-rank ZeRO-2 run (2 steps) with its DeepSpeed checkpoint."""
    from peapod_scale.data.prepare.dataset import prepare_dataset

    root = tmp_path_factory.mktemp("ckpt")
    prepare_dataset("movielens", str(write_udata(root, synthetic_ratings(users=12, items=40))), str(root / "data"),
                    num_negatives=9, neighbors=0)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "peapod_scale/train.py", "--data", str(root / "data"), "--output",
                           str(root / "run"), "--max-steps", "2", "--micro-batch-size", "4", "--eval-split", "none"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "run"


def test_deepspeed_checkpoints_pass(run_dir):
    verify_checkpoint(run_dir / "checkpoints" / "step2")  # model and optimizer states: tensors and DeepSpeed records


def test_a_checkpoint_that_would_run_code_is_refused_unexecuted(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    marker = tmp_path / "executed"
    optim = next((run / "checkpoints" / "step2").glob("*optim_states.pt"))
    state = torch.load(optim, weights_only=False)  # our own file, written by the fixture's run
    state["payload"] = _RunsCode(marker)
    torch.save(state, optim)
    with pytest.raises(ValueError, match=f"{optim.name}: refusing to load it: unpickling would import .*system"):
        verify_checkpoint(optim.parent)
    with pytest.raises(ValueError, match="refusing to load"):
        export(run, tmp_path / "exported", log=lambda message: None)
    assert not marker.exists() and not (tmp_path / "exported").exists()


def test_resume_refuses_it_too(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    model_states = next((run / "checkpoints" / "step2").glob("*model_states.pt"))
    state = torch.load(model_states, weights_only=False)
    state["payload"] = _RunsCode(tmp_path / "executed")
    torch.save(state, model_states)
    config = json.loads((run / "config.json").read_text())["train"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "peapod_scale/train.py", "--data", config["data"], "--output", str(run),
                           "--max-steps", "4", "--micro-batch-size", "4", "--eval-split", "none",
                           "--resume", str(run / "checkpoints")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode != 0 and "refusing to load it" in done.stderr
    assert not (tmp_path / "executed").exists()


def test_missing_or_foreign_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no DeepSpeed checkpoint files"):
        verify_checkpoint(tmp_path)
    (tmp_path / "mp_rank_00_model_states.pt").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="mp_rank_00_model_states.pt: not a readable torch checkpoint"):
        verify_checkpoint(tmp_path)
