"""Per-GPU memory of a PeaPOD training job before it runs: model states as DeepSpeed allocates them, and activations.

The ZeRO paper (Rajbhandari et al. 2020, section 3.1) counts, for Ψ parameters on N data-parallel ranks and
mixed-precision Adam, 2Ψ of 16-bit parameters, 2Ψ of 16-bit gradients and 12Ψ of optimizer states (fp32
master weights, momentum, variance), partitioned from stage 1 (states), 2 (+ gradients) and 3 (+ parameters):

  stage 0: 16Ψ    stage 1: 4Ψ + 12Ψ/N    stage 2: 2Ψ + 14Ψ/N    stage 3: 16Ψ/N
  (fp32 training, the same way: 4Ψ parameters, 4Ψ gradients, 8Ψ moments)

``paper_model_states`` is that formula. What DeepSpeed (0.19) allocates differs, and ``deepspeed_model_states``
follows it, reading every size from the resolved DeepSpeed config (DeepSpeed's own defaults where a key is
absent: ``DeepSpeedZeroConfig``). b is 2 bytes (bf16/fp16) or 4 (fp32), R = ``reduce_bucket_size`` (5e8):

  stage 0    b Ψ parameters, b Ψ gradients, 8Ψ moments; mixed precision adds 4Ψ fp32 master weights and, in
             the optimizer step, 4Ψ fp32 gradients; the gradient all-reduce flattens up to 5e8 elements
             (b each) at the end of the backward
  stage 1, 2 b Ψ parameters (one flat buffer per optimizer group); 4Ψ/N fp32 master partition (a copy even in
             fp32); 8Ψ/N moments; the gradients of the parameters that overlap this rank's partition (stage 1
             keeps no more than stage 2 in DeepSpeed 0.19); during the backward the reduction bucket b R (twice
             with ``overlap_comm``) and the flat copy the all-reduce takes of it (b min(Ψ, R)); in the step
             the fp32 gradient of the largest group's partition (4 bytes each) instead
  stage 3    b Ψ/N parameter partitions (each parameter split into N); the parameters of at most
             ``stage3_param_persistence_threshold`` elements kept whole (b each); 4Ψ/N master (a copy in fp32
             too); 8Ψ/N moments; a b Ψ/N gradient partition buffer and the
             bucket b R, both held all the time; in the forward and backward the gathered parameters: all of
             them while the model is smaller than ``stage3_max_reuse_distance`` + ``stage3_prefetch_bucket_size``
             (DeepSpeed keeps a parameter whose next use is that close), else about that many; in the step the
             fp32 gradient of the largest sub-group partition
  offload    (z3_offload) parameter partitions, master weights, moments, the gradient partition and a held
             fp32 gradient buffer (4Ψ/N) live in CPU memory; the GPU keeps the bucket, the persistent and the
             gathered parameters
  torch AdamW on a GPU steps with foreach kernels, one temporary the size of the group it updates (4 bytes
  each); on CPU it loops over tensors and makes none.

The peak is the larger of the backward's (held + backward parts + activations) and the step's (held + step
parts). At small scale the fixed-size bucket dominates: 0.93 GiB in bf16 whatever the model.

Activations (bf16, per GPU, rough: norms' statistics and small buffers left out), with B the micro
batch, d width, a = heads x d_kv, f the feed-forward width, h heads, V vocabulary, S_e the encoder
length (prompts + text), S_d the decoder length, l_e / l_d layers:

  encoder layer, per token   2 (6d + 4a + 3f) + 5 h S_e        bytes (5 h S: scores, softmax, dropout mask)
  decoder layer, per token   2 (9d + 8a + 3f) + 5 h (S_d + S_e) + cross-attention keys/values 4a per encoder token
  logits                     B S_d V (2 + 4)                   (16-bit logits and the fp32 loss input)
  activation checkpointing   keeps each layer's input (2d bytes per token) and recomputes one layer at a time
"""

from __future__ import annotations

import dataclasses
import math

import torch

from peapod_scale.config.estimate import EstimateConfig
from peapod_scale.config.train import TrainConfig
from peapod_scale.distributed import ds_config
from peapod_scale.model.build import prompt_config
from peapod_scale.model.peapod import PeaPOD
from peapod_scale.model.presets import RELEASED_VOCAB_SIZE
from peapod_scale.training.optimizer import optimizer_groups

GIB = 2**30
MIB = 2**20
ALLREDUCE_BUCKET = 500_000_000  # deepspeed.runtime.engine.MEMORY_OPT_ALLREDUCE_SIZE: stage 0's all-reduce chunk
STAGE_CONFIGS = {0: "z1", 1: "z1", 2: "z2", 3: "z3"}  # the shipped config each stage is run with (stage 0: z1, stage set to 0)


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
    param_sizes: tuple[int, ...] = ()  # every parameter's elements in module order (ZeRO-3 persistence)
    group_sizes: tuple[tuple[int, ...], ...] = ()  # the optimizer groups' parameters, in order (ZeRO-1/2 partitions)


def shape_of(model, backbone_is_random: bool = True) -> ModelShape:
    """The counts of a built PeaPOD (real, meta or ZeRO-3 partitioned), its optimizer groups as the trainer makes them."""

    def numel(parameter) -> int:
        return int(getattr(parameter, "ds_numel", parameter.numel()))

    config = model.t5.config
    largest = max(sum(numel(p) for p in module.parameters(recurse=False)) for module in model.modules())
    groups = optimizer_groups(model, 1.0, 1.0, backbone_is_random=backbone_is_random)
    return ModelShape(
        params=sum(numel(p) for p in model.parameters()), largest_layer_params=largest, d_model=config.d_model,
        inner=config.num_heads * config.d_kv, d_ff=config.d_ff, heads=config.num_heads, vocab=config.vocab_size,
        encoder_layers=config.num_layers, decoder_layers=config.num_decoder_layers,
        prompt_tokens=model.config.prompt_tokens, param_sizes=tuple(numel(p) for p in model.parameters()),
        group_sizes=tuple(tuple(numel(p) for p in group["params"]) for group in groups if group["params"]),
    )


def model_shape(arch: str, num_users: int = 10_000, vocab_size: int | None = None) -> ModelShape:
    """Parameter counts of the ``arch`` PeaPOD, built on the meta device (no memory, any size)."""

    with torch.device("meta"):
        model = PeaPOD.from_preset(arch, vocab_size or RELEASED_VOCAB_SIZE,
                                   prompt_config(TrainConfig(data="", output=""), num_users))
    return shape_of(model)


# ----------------------------------------------------------------------------------------------
# the ZeRO paper's formula
# ----------------------------------------------------------------------------------------------

def paper_model_states(params: int, stage: int, ranks: int, precision: str = "bf16") -> dict:
    """Bytes per rank of parameters, gradients and optimizer states by the ZeRO paper's formula."""
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0, 1, 2 or 3 (got {stage})")
    b = element_bytes(precision)
    optimizer = (12 if b == 2 else 8) * params
    return {"parameters": b * params / (ranks if stage == 3 else 1),
            "gradients": b * params / (ranks if stage >= 2 else 1),
            "optimizer": optimizer / (ranks if stage >= 1 else 1)}


def element_bytes(precision: str) -> int:
    if precision not in ("bf16", "fp16", "fp32"):
        raise ValueError(f"precision must be bf16, fp16 or fp32 (got {precision!r})")
    return 4 if precision == "fp32" else 2


# ----------------------------------------------------------------------------------------------
# the DeepSpeed config it is run with
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ZeroSettings:
    """The sizes of a resolved DeepSpeed config that decide its memory (DeepSpeed's defaults filled in)."""

    stage: int
    reduce_bucket_size: int
    overlap_comm: bool
    contiguous_gradients: bool
    prefetch_bucket_size: int
    param_persistence_threshold: int
    model_persistence_threshold: int
    max_reuse_distance: int
    sub_group_size: int
    offload_optimizer: bool
    offload_param: bool
    torch_adam: bool


def zero_settings(config: dict) -> ZeroSettings:
    """Read from ``config`` (a resolved DeepSpeed dict) through DeepSpeed's own config class, so an absent key
    takes the default of the installed DeepSpeed (e.g. ``overlap_comm`` is on at stage 3 only)."""
    # lazy: deepspeed is needed to train and to read ZeRO checkpoints, not to evaluate or recommend
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    zero = DeepSpeedZeroConfig(**config.get("zero_optimization", {}))

    def offloaded(part) -> bool:
        return part is not None and str(getattr(part.device, "value", part.device)) != "none"

    optimizer = config.get("optimizer", {})
    return ZeroSettings(
        stage=int(zero.stage), reduce_bucket_size=int(zero.reduce_bucket_size), overlap_comm=bool(zero.overlap_comm),
        contiguous_gradients=bool(zero.contiguous_gradients), prefetch_bucket_size=int(zero.prefetch_bucket_size),
        param_persistence_threshold=int(zero.param_persistence_threshold),
        model_persistence_threshold=int(zero.model_persistence_threshold),
        max_reuse_distance=int(zero.max_reuse_distance), sub_group_size=int(zero.sub_group_size),
        offload_optimizer=offloaded(zero.offload_optimizer), offload_param=offloaded(zero.offload_param),
        torch_adam=optimizer.get("type", "").lower() in ("adam", "adamw")
        and bool(optimizer.get("params", {}).get("torch_adam")),
    )


def recommended_config(stage: int, offload: bool, ranks: int, micro_batch: int, precision: str) -> tuple[str, dict]:
    """(how to pass it, the resolved dict) of the shipped config for ``stage`` / ``offload``."""

    if offload and stage != 3:
        raise ValueError(f"--offload: the shipped offload config is for ZeRO-3 (z3_offload), not stage {stage}; "
                         "give your own config with --deepspeed")
    name = "z3_offload" if offload else STAGE_CONFIGS[stage]
    config = ds_config.resolve(name, world_size=ranks, micro_batch_size=micro_batch, grad_accum=None, lr=None,
                               precision=precision, cuda=True, bf16_supported=True)
    if stage == 0:
        config["zero_optimization"] = {**config.get("zero_optimization", {}), "stage": 0}
        return f"{name} with \"stage\": 0", config
    return name, config


# ----------------------------------------------------------------------------------------------
# model states as DeepSpeed allocates them
# ----------------------------------------------------------------------------------------------

PHASES = ("backward", "reduce", "step")


@dataclasses.dataclass(frozen=True)
class Part:
    """One allocation: its bytes per rank, when it is held and where.

    ``phase``: "held" (all the time), or the phases it lives in, comma-separated: backward (the forward and
    backward, when activations live too), reduce (inside the gradient all-reduce at the end of the backward),
    step (the optimizer step)."""

    name: str
    bytes: float
    phase: str
    where: str = "gpu"  # gpu, or cpu (offloaded)

    def present(self, phase: str) -> bool:
        return self.phase == "held" or phase in self.phase.split(", ")


@dataclasses.dataclass(frozen=True)
class StateEstimate:
    parts: tuple[Part, ...]

    def during(self, phase: str, where: str = "gpu") -> float:
        """Bytes held during ``phase``."""
        return sum(p.bytes for p in self.parts if p.where == where and p.present(phase))

    def _phases(self, where: str, activations: float) -> dict[str, float]:
        return {phase: self.during(phase, where) + (activations if phase == "backward" else 0) for phase in PHASES}

    def peak(self, where: str = "gpu", activations: float = 0.0) -> float:
        """The most held at once, over the phases (activations count in the backward)."""
        return max(self._phases(where, activations).values())

    def peak_phase(self, where: str = "gpu", activations: float = 0.0) -> str:
        phases = self._phases(where, activations)
        return max(PHASES, key=lambda phase: phases[phase])


def _zero12_partitions(groups: tuple[tuple[int, ...], ...], ranks: int) -> tuple[list[int], int]:
    """Per group the partition size, and the most gradient elements a rank keeps: DeepSpeed flattens each group
    (padded to 2N elements), cuts it into N equal parts and keeps whole the parameters overlapping its part."""
    sizes, most_kept = [], 0
    per_rank = [0] * ranks
    for group in groups:
        flat = sum(group)
        flat += (-flat) % (2 * ranks)
        size = flat // ranks
        sizes.append(size)
        for rank in range(ranks):
            start, end, offset = rank * size, (rank + 1) * size, 0
            for numel in group:
                if start <= offset < end or offset < start < offset + numel:
                    per_rank[rank] += numel
                offset += numel
    if per_rank:
        most_kept = max(per_rank)
    return sizes, most_kept


def _persistent(param_sizes: tuple[int, ...], zero: ZeroSettings) -> int:
    """Elements ZeRO-3 keeps whole on every rank (DeepSpeed's mark_persistent_parameters, in module order)."""
    total = 0
    for numel in param_sizes:
        if numel <= zero.param_persistence_threshold and numel + total <= zero.model_persistence_threshold:
            total += numel
    return total


def deepspeed_model_states(shape: ModelShape, zero: ZeroSettings, ranks: int, precision: str = "bf16",
                           device: str = "cuda") -> StateEstimate:
    """Bytes per rank DeepSpeed allocates for parameters, gradients, optimizer states and its buffers (module
    docstring); ``device`` 'cpu' for a CPU-only run, where torch AdamW makes no foreach temporaries."""
    b = element_bytes(precision)
    mixed = b == 2
    psi, n = shape.params, ranks
    groups = shape.group_sizes or ((psi,),)
    foreach = zero.torch_adam and device == "cuda"
    parts: list[Part] = []

    def add(name: str, size: float, phase: str, where: str = "gpu") -> None:
        if size:
            parts.append(Part(name, float(size), phase, where))

    if zero.stage == 0:
        largest_group = max(sum(group) for group in groups)
        add("parameters", b * psi, "held")
        add("fp32 master weights", 4 * psi if mixed else 0, "held")
        add("Adam moments", 8 * psi, "held")
        add("gradients", b * psi, "backward, reduce, step")
        add("all-reduce flat copy", b * min(psi, ALLREDUCE_BUCKET), "reduce")
        add("fp32 gradients", 4 * psi if mixed else 0, "step")
        add("AdamW foreach temporary", 4 * largest_group if foreach else 0, "step")
    elif zero.stage in (1, 2):
        if zero.offload_optimizer or zero.offload_param:
            raise ValueError("ZeRO-1/2 with offload is not modelled (the shipped offload config is z3_offload)")
        partitions, kept = _zero12_partitions(groups, n)
        add("parameters", b * sum(p * n for p in partitions), "held")
        add("fp32 master weights", 4 * sum(partitions), "held")
        add("Adam moments", 8 * sum(partitions), "held")
        # the partition is allocated at the first copy out of a reduced bucket: with one bucket, after its all-reduce
        add("gradient partition", b * kept, "backward, step" if psi <= zero.reduce_bucket_size else
            "backward, reduce, step")
        buckets = (2 if zero.overlap_comm else 1) if zero.contiguous_gradients else 0
        add("reduction bucket" + ("s" if buckets > 1 else ""), buckets * b * zero.reduce_bucket_size, "backward, reduce")
        add("all-reduce flat copy", b * min(psi, zero.reduce_bucket_size), "reduce")
        add("fp32 gradient partition", 4 * max(partitions), "step")
        add("AdamW foreach temporary", 4 * max(partitions) if foreach else 0, "step")
    elif zero.stage == 3:
        sizes = shape.param_sizes or (psi,)
        part = sum(math.ceil(numel / n) for numel in sizes)
        persistent = _persistent(sizes, zero)
        sub_groups = [min(math.ceil(sum(group) / n), zero.sub_group_size) for group in groups]
        optimizer_where = "cpu" if zero.offload_optimizer else "gpu"
        add("parameter partitions", b * part, "held", "cpu" if zero.offload_param else "gpu")
        add("persistent parameters", b * persistent, "backward")  # partitioned again for the step
        # a copy in fp32 too: DeepSpeed's reuse test compares a torch.device with a string, which is never equal
        add("fp32 master weights", 4 * part, "held", optimizer_where)
        add("Adam moments", 8 * part, "held", optimizer_where)
        add("gradient partition", b * part, "held", optimizer_where)
        add("reduction bucket", b * zero.reduce_bucket_size if zero.contiguous_gradients else 0, "held")
        gathered = min(psi - persistent, max(zero.max_reuse_distance + zero.prefetch_bucket_size,
                                             2 * shape.largest_layer_params))
        add("gathered parameters", b * gathered, "backward")
        if zero.offload_optimizer:
            add("fp32 gradient buffer", 4 * part, "held", "cpu")
        else:
            add("fp32 gradient partition", 4 * max(sub_groups), "step")
            add("AdamW foreach temporary", 4 * max(sub_groups) if foreach else 0, "step")
    else:
        raise ValueError(f"ZeRO stage must be 0, 1, 2 or 3 (got {zero.stage})")
    return StateEstimate(tuple(parts))


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


def _resolve(args: EstimateConfig, ranks: int) -> tuple[str, dict]:
    """The config the estimate reads: --deepspeed, else the shipped one for --zero / --offload."""

    if args.deepspeed is None:
        if args.zero is None:
            raise ValueError("give --zero STAGE (the shipped config for it is read) or --deepspeed CONFIG")
        return recommended_config(args.zero, args.offload, ranks, args.micro_batch_size, args.precision)
    config = ds_config.resolve(args.deepspeed, world_size=ranks, micro_batch_size=args.micro_batch_size, grad_accum=None,
                               lr=None, precision=args.precision, cuda=True, bf16_supported=True)
    stage = ds_config.zero_stage(config)
    if args.zero is not None and args.zero != stage:
        raise ValueError(f"--zero {args.zero} but {args.deepspeed} has ZeRO stage {stage}")
    return str(args.deepspeed), config


def report(args: EstimateConfig) -> str:
    ranks = args.nodes * args.gpus_per_node
    name, config = _resolve(args, ranks)
    zero = zero_settings(config)
    shape = model_shape(args.arch, args.users)
    states = deepspeed_model_states(shape, zero, ranks, args.precision)
    acts = activation_bytes(shape, args.micro_batch_size, args.encoder_len, args.decoder_len, checkpointing=False)
    acts_ckpt = activation_bytes(shape, args.micro_batch_size, args.encoder_len, args.decoder_len, checkpointing=True)
    offload = " + CPU offload" if zero.offload_optimizer or zero.offload_param else ""
    sizes = f"reduce bucket {zero.reduce_bucket_size:.3g} elements"
    if zero.stage in (1, 2) and zero.overlap_comm:
        sizes += " x 2 (overlap_comm)"
    if zero.stage == 3:
        sizes += (f", persistence threshold {zero.param_persistence_threshold:.3g}, reuse distance "
                  f"{zero.max_reuse_distance:.3g}, prefetch bucket {zero.prefetch_bucket_size:.3g}")
    lines = [f"{args.arch}: {shape.params / 1e6:.1f} M parameters (largest layer {shape.largest_layer_params / 1e6:.1f} M), "
             f"ZeRO-{zero.stage}{offload}, {ranks} GPU(s) ({args.nodes} node(s) x {args.gpus_per_node}), "
             f"micro batch {args.micro_batch_size}, {args.precision}",
             f"config --deepspeed {name}: {sizes}",
             "per GPU (held: all the time; backward: in the forward and backward; reduce: in the gradient all-reduce "
             "at the end of the backward; step: in the optimizer step):"]
    for part in states.parts:
        if part.where == "gpu":
            lines.append(f"  {part.name:<32} {part.bytes / GIB:9.2f} GiB  {part.phase}")
    paper = sum(paper_model_states(shape.params, zero.stage, ranks, args.precision).values())
    lines += [f"  {'model states at their peak':<32} {states.peak() / GIB:9.2f} GiB  (in the {states.peak_phase()}; "
              f"the ZeRO paper's formula: {paper / GIB:.2f} GiB)",
              f"  {'activations':<32} {acts / GIB:9.2f} GiB  (with --activation-checkpointing {acts_ckpt / GIB:.2f} GiB)",
              f"  {'total':<32} {states.peak(activations=acts) / GIB:9.2f} GiB  (with checkpointing "
              f"{states.peak(activations=acts_ckpt) / GIB:.2f} GiB)"]
    cpu = states.peak("cpu")
    if cpu:
        lines.append(f"CPU memory per node for offloaded states: {cpu * args.gpus_per_node / GIB:.2f} GiB")
    return "\n".join(lines)

