"""Loading a trained PeaPOD for `evaluate` and `recommend`: one dtype for every parameter, on the GPU when there is one.

``--dtype auto`` is the dtype the run trained its weights in (what its saved backbone config names), so that
`peapod-scale evaluate` computes in the same precision as the trainer's own evaluation did; an exported fp32
folder evaluates in fp32.
"""

from __future__ import annotations

from pathlib import Path

import torch

from peapod_scale.distributed.ranks import use_cuda
from peapod_scale.model.peapod import PeaPOD
from peapod_scale.tools.run_dir import RunDir

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def model_folder(path: str | Path) -> Path:
    """A run folder (its ``model/``) or a model folder itself."""
    path = Path(path)
    model = RunDir(path).model
    return model if model.is_dir() else path


def inference_dtype(model_dir: str | Path, requested: str = "auto") -> torch.dtype:
    if requested == "auto":
        return PeaPOD.backbone_dtype_on_disk(model_dir)
    if requested not in DTYPES:
        raise ValueError(f"--dtype {requested}: choose auto, {', '.join(DTYPES)}")
    return DTYPES[requested]


def load_model(path: str | Path, requested_dtype: str = "auto", local_rank: int = 0):
    """(model in eval mode on its device, its folder)."""

    model_dir = model_folder(path)
    model = PeaPOD.from_pretrained(model_dir, dtype=inference_dtype(model_dir, requested_dtype))
    if use_cuda():
        model.to(f"cuda:{local_rank}")
    return model.eval(), model_dir
