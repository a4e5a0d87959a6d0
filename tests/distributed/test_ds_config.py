import json

import pytest

from peapod_scale.distributed import ds_config

REPO_CONFIGS = ["ds_configs/z1.json", "ds_configs/z2.json", "ds_configs/z3.json", "ds_configs/z3_offload.json"]


@pytest.mark.parametrize("path", REPO_CONFIGS)
def test_shipped_configs_resolve_to_concrete_values(path):
    config = ds_config.resolve(path, world_size=4, micro_batch_size=None, grad_accum=None, lr=None, cuda=False)
    assert config["train_batch_size"] == config["train_micro_batch_size_per_gpu"] * config["gradient_accumulation_steps"] * 4
    assert "auto" not in json.dumps(config)
    assert config["bf16"]["enabled"] is False and config["fp16"]["enabled"] is False  # CPU: fp32


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
    offload = ds_config.resolve("ds_configs/z3_offload.json", world_size=2, micro_batch_size=None, grad_accum=None,
                                lr=None, cuda=False)
    assert ds_config.offload(offload) == "optimizer+params" and ds_config.zero_stage(offload) == 3
    assert ds_config.offload(ds_config.resolve("ds_configs/z2.json", world_size=2, micro_batch_size=None,
                                               grad_accum=None, lr=None)) == ""
    assert ds_config.precision(offload) == "fp32"  # CPU
    assert ds_config.precision({"bf16": {"enabled": True}}) == "bf16"
    assert ds_config.precision({"fp16": {"enabled": True}}) == "fp16"


def _precision(**kwargs) -> str:
    return ds_config.precision(ds_config.resolve("ds_configs/z2.json", world_size=1, micro_batch_size=None,
                                                 grad_accum=None, lr=None, **kwargs))


def test_auto_precision_follows_the_device_not_the_host_running_the_test():
    assert _precision(cuda=True, bf16_supported=True) == "bf16"
    assert _precision(cuda=True, bf16_supported=False) == "fp16"  # pre-Ampere: fp16 with a dynamic loss scale
    assert _precision(cuda=False, bf16_supported=False) == "fp32"
    fp16 = ds_config.resolve("ds_configs/z2.json", world_size=1, micro_batch_size=None, grad_accum=None, lr=None,
                             cuda=True, bf16_supported=False)["fp16"]
    assert fp16["enabled"] and fp16["loss_scale"] == 0  # 0 = dynamic in DeepSpeed


def test_an_explicit_precision_wins_and_fp16_on_cpu_is_refused():
    assert _precision(precision="fp32", cuda=True, bf16_supported=True) == "fp32"
    assert _precision(precision="bf16", cuda=False) == "bf16"  # DeepSpeed's CPU accelerator trains bf16
    assert _precision(precision="fp16", cuda=True, bf16_supported=True) == "fp16"
    with pytest.raises(ValueError, match="--precision fp16"):
        _precision(precision="fp16", cuda=False)


def test_ds_accelerator_cpu_decides_even_with_a_gpu_visible(monkeypatch):
    from peapod_scale.distributed import ranks as distributed

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    assert distributed.use_cuda() is False
    assert _precision() == "fp32"
