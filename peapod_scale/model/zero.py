"""Writing into parameters that ZeRO-3 may have partitioned.

Under ``deepspeed.zero.Init`` a parameter holds an empty placeholder on every rank once its module's
``__init__`` has returned; an in-place write then changes nothing. ``writable`` gathers the full
tensors for the duration of the block (rank 0's values are broadcast afterwards) and is a no-op for
ordinary parameters. Every rank must enter it (it is a collective when anything is partitioned).
"""

from __future__ import annotations

import contextlib

import torch


def is_partitioned(parameter: torch.Tensor) -> bool:
    return hasattr(parameter, "ds_id")


def writable(*parameters: torch.Tensor):
    partitioned = [p for p in parameters if is_partitioned(p)]
    if not partitioned:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0)
