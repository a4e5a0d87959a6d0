import json

import pytest

from peapod_scale import ds_config

REPO_CONFIGS = ["ds_configs/z1.json", "ds_configs/z2.json", "ds_configs/z3.json", "ds_configs/z3_offload.json"]


@pytest.mark.parametrize("path", REPO_CONFIGS)
def test_shipped_configs_resolve_to_concrete_values(path):
    config = ds_config.resolve(path, world_size=4, micro_batch_size=None, grad_accum=None, lr=None)
    assert config["train_batch_size"] == config["train_micro_batch_size_per_gpu"] * config["gradient_accumulation_steps"] * 4
    assert "auto" not in json.dumps(config)
    assert config["bf16"]["enabled"] is False  # no CUDA here: fp32


def test_command_line_overrides_batch_and_lr(tmp_path):
    config = ds_config.resolve("ds_configs/z2.json", world_size=2, micro_batch_size=8, grad_accum=3, lr=5e-4)
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]) == (8, 3)
    assert config["train_batch_size"] == 48 and ds_config.peak_lr(config) == 5e-4


def test_disagreeing_train_batch_size_is_refused(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2, "train_batch_size": 10}))
    with pytest.raises(ValueError, match="train_batch_size"):
        ds_config.resolve(path, world_size=2, micro_batch_size=None, grad_accum=None, lr=None)


def test_auto_values_and_broken_json_name_the_file(tmp_path):
    auto = tmp_path / "auto.json"
    auto.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": 1}))
    with pytest.raises(ValueError, match="auto.json.*train_micro_batch_size_per_gpu"):
        ds_config.resolve(auto, world_size=1, micro_batch_size=None, grad_accum=None, lr=None)
    broken = tmp_path / "broken.json"
    broken.write_text('{\n  "stage": 2,\n  oops\n}')
    with pytest.raises(ValueError, match=r"broken.json:3"):
        ds_config.resolve(broken, world_size=1, micro_batch_size=None, grad_accum=None, lr=None)


def test_precision_and_offload_are_reported():
    offload = ds_config.resolve("ds_configs/z3_offload.json", world_size=2, micro_batch_size=None, grad_accum=None, lr=None)
    assert ds_config.offload(offload) == "optimizer+params" and ds_config.zero_stage(offload) == 3
    assert ds_config.offload(ds_config.resolve("ds_configs/z2.json", world_size=2, micro_batch_size=None,
                                               grad_accum=None, lr=None)) == ""
    assert ds_config.precision(offload) == "fp32"  # no CUDA here
    assert ds_config.precision({"bf16": {"enabled": True}}) == "bf16"
    assert ds_config.precision({"fp16": {"enabled": True}}) == "fp16"
