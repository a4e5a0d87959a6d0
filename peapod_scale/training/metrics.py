"""Throughput, FLOPs, MFU and memory measurements for the training loop.

Model FLOPs of one PeaPOD training step (an encoder-decoder with prompts), counted as 2 FLOPs per
multiply-add of the matrix products, on the padded shapes the hardware actually computes:

  B     examples in the micro-batch
  S_e   encoder length = task prompt + user prompt + input tokens (L_t + L + S)
  S_d   decoder length (label tokens, padded)
  N_e   parameters in the encoder's blocks (attention and feed-forward matrices)
  N_d   parameters in the decoder's blocks (self-attention, cross-attention, feed-forward)
  V, d  vocabulary and model width (the lm_head is a d x V product per decoder token)
  l_e, l_d  encoder / decoder layers; a = n_heads * d_kv (the attention inner width)

  K     parameters of the decoder's cross-attention key and value projections, 2 l_d d a: they
        act on the encoder's output, so on S_e tokens rather than S_d

  forward = 2 B (N_e S_e + (N_d - K) S_d + K S_e + d V S_d)       weight matrices
          + 4 B a (l_e S_e^2 + l_d S_d^2 + l_d S_d S_e)           scores QK^T and the weighted sum AV
  train   = 3 x forward                                           (backward = 2 x forward)
          = 2 x forward with --train prompts                      (no weight gradients in the backbone)

Embedding lookups, the gating softmax of the prompt pool and norms are left out (they are O(B S d)).
Activation checkpointing recomputes the forward, but MFU counts model FLOPs, so it stays 3 x forward.
MFU = achieved model FLOP/s / the device's dense bf16 peak (table below; no sparsity).
"""

from __future__ import annotations

import resource
import sys
import time

import torch

from peapod_scale.distributed.ranks import use_cuda

# Dense bf16 tensor-core peak, FLOP/s, from the vendors' data sheets (without 2:4 sparsity), keyed by the exact
# name torch.cuda.get_device_name() reports: a near match (an H200 NVL is not an H200) would give a wrong MFU.
PEAK_BF16_FLOPS = {
    "NVIDIA H200": 989e12,
    "NVIDIA H200 NVL": 835e12,
    "NVIDIA GH200 480GB": 989e12,
    "NVIDIA H100 80GB HBM3": 989e12,  # SXM
    "NVIDIA H100 PCIe": 756e12,
    "NVIDIA H100 NVL": 835e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "NVIDIA A100 80GB PCIe": 312e12,
    "NVIDIA A100-PCIE-40GB": 312e12,
}


def device_peak_flops(name: str | None = None) -> float | None:
    """Peak dense bf16 FLOP/s of a CUDA device by its exact name; None on CPU or for a device not in the table."""
    if name is None:
        if not use_cuda():
            return None
        name = torch.cuda.get_device_name()
    return PEAK_BF16_FLOPS.get(name.strip())


def _block_params(stack) -> int:
    return sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for n, p in stack.block.named_parameters())


def flop_counter(t5, trains_backbone: bool = True) -> "callable":
    """``count(batch_size, encoder_len, decoder_len) -> FLOPs`` of one training micro-step of ``t5``.

    A frozen backbone (``--train prompts``) still back-propagates through every layer to the prompts, but
    computes no weight gradients: its backward is one forward's worth of products, not two.
    """
    config = t5.config
    n_enc, n_dec = _block_params(t5.encoder), _block_params(t5.decoder)
    inner = config.num_heads * config.d_kv
    d, vocab = config.d_model, config.vocab_size
    l_e, l_d = config.num_layers, config.num_decoder_layers

    cross_kv = 2 * l_d * d * inner

    def count(batch_size: int, encoder_len: int, decoder_len: int) -> float:
        forward = 2 * (n_enc * encoder_len + (n_dec - cross_kv) * decoder_len + cross_kv * encoder_len
                       + d * vocab * decoder_len)
        forward += 4 * inner * (l_e * encoder_len ** 2 + l_d * decoder_len ** 2 + l_d * decoder_len * encoder_len)
        return (3.0 if trains_backbone else 2.0) * batch_size * forward

    return count


def _rss_high_water_bytes() -> int:
    """The process's peak resident set since the last ``reset_peak_memory`` (Linux VmHWM), else since start."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB


def peak_memory_bytes() -> tuple[str, int]:
    """('cuda', max allocated) on GPU, else ('rss', the process's peak resident set size)."""
    if use_cuda():
        return "cuda", int(torch.cuda.max_memory_allocated())
    return "rss", _rss_high_water_bytes()


def reset_peak_memory() -> None:
    """Start a new peak, so a window's figure is its own (not a validation's beam search long before)."""
    if use_cuda():
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass


class StepMeter:
    """Per-window sums of one rank's work and time per phase; ``summary`` reduces them over the ranks.

    Phases: data (next batch, collate, copy to device), forward, backward, optimizer (engine.step).
    On CUDA a phase's time is only real after a synchronize, and a synchronize per phase would stop the
    host from queueing the next step while the GPU works. So on CUDA only the first optimizer step of
    each window (all its micro-steps) is timed with synchronizes, from a drained GPU (``reset``), and
    the phase times are that step's; on CPU every step is timed (nothing to wait for).
    """

    PHASES = ("data", "forward", "backward", "optimizer")

    def __init__(self, flops_of_batch=None, synchronize=None):
        """``synchronize``: waits for the device (default: torch.cuda.synchronize on CUDA, none on CPU)."""
        self.flops_of_batch = flops_of_batch
        if synchronize is None and use_cuda():
            synchronize = torch.cuda.synchronize
        self.synchronize = synchronize
        self.cuda = synchronize is not None
        self.syncs = 0  # device synchronizes issued (a GPU run's cost of timing the phases)
        self.reset()

    def reset(self) -> None:
        if self.cuda:
            self.synchronize()  # once a window: the timed step starts from an idle GPU
            self.syncs += 1
        self.seconds = dict.fromkeys(self.PHASES, 0.0)
        self.samples = self.tokens = self.flops = 0.0
        self.steps = 0
        self.timed_steps = 0
        self.start = self._last = time.perf_counter()
        reset_peak_memory()

    @property
    def timing(self) -> bool:
        """Whether the current step's phases are timed (on CUDA: the window's first step)."""
        return not self.cuda or self.steps == 0

    def phase(self, name: str) -> None:
        """Close the phase ``name`` (the time since the previous call)."""
        timing = self.timing
        if timing and self.cuda:
            self.synchronize()
            self.syncs += 1
        now = time.perf_counter()
        if timing:
            self.seconds[name] += now - self._last
        self._last = now

    def end_step(self) -> None:
        """One optimizer step done (after its last micro-step)."""
        self.timed_steps += self.timing
        self.steps += 1

    def skip(self) -> None:
        """Leave the time since the last phase (a validation, a checkpoint) out of the window."""
        now = time.perf_counter()
        self.start += now - self._last
        self._last = now

    def count(self, batch: dict, prompt_tokens: int) -> None:
        batch_size = batch["input_ids"].shape[0]
        self.samples += batch_size
        self.tokens += float(batch["attention_mask"].sum()) + prompt_tokens * batch_size
        if "labels" in batch:
            self.tokens += float((batch["labels"] != -100).sum())
            if self.flops_of_batch is not None:
                self.flops += self.flops_of_batch(batch_size, batch["input_ids"].shape[1] + prompt_tokens,
                                                  batch["labels"].shape[1])

    def summary(self, collectives) -> dict[str, float]:
        """Stable scalar names -> values: global sums over ranks, per-rank means, max peak memory.

        ``collectives``: the trainer's ``distributed.HostCollectives`` (these are host values).
        """
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        kind, peak = peak_memory_bytes()
        world_size = collectives.world_size
        totals = collectives.sum([self.samples, self.tokens, self.flops])
        (peak_bytes,) = collectives.max([float(peak)])
        samples, tokens, flops = totals
        steps = max(self.steps, 1)
        out = {
            "throughput/samples_per_s": samples / elapsed,
            "throughput/samples_per_s_per_rank": samples / world_size / elapsed,
            "throughput/tokens_per_s": tokens / elapsed,
            "throughput/tokens_per_s_per_rank": tokens / world_size / elapsed,
            "time/step_s": elapsed / steps,
            **{f"time/{name}_s": self.seconds[name] / max(self.timed_steps, 1) for name in self.PHASES},
            "memory/peak_gib": peak_bytes / 2**30,
        }
        peak_flops = device_peak_flops()
        if peak_flops is not None and self.flops_of_batch is not None:
            per_rank = flops / world_size / elapsed
            out["perf/tflops_per_s_per_rank"] = per_rank / 1e12
            out["perf/mfu"] = per_rank / peak_flops
        self.reset()
        return out


def log_line(step: int, scalars: dict[str, float]) -> str:
    """The compact line written every --log-every steps (rank 0)."""
    losses = " ".join(f"{k} {v:.4f}" for k, v in scalars.items() if k.startswith("loss/"))
    parts = [f"step {step:>6}", losses, f"lr {scalars['lr']:.2e}"]
    if "grad_norm" in scalars:
        parts.append(f"gnorm {scalars['grad_norm']:.3f}")
    parts.append(f"{scalars['throughput/samples_per_s']:.1f} samples/s {scalars['throughput/tokens_per_s']:.0f} tok/s")
    parts.append(f"step {scalars['time/step_s'] * 1e3:.0f} ms (data {scalars['time/data_s'] * 1e3:.0f} fwd "
                 f"{scalars['time/forward_s'] * 1e3:.0f} bwd {scalars['time/backward_s'] * 1e3:.0f} opt "
                 f"{scalars['time/optimizer_s'] * 1e3:.0f})")
    parts.append(f"peak mem {scalars['memory/peak_gib']:.2f} GiB")
    if "perf/mfu" in scalars:
        parts.append(f"{scalars['perf/tflops_per_s_per_rank']:.1f} TFLOP/s/rank MFU {100 * scalars['perf/mfu']:.1f}%")
    return " | ".join(parts)
