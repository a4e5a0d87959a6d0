"""Refuse a DeepSpeed checkpoint whose pickles would import anything beyond tensors and DeepSpeed's records.

DeepSpeed reads its checkpoint files with ``torch.load(weights_only=False)`` (engine.load_checkpoint,
zero_to_fp32), i.e. a full unpickler that can run any code a file names. Where a user hands us a
checkpoint (``train --resume``, ``export``), every ``*.pt`` file of the tag is first scanned with
``torch.serialization.get_unsafe_globals_in_checkpoint``, which reads the pickle opcodes without
executing them, and the load goes ahead only if the globals outside torch's weights-only allowlist
are the few plain records DeepSpeed itself writes.
"""

from __future__ import annotations

from pathlib import Path

import torch

# What DeepSpeed 0.19 ZeRO checkpoints hold beyond tensors and containers: plain value records.
DEEPSPEED_RECORDS = frozenset({
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.utils.tensor_fragment.fragment_address",
})


def verify_checkpoint(tag_dir: str | Path) -> None:
    """Raise ValueError naming the file and the globals if any ``*.pt`` in ``tag_dir`` is not plain data."""
    tag_dir = Path(tag_dir)
    files = sorted(tag_dir.glob("*.pt"))
    if not files:
        raise FileNotFoundError(f"{tag_dir}: no DeepSpeed checkpoint files (*.pt) in it")
    for path in files:
        try:
            found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception as error:  # noqa: BLE001 - a truncated or foreign file: say which one
            raise ValueError(f"{path}: not a readable torch checkpoint ({error})") from None
        unsafe = sorted(set(found) - DEEPSPEED_RECORDS)
        if unsafe:
            raise ValueError(f"{path}: refusing to load it: unpickling would import {', '.join(unsafe)}, and DeepSpeed "
                             "unpickles without restrictions. Only tensors, containers and DeepSpeed's own records are "
                             "accepted; use a checkpoint written by `peapod-scale train`.")
