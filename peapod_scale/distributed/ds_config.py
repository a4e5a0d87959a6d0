"""Resolve a DeepSpeed JSON config against the CLI: concrete batch sizes, precision, learning rate.

DeepSpeed's "auto" values only work inside the Hugging Face Trainer, so this trainer fills them.
"""

from __future__ import annotations

import copy
import json
from importlib.resources import files
from pathlib import Path

import torch

from peapod_scale.distributed.ranks import use_cuda

# fp16 needs a loss scale: dynamic, starting at 2^16 and halved on overflow (DeepSpeed's "loss_scale": 0).
DYNAMIC_LOSS_SCALE = {"loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000, "hysteresis": 2,
                      "min_loss_scale": 1}


def choose_precision(requested: str, *, cuda: bool, bf16_supported: bool) -> str:
    """``--precision``: an explicit bf16 / fp16 / fp32 wins; auto is bf16 on GPUs that have it, fp16 on older
    GPUs (pre-Ampere), fp32 on CPU."""
    if requested not in ("auto", "bf16", "fp16", "fp32"):
        raise ValueError(f"--precision {requested}: choose auto, bf16, fp16 or fp32")
    if requested == "fp16" and not cuda:
        raise ValueError("--precision fp16: DeepSpeed's CPU accelerator has no fp16 training; use bf16 or fp32 on CPU")
    if requested != "auto":
        return requested
    if not cuda:
        return "fp32"
    return "bf16" if bf16_supported else "fp16"


def shipped_configs() -> dict[str, Path]:
    """Name -> file of the configs installed with the package (ds_configs/ in a clone)."""

    folder = files("peapod_scale.ds_configs")
    return {entry.name[:-len(".json")]: Path(str(entry)) for entry in folder.iterdir() if entry.name.endswith(".json")}


def locate(name_or_path: str | Path) -> Path:
    """``--deepspeed``: a JSON file, or the name of a shipped config (z1, z2, z3, z3_offload), so that an
    installed `peapod-scale train` outside a clone has its configs too."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = shipped_configs()
    name = path.name[:-len(".json")] if path.name.endswith(".json") else path.name
    if name in shipped and (str(name_or_path) == name or path.parent.name == "ds_configs"):
        return shipped[name]
    raise FileNotFoundError(f"DeepSpeed config {name_or_path} not found: give a JSON file or one of the shipped "
                            f"configs by name ({', '.join(sorted(shipped))})")


def resolve(path: str | Path, *, world_size: int, micro_batch_size: int | None, grad_accum: int | None,
            lr: float | None, precision: str = "auto", cuda: bool | None = None,
            bf16_supported: bool | None = None) -> dict:
    """The concrete config: batch sizes, learning rate and precision (``cuda`` / ``bf16_supported``: the
    device's, by default this process's, see ``distributed.use_cuda``)."""

    path = locate(path)
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{error.lineno}: invalid JSON: {error.msg}") from None
    config = copy.deepcopy(config)
    for key, override in (("train_micro_batch_size_per_gpu", micro_batch_size), ("gradient_accumulation_steps", grad_accum)):
        if override is not None:
            config[key] = override
        value = config.get(key)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{path}: field '{key}' must be a positive integer (got {value!r}); set it there or on the command line")
    expected = config["train_micro_batch_size_per_gpu"] * config["gradient_accumulation_steps"] * world_size
    given = config.get("train_batch_size")
    if given is not None and given != expected and micro_batch_size is None and grad_accum is None:
        raise ValueError(f"{path}: field 'train_batch_size' is {given} but micro batch x accumulation x world size = {expected}; "
                         "remove it (the trainer computes it) or make them agree")
    config["train_batch_size"] = expected
    cuda = use_cuda() if cuda is None else cuda
    if bf16_supported is None:
        bf16_supported = cuda and torch.cuda.is_bf16_supported()
    chosen = choose_precision(precision, cuda=cuda, bf16_supported=bf16_supported)
    config["bf16"] = {**config.get("bf16", {}), "enabled": chosen == "bf16"}
    config["fp16"] = {**DYNAMIC_LOSS_SCALE, **config.get("fp16", {}), "enabled": chosen == "fp16"}
    optimizer = config.setdefault("optimizer", {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}})
    if lr is not None:
        optimizer.setdefault("params", {})["lr"] = lr
    return config


def peak_lr(config: dict) -> float:
    return float(config["optimizer"]["params"]["lr"])


def zero_stage(config: dict) -> int:
    return int(config.get("zero_optimization", {}).get("stage", 0))


def precision(config: dict) -> str:
    """The resolved training precision: bf16 / fp16 mixed precision, or fp32."""
    if config.get("bf16", {}).get("enabled"):
        return "bf16"
    if config.get("fp16", {}).get("enabled"):
        return "fp16"
    return "fp32"


def offload(config: dict) -> str:
    """What ZeRO moves to CPU/NVMe: '', 'optimizer', 'params' or 'optimizer+params'."""
    zero = config.get("zero_optimization", {})
    parts = [name for name, key in (("optimizer", "offload_optimizer"), ("params", "offload_param"))
             if zero.get(key, {}).get("device", "none") != "none"]
    return "+".join(parts)


def engine_dtype(ds_config: dict) -> torch.dtype:
    """The dtype DeepSpeed keeps the module's parameters in for this config."""
    if ds_config.get("bf16", {}).get("enabled"):
        return torch.bfloat16
    if ds_config.get("fp16", {}).get("enabled"):
        return torch.float16
    return torch.float32
