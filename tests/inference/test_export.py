"""A pretrained backbone (a local save_pretrained folder) trained in bf16 at ZeRO-3 on 2 real ranks, then
exported, evaluated and served: the path of a first GPU user, on CPU (DeepSpeed's CPU accelerator trains bf16)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import T5TokenizerFast

from peapod_scale.data.prepare.dataset import prepare_dataset
from peapod_scale.distributed.ranks import _free_port
from peapod_scale.inference.load import load_model
from peapod_scale.model.presets import new_backbone, preset_config

from helpers import REPO

T5_VOCAB = REPO.parent / "shared" / "data" / "t5" / "tokenizer.json"
pytestmark = pytest.mark.distributed


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false"}


def _run(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def bf16_zero3_run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pretrained")
    lines = [f"{u}\t{(u + k) % 20 + 1}\t4\t{100 * u + k}" for u in range(1, 13) for k in range(8)]
    (root / "u.data").write_text("\n".join(lines) + "\n")
    prepare_dataset("movielens", str(root / "u.data"), str(root / "ds"), seed=0, num_negatives=5, item_index="random")
    pretrained = root / "t5-pretrained"  # what a user downloads elsewhere: weights, config and a T5 tokenizer
    tokenizer = T5TokenizerFast(tokenizer_file=str(T5_VOCAB))
    new_backbone(preset_config("tiny", len(tokenizer), dropout_rate=0.0)).save_pretrained(pretrained)
    tokenizer.save_pretrained(pretrained)
    run_dir = root / "run"
    _run([sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(_free_port()),
          "peapod_scale/train.py", "--data", str(root / "ds"), "--output", str(run_dir), "--model", str(pretrained),
          "--deepspeed", "ds_configs/z3.json", "--precision", "bf16", "--max-steps", "3", "--log-every", "1",
          "--micro-batch-size", "4", "--topn-candidates", "4", "--topn-history", "2", "--num-beams", "2",
          "--eval-limit", "4", "--eval-batch-size", "1"])
    return run_dir, root / "ds"


def test_a_pretrained_backbone_trains_at_zero3_in_bf16(bf16_zero3_run):
    run_dir, _ = bf16_zero3_run
    config = json.loads((run_dir / "config.json").read_text())
    assert config["deepspeed"]["bf16"]["enabled"] and config["deepspeed"]["zero_optimization"]["stage"] == 3
    assert "precision bf16 (--precision bf16)" in (run_dir / "train.log").read_text()
    assert (run_dir / "metrics_test.json").is_file()


def test_export_keeps_the_fp32_master_weights(bf16_zero3_run, tmp_path):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    run_dir, _ = bf16_zero3_run
    _run([sys.executable, "-m", "peapod_scale.cli", "export", "--run-dir", str(run_dir), "--output",
          str(tmp_path / "fp32")])
    master = get_fp32_state_dict_from_zero_checkpoint(str(run_dir / "checkpoints"))
    backbone = load_file(str(tmp_path / "fp32" / "backbone" / "model.safetensors"))
    assert {t.dtype for t in backbone.values()} == {torch.float32}
    assert json.loads((tmp_path / "fp32" / "backbone" / "config.json").read_text())["dtype"] == "float32"
    compared = 0
    for name, tensor in backbone.items():
        if f"t5.{name}" in master:
            assert torch.equal(tensor, master[f"t5.{name}"]), name  # not rounded through bf16
            compared += 1
    assert compared >= len(backbone) - 2  # every backbone tensor (tied embedding copies aside)
    assert any(not torch.equal(t, t.bfloat16().float()) for t in master.values())  # the check can fail
    exported, _ = load_model(tmp_path / "fp32")
    assert {p.dtype for p in exported.parameters()} == {torch.float32}
    _run([sys.executable, "-m", "peapod_scale.cli", "export", "--run-dir", str(run_dir), "--output",
          str(tmp_path / "bf16"), "--dtype", "bf16"])
    assert {t.dtype for t in load_file(str(tmp_path / "bf16" / "backbone" / "model.safetensors")).values()} == {torch.bfloat16}


def test_evaluate_and_recommend_use_the_runs_dtype_and_numbers(bf16_zero3_run, tmp_path):
    run_dir, data = bf16_zero3_run
    model, _ = load_model(run_dir)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}  # prompts too, as the engine trained them
    out = tmp_path / "metrics.json"
    _run([sys.executable, "-m", "peapod_scale.cli", "evaluate", "--run-dir", str(run_dir), "--data", str(data),
          "--eval-limit", "4", "--eval-batch-size", "1", "--output", str(out)])
    single, trainer = json.loads(out.read_text()), json.loads((run_dir / "metrics_test.json").read_text())
    assert single["num_beams"] == 2  # the run's --num-beams, not evaluate's stand-alone default of 20
    assert single["topn_history"] == trainer["topn_history"] == 2  # the top-N prompts the run trained on
    for task in ("sequential", "topn"):  # the run's seed, beams and dtype: the trainer's own figures
        assert single[task]["model"] == pytest.approx(trainer[task]["model"], abs=1e-9), task
    users = json.loads((data / "manifest.json").read_text())
    result = _run([sys.executable, "-m", "peapod_scale.cli", "recommend", "--run-dir", str(run_dir), "--data", str(data),
                   "--user", "3", "-k", "3"])
    assert len(result.stdout.strip().splitlines()) == 3, (result.stdout, users["counts"])
