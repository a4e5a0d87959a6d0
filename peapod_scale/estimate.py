"""Per-GPU memory of a PeaPOD training job before it runs: ZeRO model states and a rough activation size.

Model states, mixed-precision Adam (ZeRO paper, Rajbhandari et al. 2020, section 3.1), Ψ parameters,
N = nodes x GPUs per node data-parallel ranks:

  16-bit parameters   2Ψ         partitioned at stage 3
  16-bit gradients    2Ψ         partitioned at stages 2 and 3
  optimizer states   12Ψ         fp32 master weights, momentum, variance: partitioned at stages 1, 2, 3

  stage 0: 16Ψ    stage 1: 4Ψ + 12Ψ/N    stage 2: 2Ψ + 14Ψ/N    stage 3: 16Ψ/N
  stage 3 also holds the largest gathered layer (16-bit, with one prefetched: 4 x its parameters).
  --offload (ds_configs/z3_offload.json) moves optimizer states and parameters to CPU memory: the GPU
  keeps the gathered working layer and, at stage 3, the gradient partition until it is copied out.

DeepSpeed's own estimators count 18Ψ/N instead of 14Ψ/N or 16Ψ/N (they add an fp32 gradient copy of
4Ψ/N at stage 2 and 2Ψ/N at stage 3); tests/test_estimate.py checks both against each other.

Activations (bf16, per GPU, rough: norms' statistics and small buffers left out), with B the micro
batch, d width, a = heads x d_kv, f the feed-forward width, h heads, V vocabulary, S_e the encoder
length (prompts + text), S_d the decoder length, l_e / l_d layers:

  encoder layer, per token   2 (6d + 4a + 3f) + 5 h S_e        bytes (5 h S: scores, softmax, dropout mask)
  decoder layer, per token   2 (9d + 8a + 3f) + 5 h (S_d + S_e) + cross-attention keys/values 4a per encoder token
  logits                     B S_d V (2 + 4)                   (16-bit logits and the fp32 loss input)
  activation checkpointing   keeps each layer's input (2d bytes per token) and recomputes one layer at a time
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class ModelShape:
    params: int
    largest_layer_params: int
    d_model: int
    inner: int
    d_ff: int
    heads: int
    vocab: int
    encoder_layers: int
    decoder_layers: int
    prompt_tokens: int


def model_shape(arch: str, num_users: int = 10_000) -> ModelShape:
    """Parameter counts of the ``arch`` PeaPOD, built on the meta device (no memory, any size)."""
    from .config import TrainConfig
    from .model.build import prompt_config
    from .model.peapod import PeaPOD
    from .model.presets import RELEASED_VOCAB_SIZE

    with torch.device("meta"):
        model = PeaPOD.from_preset(arch, RELEASED_VOCAB_SIZE, prompt_config(TrainConfig(data="", output=""), num_users))
    config = model.t5.config
    largest = max(sum(p.numel() for p in module.parameters(recurse=False)) for module in model.modules())
    return ModelShape(
        params=sum(p.numel() for p in model.parameters()), largest_layer_params=largest, d_model=config.d_model,
        inner=config.num_heads * config.d_kv, d_ff=config.d_ff, heads=config.num_heads, vocab=config.vocab_size,
        encoder_layers=config.num_layers, decoder_layers=config.num_decoder_layers,
        prompt_tokens=model.config.prompt_tokens,
    )


def model_state_bytes(params: int, largest_layer_params: int, stage: int, ranks: int, offload: bool = False) -> dict:
    """Bytes per GPU (and per node's CPU when offloading) of parameters, gradients and optimizer states."""
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0, 1, 2 or 3 (got {stage})")
    if offload and stage < 2:
        raise ValueError("offload needs ZeRO stage 2 or 3")
    p, g, o = 2 * params, 2 * params, 12 * params
    out = {
        "parameters": p / ranks if stage == 3 else p,
        "gradients": g / ranks if stage >= 2 else g,
        "optimizer": o / ranks if stage >= 1 else o,
        "working_layer": 4 * largest_layer_params if stage == 3 else 0,
        "cpu_offloaded": 0,
    }
    if offload:
        out["cpu_offloaded"] = out["optimizer"] + (out["parameters"] if stage == 3 else 0)
        out["optimizer"] = 0
        if stage == 3:
            out["parameters"] = 0
    return out


def activation_bytes(shape: ModelShape, micro_batch: int, encoder_len: int, decoder_len: int,
                     checkpointing: bool) -> int:
    """Rough activation memory of one micro-batch (the module docstring has the formula)."""
    d, a, f, h = shape.d_model, shape.inner, shape.d_ff, shape.heads
    s_e, s_d = encoder_len + shape.prompt_tokens, decoder_len
    enc_layer = s_e * (2 * (6 * d + 4 * a + 3 * f) + 5 * h * s_e)
    dec_layer = s_d * (2 * (9 * d + 8 * a + 3 * f) + 5 * h * (s_d + s_e)) + 4 * a * s_e
    logits = s_d * shape.vocab * 6
    if checkpointing:
        kept = 2 * d * (s_e * shape.encoder_layers + s_d * shape.decoder_layers)
        per_example = kept + max(enc_layer, dec_layer) + logits
    else:
        per_example = enc_layer * shape.encoder_layers + dec_layer * shape.decoder_layers + logits
    return int(micro_batch * per_example)


def config_file(stage: int, offload: bool) -> str:
    if offload:
        return "ds_configs/z3_offload.json"
    return {0: "ds_configs/z1.json with \"stage\": 0", 1: "ds_configs/z1.json", 2: "ds_configs/z2.json",
            3: "ds_configs/z3.json"}[stage]


def report(args: argparse.Namespace) -> str:
    shape = model_shape(args.arch, args.users)
    ranks = args.nodes * args.gpus_per_node
    states = model_state_bytes(shape.params, shape.largest_layer_params, args.zero, ranks, args.offload)
    on_gpu = sum(v for k, v in states.items() if k != "cpu_offloaded")
    acts = {ckpt: activation_bytes(shape, args.micro_batch, args.encoder_len, args.decoder_len, ckpt)
            for ckpt in (False, True)}
    lines = [f"{args.arch}: {shape.params / 1e6:.1f} M parameters (largest layer {shape.largest_layer_params / 1e6:.1f} M), "
             f"ZeRO-{args.zero}{' + CPU offload' if args.offload else ''}, {ranks} GPU(s) "
             f"({args.nodes} node(s) x {args.gpus_per_node}), micro batch {args.micro_batch}",
             "per GPU:"]
    for name in ("parameters", "gradients", "optimizer", "working_layer"):
        lines.append(f"  {name:<28} {states[name] / GIB:10.2f} GiB")
    lines.append(f"  {'model states':<28} {on_gpu / GIB:10.2f} GiB")
    lines.append(f"  {'activations':<28} {acts[False] / GIB:10.2f} GiB  (with --activation-checkpointing "
                 f"{acts[True] / GIB:.2f} GiB)")
    lines.append(f"  {'total':<28} {(on_gpu + acts[False]) / GIB:10.2f} GiB  (with checkpointing "
                 f"{(on_gpu + acts[True]) / GIB:.2f} GiB)")
    if args.offload:
        lines.append(f"CPU memory per node for offloaded states: "
                     f"{states['cpu_offloaded'] * args.gpus_per_node / GIB:.2f} GiB")
    lines.append(f"config: --deepspeed {config_file(args.zero, args.offload)}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", required=True, help="backbone preset (tiny, t5-small, ..., flan-t5-xxl)")
    parser.add_argument("--zero", type=int, required=True, choices=[0, 1, 2, 3], help="ZeRO stage")
    parser.add_argument("--offload", action="store_true", help="optimizer states and parameters on CPU (z3_offload)")
    parser.add_argument("--nodes", type=int, default=1, help="nodes (default: %(default)s)")
    parser.add_argument("--gpus-per-node", type=int, default=1, help="GPUs per node (default: %(default)s)")
    parser.add_argument("--micro-batch", type=int, default=32, help="examples per GPU per micro-step (default: %(default)s)")
    parser.add_argument("--encoder-len", type=int, default=128, help="input tokens, prompts excluded (default: %(default)s)")
    parser.add_argument("--decoder-len", type=int, default=8, help="label tokens (default: %(default)s)")
    parser.add_argument("--users", type=int, default=10_000, help="users in the embedding table (default: %(default)s)")
