"""How many evaluation rows one beam-search call may take: sized from the model, halved on out-of-memory.

Beam search keeps, per input row and for every decoder layer, the cross-attention keys and values of
the whole prompt for every beam: ``2 · layers · beams · prompt tokens · heads · d_kv`` numbers. That
term dominates and grows with the backbone: 32 rows x 20 beams of ~300-token top-N prompts need about
35 GiB for flan-t5-xl and 70 GiB for flan-t5-xxl in bf16, so a fixed ``--eval-batch-size`` that is
harmless for t5-small crashes the evaluation at the end of a long run on a large model.

``RowLimit`` turns an estimate of a call's bytes per row (``bytes_per_row``) and a budget (the
device's free memory, or one the caller sets) into a row count per call, and halves it after an
out-of-memory error (``is_out_of_memory``). The estimate is an upper-bound model of what
transformers' beam search allocates; the budget keeps a margin for the allocator's fragmentation.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

# Share of the free memory one generate call may plan to use: the rest is headroom for the caching
# allocator's fragmentation, ZeRO-3's gathered parameters and what the estimate leaves out.
BUDGET_SHARE = 0.7
LOGIT_COPIES = 3  # fp32 logits, their log-softmax and the processed scores, each [beams, vocab] per row


def bytes_per_row(t5_config, *, prompt_tokens: int, num_beams: int, answer_tokens: int, dtype_bytes: int) -> int:
    """Peak bytes one input row adds to a ``generate`` call of a T5 backbone (encoder pass + beam search)."""
    c = t5_config
    inner = c.num_heads * c.d_kv
    decoder_layers = c.num_decoder_layers or c.num_layers
    # encoder, once per row: hidden states and their copies, the FF activation, a layer's attention scores
    encoder = prompt_tokens * (6 * c.d_model + 2 * c.d_ff) + 3 * c.num_heads * prompt_tokens**2
    # per beam: the expanded encoder output, the cross-attention K/V cache of every decoder layer (plus
    # one layer's copy while beam search reorders the cache), its position bias, and the self-attention
    # K/V cache over the answer
    beams = num_beams * (prompt_tokens * (c.d_model + 2 * (decoder_layers + 1) * inner + c.num_heads)
                         + answer_tokens * 2 * (decoder_layers + 1) * inner)
    logits = num_beams * c.vocab_size * (LOGIT_COPIES * 4 + dtype_bytes)
    return (encoder + beams) * dtype_bytes + logits


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def device_budget(device: torch.device) -> int | None:
    """Bytes one generate call may use on ``device`` now; None when it cannot be told.

    CUDA: free device memory plus what the caching allocator holds unused. CPU: the host's available
    memory shared by the ranks of this node (a CPU out-of-memory is often the kernel's OOM killer, not
    an exception, so only the estimate protects it).
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(BUDGET_SHARE * (free + unused))
    available = _meminfo_available()
    if available is None:
        return None
    return int(BUDGET_SHARE * available / max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def is_out_of_memory(error: BaseException) -> bool:
    """A CUDA out-of-memory error, or the CPU allocator's (a plain RuntimeError in torch 2.x)."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(error, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in str(error)


class RowLimit:
    """Rows per generate call: the most that fit the budget, at most ``batch_size``, never below one.

    ``halve`` after an out-of-memory error at ``rows`` rows caps every later call at half of it: the
    estimate was wrong for this device, and retrying at the old size would fail again.
    """

    def __init__(self, model, *, batch_size: int, num_beams: int, answer_tokens: int, budget: int | None):
        parameter = next(model.parameters())
        self.t5_config, self.dtype_bytes = model.t5.config, parameter.element_size()
        self.soft_prompt_tokens = model.config.prompt_tokens
        self.batch_size, self.num_beams, self.answer_tokens, self.budget = batch_size, num_beams, answer_tokens, budget
        self.cap = batch_size
        self.halvings = 0

    def rows(self, text_tokens: int) -> int:
        """Rows per call for prompts of ``text_tokens`` tokens (the soft prompts are added here)."""
        if self.budget is None:
            return self.cap
        per_row = bytes_per_row(self.t5_config, prompt_tokens=text_tokens + self.soft_prompt_tokens,
                                num_beams=self.num_beams, answer_tokens=self.answer_tokens,
                                dtype_bytes=self.dtype_bytes)
        return max(1, min(self.cap, self.budget // per_row))

    def halve(self, rows: int) -> None:
        self.cap = max(1, min(self.cap, rows // 2))
        self.halvings += 1
