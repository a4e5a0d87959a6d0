"""Consolidate a DeepSpeed ZeRO checkpoint (any stage) into a Hugging Face-format PeaPOD folder.

The run's ``model/`` folder supplies the architecture (PeaPOD config, backbone config) and the tokenizer;
the weights come from ``checkpoints/<tag>``, merged from every rank's fp32 partitions by DeepSpeed's
``zero_to_fp32``. The result loads with ``PeaPOD.from_pretrained`` without DeepSpeed or a process group.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from peapod_scale.data.tokenizer import TextCodec
from peapod_scale.model.peapod import PeaPOD
from peapod_scale.tools.atomic_files import replace_folder, temporary_name
from peapod_scale.tools.run_dir import RUN_CONFIG, RunDir
from peapod_scale.training.checkpoint import verify_checkpoint

GIB = 2**30


def checkpoint_tag(checkpoints: Path, tag: str | None) -> str:
    if tag is not None:
        if not (checkpoints / tag).is_dir():
            raise FileNotFoundError(f"{checkpoints / tag} not found")
        return tag
    latest = checkpoints / "latest"
    if not latest.is_file():
        raise FileNotFoundError(f"{latest} not found: is {checkpoints.parent} a run folder written by `train`?")
    return latest.read_text().strip()


def consolidation_bytes(checkpoint: Path, num_params: int) -> int:
    """RAM zero_to_fp32 needs, roughly: every rank's state files are read (fp32 partitions and Adam
    moments: about 12 bytes per parameter in all) and the merged fp32 state dict is built (4 bytes each)."""
    files = sum(f.stat().st_size for f in checkpoint.glob("*.pt"))
    return files + 4 * num_params


EXPORT_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def export(run_dir: str | Path, output: str | Path, tag: str | None = None, log=print, dtype: str = "fp32") -> Path:
    """``dtype`` fp32 (default) keeps the fp32 master weights exactly; bf16 halves the folder."""
    # lazy: deepspeed is needed to train and to read ZeRO checkpoints, not to evaluate or recommend
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    paths, output = RunDir(run_dir), Path(output)
    model_dir = paths.model
    if not (model_dir / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{model_dir} (architecture and tokenizer of the run) not found")
    checkpoints = paths.checkpoints
    tag = checkpoint_tag(checkpoints, tag)
    verify_checkpoint(checkpoints / tag)  # zero_to_fp32 unpickles without restrictions
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"--dtype {dtype}: choose {' or '.join(EXPORT_DTYPES)}")
    model = PeaPOD.from_pretrained(model_dir, dtype=torch.float32)  # receives the fp32 partitions unrounded
    num_params = sum(p.numel() for p in model.parameters())
    log(f"consolidating {checkpoints / tag} ({num_params / 1e6:.1f} M parameters): needs about "
        f"{consolidation_bytes(checkpoints / tag, num_params) / GIB:.2f} GiB of RAM")
    state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoints), tag=tag)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"t5.encoder.embed_tokens.weight", "t5.decoder.embed_tokens.weight"}  # views of t5.shared
    if set(missing) - tied or unexpected:
        raise ValueError(f"{checkpoints / tag} does not fit {model_dir}: missing {sorted(set(missing) - tied)}, "
                         f"unexpected {sorted(unexpected)}")
    torch_dtype = getattr(torch, EXPORT_DTYPES[dtype])
    model = model.to(torch_dtype)
    model.t5.config.dtype = torch_dtype  # what from_pretrained(dtype="auto") will load it as
    tmp = temporary_name(output)
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    TextCodec.from_file(model_dir / "tokenizer.json").save(tmp)
    if paths.config.is_file():  # the run's options: `evaluate` of the export then scores as the run did
        shutil.copyfile(paths.config, tmp / RUN_CONFIG)
    replace_folder(tmp, output)  # a model being served from `output` is swapped whole
    log(f"wrote {output} ({dtype}; load it with PeaPOD.from_pretrained or `peapod-scale evaluate --run-dir {output}`)")
    return output
