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


def gathered(*parameters: torch.Tensor):
    """Full values of possibly partitioned parameters for reading (changes are discarded); a collective."""
    partitioned = [p for p in parameters if is_partitioned(p)]
    if not partitioned:
        return contextlib.nullcontext()
    # lazy: deepspeed is needed to train and to read ZeRO checkpoints, not to evaluate or recommend
    import deepspeed

    return deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None)


def writable(*parameters: torch.Tensor):
    partitioned = [p for p in parameters if is_partitioned(p)]
    if not partitioned:
        return contextlib.nullcontext()
    # lazy: deepspeed is needed to train and to read ZeRO checkpoints, not to evaluate or recommend
    import deepspeed

    return deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0)


def _post_order(module: torch.nn.Module, seen: set[int] | None = None):
    """Each module once, children first (a shared module, like T5's token embedding, only where first met)."""
    seen = set() if seen is None else seen
    if id(module) in seen:
        return
    seen.add(id(module))
    for child in module.children():
        yield from _post_order(child, seen)
    yield module


def initialize_weights(model) -> None:
    """Run a Hugging Face model's own ``_init_weights`` over every module, partitioned or not.

    Inside ``deepspeed.zero.Init`` every module is partitioned as soon as it is built, so ``post_init``
    writes into empty placeholders and the weights keep PyTorch's default init (Hugging Face gathers
    them only when an ``HfDeepSpeedConfig`` is alive, which needs ``accelerate``). This pass visits the
    modules in ``post_init``'s order, children before parents. ``_init_weights(module)`` writes the
    module's own parameters and those of its direct children (an attention block sets its q/k/v/o, the
    model its embeddings), so exactly those are gathered: peak memory is one such group, e.g. the token
    embedding and lm_head, never the whole model. Run from the same RNG state it gives the same values
    with and without ZeRO-3.
    """
    for module in _post_order(model):
        touched = list(module.parameters(recurse=False))
        for child in module.children():
            touched += list(child.parameters(recurse=False))
        with writable(*touched), torch.no_grad():
            model._init_weights(module)
