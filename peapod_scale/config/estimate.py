"""``estimate``'s options: the job whose per-GPU memory is counted (``train``'s names where they mean the same)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from peapod_scale.config.model_dimensions import PRESETS
from peapod_scale.config.options import Options, option


@dataclass
class EstimateConfig(Options):
    PROG = "peapod-scale estimate"
    DESCRIPTION = ("Per-GPU memory of a training job (ZeRO model states, activations) and the DeepSpeed config to use; "
                   "the model is counted on the meta device.")
    OLD_SPELLINGS = {"micro_batch_size": ("--micro-batch",)}

    arch: str = option(None, "backbone preset: %(choices)s", required=True, choices=PRESETS, metavar="PRESET")
    zero: Optional[int] = option(None, "ZeRO stage; the shipped config for it is read (z1 with stage 0, z1, z2, z3)",
                                 choices=[0, 1, 2, 3])
    offload: bool = option(False, "optimizer states and parameters on CPU (z3_offload)")
    deepspeed: Optional[str] = option(None, "read bucket sizes and the stage from this DeepSpeed config (a file or a "
                                            "shipped name) instead of the shipped one for --zero", metavar="CONFIG")
    precision: str = option("bf16", "training precision", choices=["bf16", "fp16", "fp32"])
    nodes: int = option(1, "nodes", at_least=1)
    gpus_per_node: int = option(1, "GPUs per node", at_least=1)
    micro_batch_size: int = option(32, "examples per GPU per micro-step", at_least=1)
    encoder_len: int = option(128, "input tokens, prompts excluded", at_least=1)
    decoder_len: int = option(8, "label tokens", at_least=1)
    users: int = option(10_000, "users in the embedding table", at_least=0)
