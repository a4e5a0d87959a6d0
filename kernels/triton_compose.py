"""Triton kernels of the prompt composition op and their launch plan (shared pool ``[M, L, D]`` only).

    out[b, l, h*Dh:(h+1)*Dh] = sum_m softmax(logits[b, h, :] / tau)[m] * pool[m, l, h*Dh:(h+1)*Dh]

``compose.py`` holds the torch reference and the autograd Function that calls the launchers here.

How the forward is laid out
---------------------------
The op is a small matmul per head: ``out[b, (l, d in h)] = alpha[b, h, :] @ P[:, (l, d in h)]``.
A program owns a tile of BLOCK_B batch rows x BLOCK_L*BLOCK_D columns of the flattened ``L*D``
output, the columns chosen inside one head, so:

* the softmax for the tile is one row per batch element (computed once per program, online over
  chunks of M, so any M works), not a gather of one logits row per output column;
* the weighted sum is a ``tl.dot`` of the weights with a pool tile. Blocking over the batch is what
  makes this cheap: with one program per batch row, every program would re-read its pool tile and
  the pool would stream B times through L2 (B=256, D=4096, bf16: 2 GB of L2 traffic per call).
* the weights stay fp32; for 16-bit pools they are split into ``hi + lo`` halves in the pool's
  dtype and fed to two tensor-core dots (~16 mantissa bits instead of 8), accumulating in fp32. A
  consequence: an inf in a 16-bit pool comes out as NaN (the low half is often 0 and 0*inf = NaN),
  where the reference gives inf. NaN stays NaN; with fp32 pools inf and NaN propagate as in the
  reference.
* non-power-of-two M, L, D/H are handled by masks; the head width is padded to a power of two of
  at least 16 (``tl.dot``'s minimum), which wastes lanes only when D/H < 16.

The project's design notes proposed one program per (b, block of l*d); the batch blocking above is
chosen instead for the L2 argument.

The backward runs three kernels and nothing is reduced with atomics, so it is bitwise reproducible:

1. ``_compose_bwd_dalpha_kernel``, grid (batch blocks, H * pool blocks, splits):
   ``dalpha = dOut_h @ P_h^T``, the head's ``L*D/H`` columns split into contiguous runs of column
   tiles, one fp32 partial ``[B, H, M]`` per run. Splitting is what fills the GPU: at the model's
   B = 64 and H = 4, one program per 64-row batch block and head would be 4 programs on 132 SMs,
   each looping over every column of its head and re-reading its pool slice. The plan aims at two
   programs per SM.
2. ``_compose_bwd_softmax_kernel``, grid (batch blocks, H): sums the partials in split order,
   recomputes ``alpha`` (and stores it fp32 for kernel 3), ``dlogits = alpha * (dalpha - sum_m
   alpha*dalpha) / tau``; with a tau that needs a gradient also one partial of ``dtau`` per program
   (then one fixed-shape ``torch.sum``). A float tau (the model's) skips that work and the launch.
3. ``_compose_bwd_pool_kernel``, grid (column tiles, pool blocks): ``dP = alpha_h^T @ dOut`` with
   the batch reduction done by one program walking the batch in a fixed order. Each dOut element
   is read once per pool block, so no partial-sum buffer is needed.

tau may be a float or a one-element tensor; when it requires grad, with ``z = logits / tau`` and
``g = dL/dz``: ``dtau = sum(g * dz/dtau) = -sum(g * z) / tau``.

Status: correct against the reference in Triton's interpreter; every launch compiled ahead of time
for sm_90 with Triton's own argument specialisation, without register spills for 16-bit pools
(headline shape, M up to 1024, the model's shapes); never yet run or timed on a GPU, block sizes
untuned.

Triton on CPU: kernels run under ``TRITON_INTERPRET=1`` only if the variable is set before this
module is imported (``@triton.jit`` decides at decoration time). The interpreter computes ``tl.dot``
of bf16 operands on their raw bits (wrong results), so on CPU tensors the kernels up-cast the dot
operands to fp32 (``UPCAST``); the products of 16-bit numbers are exact in fp32, so the arithmetic
is the same as on tensor cores. The interpreter also truncates fp32 -> bf16 instead of rounding, so
bf16 results there can differ from the reference by one unit in the last place.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch

TRITON_IMPORT_ERROR = None  # why ``import triton`` failed, for the messages of triton_support
try:  # a CPU-only install must still import this module and run the reference
    import triton
    import triton.language as tl
except Exception as error:  # ImportError, or a broken triton install (missing libraries)
    triton = None
    TRITON_IMPORT_ERROR = f"{type(error).__name__}: {error}"

    class _NoTriton:
        """Stand-in so the kernel definitions below still parse; they are never launched."""

        constexpr = None

        @staticmethod
        def jit(fn):
            return fn

    tl = _NoTriton()
    _jit = _NoTriton.jit
else:
    _jit = triton.jit

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# The softmax backward holds a full (padded) row of M gating weights per batch row in registers, with
# fewer batch rows a program as M grows; past this M it is refused.
MAX_POOL_SIZE_TRITON = 1024


# ----------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------


@_jit
def _head_tile(h, t, L, Dh, n_jblocks, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    """Tile ``t`` of head ``h``: BLOCK_L prompt rows x BLOCK_D columns of the head, flattened.

    Returns the prompt row ``l``, the absolute column ``d`` in [0, D) and the in-bounds mask, each of
    length BLOCK_L*BLOCK_D. BLOCK_D is a power of two, so ``//`` and ``%`` by it are shifts.
    """
    c = tl.arange(0, BLOCK_L * BLOCK_D)
    l = (t // n_jblocks) * BLOCK_L + c // BLOCK_D
    j = (t % n_jblocks) * BLOCK_D + c % BLOCK_D
    return l, h * Dh + j, (l < L) & (j < Dh)


@_jit
def _scaled_logits(row_ptr, s_lm, offs_m, mask_b, mask_m, tau):
    """``logits / tau`` for [BLOCK_B, BLOCK_M]. Pool padding is -inf (zero weight); batch padding
    rows read as 0, so they stay finite and never make NaNs that would only be masked later."""
    s = tl.load(row_ptr + offs_m[None, :] * s_lm, mask=mask_b[:, None] & mask_m[None, :], other=0.0)
    return tl.where(mask_m[None, :], s.to(tl.float32) / tau, float("-inf"))


@_jit
def _softmax_stats(row_ptr, s_lm, mask_b, M, tau, BLOCK_B: tl.constexpr, BLOCK_M: tl.constexpr):
    """Online max and normaliser of ``softmax(logits / tau)`` over M, BLOCK_M logits at a time.

    A chunk that is all -inf (masked pool entries) must not poison the running sum with
    exp(-inf - -inf) = NaN, hence ``safe``; a row that is -inf everywhere still ends as NaN weights,
    like ``torch.softmax``.
    """
    mx = tl.full((BLOCK_B,), float("-inf"), tl.float32)
    denom = tl.zeros((BLOCK_B,), tl.float32)
    for m0 in range(0, M, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        z = _scaled_logits(row_ptr, s_lm, offs_m, mask_b, offs_m < M, tau)
        new_mx = tl.maximum(mx, tl.max(z, axis=1))
        safe = tl.where(new_mx == float("-inf"), 0.0, new_mx)
        denom = denom * tl.exp(mx - safe) + tl.sum(tl.exp(z - safe[:, None]), axis=1)
        mx = new_mx
    return mx, denom


@_jit
def _softmax_weights(row_ptr, s_lm, offs_m, mask_b, mask_m, tau, mx, denom):
    """Scaled logits and gating weights for one chunk of M; padding lanes get weight 0."""
    z = _scaled_logits(row_ptr, s_lm, offs_m, mask_b, mask_m, tau)
    alpha = tl.exp(z - mx[:, None]) / denom[:, None]
    return z, tl.where(mask_b[:, None] & mask_m[None, :], alpha, 0.0)


@_jit
def _load_tau(tau_ptr, tau_value, TAU_PTR: tl.constexpr):
    """tau from device memory when it is a tensor (no host sync), else the float argument."""
    if TAU_PTR:
        return tl.load(tau_ptr).to(tl.float32)
    else:
        return tau_value


@_jit
def _dot(a, b, acc, UPCAST: tl.constexpr):
    """``acc + a @ b`` in fp32. fp32 operands use IEEE fp32 (no TF32: the reference does not)."""
    if UPCAST:  # Triton's interpreter multiplies bf16 dot operands as raw bits: compute in fp32
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    elif a.dtype == tl.float32:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@_jit
def _weighted_sum(acc, w, x, UPCAST: tl.constexpr):
    """``acc + w @ x`` for fp32 weights ``w`` and values ``x`` in their storage dtype.

    16-bit values: ``w = hi + lo`` with both halves in x's dtype, two tensor-core dots; this keeps
    about 16 bits of each weight where a single cast would keep 8 (bf16) or 11 (fp16).
    """
    if x.dtype == tl.float32:
        return _dot(w, x, acc, UPCAST)
    w_hi = w.to(x.dtype)
    w_lo = (w - w_hi.to(tl.float32)).to(x.dtype)
    return _dot(w_lo, x, _dot(w_hi, x, acc, UPCAST), UPCAST)


@_jit
def _compose_fwd_kernel(
    logits_ptr, pool_ptr, tau_ptr, tau_value, out_ptr,
    B, M, L, Dh,
    s_lb, s_lh, s_lm,
    s_pm, s_pl,
    s_ob, s_ol, s_od,
    n_jblocks, tiles_per_head,
    BLOCK_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
    TAU_PTR: tl.constexpr, UPCAST: tl.constexpr,
):
    """out[b, l, d] for BLOCK_B batch rows x one column tile of one head.

    Grid: (batch blocks, H * tiles_per_head). The batch block is the fast axis so the programs that
    read the same pool tile run back to back and find it in L2.
    """
    pid_t = tl.program_id(1)
    h = pid_t // tiles_per_head
    l, d, mask_c = _head_tile(h, pid_t % tiles_per_head, L, Dh, n_jblocks, BLOCK_L, BLOCK_D)
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    mask_b = offs_b < B
    tau = _load_tau(tau_ptr, tau_value, TAU_PTR)

    row_ptr = logits_ptr + offs_b.to(tl.int64)[:, None] * s_lb + h * s_lh
    mx, denom = _softmax_stats(row_ptr, s_lm, mask_b, M, tau, BLOCK_B, BLOCK_M)

    acc = tl.zeros((BLOCK_B, BLOCK_L * BLOCK_D), tl.float32)
    pool_cols = pool_ptr + l * s_pl + d
    for m0 in range(0, M, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        _, alpha = _softmax_weights(row_ptr, s_lm, offs_m, mask_b, mask_m, tau, mx, denom)
        p = tl.load(pool_cols[None, :] + offs_m[:, None] * s_pm, mask=mask_m[:, None] & mask_c[None, :], other=0.0)
        acc = _weighted_sum(acc, alpha, p, UPCAST)

    out_ptrs = (out_ptr + offs_b.to(tl.int64)[:, None] * s_ob
                + (l * s_ol + d * s_od)[None, :])
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_b[:, None] & mask_c[None, :])


@_jit
def _compose_bwd_dalpha_kernel(
    pool_ptr, dout_ptr, partial_ptr,
    B, M, L, Dh,
    s_pm, s_pl,
    s_gb, s_gl, s_gd,
    n_jblocks, tiles_per_head, tiles_per_split, m_blocks,
    BLOCK_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """One fp32 partial of ``dalpha[b, h, m] = sum_cols dOut[b, col] * P[m, col]``: the column tiles
    ``[split * tiles_per_split, (split + 1) * tiles_per_split)`` of head h, BLOCK_B batch rows x
    BLOCK_M pool entries.

    Grid: (batch blocks, H * pool blocks, splits); ``partial`` is a contiguous [splits, B, H, M].
    """
    h = tl.program_id(1) // m_blocks
    n_heads = tl.num_programs(1) // m_blocks
    split = tl.program_id(2)
    offs_m = (tl.program_id(1) % m_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    mask_b = offs_b < B

    acc = tl.zeros((BLOCK_B, BLOCK_M), tl.float32)
    dout_rows = dout_ptr + offs_b.to(tl.int64)[:, None] * s_gb
    first = split * tiles_per_split
    for t in range(first, tl.minimum(first + tiles_per_split, tiles_per_head)):
        l, d, mask_c = _head_tile(h, t, L, Dh, n_jblocks, BLOCK_L, BLOCK_D)
        g = tl.load(dout_rows + (l * s_gl + d * s_gd)[None, :], mask=mask_b[:, None] & mask_c[None, :], other=0.0)
        p_t = tl.load(pool_ptr + (l * s_pl + d)[:, None] + offs_m[None, :] * s_pm,
                      mask=mask_c[:, None] & mask_m[None, :], other=0.0)
        acc = _dot(g.to(p_t.dtype), p_t, acc, UPCAST)

    rows = (split * B + offs_b.to(tl.int64)) * n_heads + h
    tl.store(partial_ptr + rows[:, None] * M + offs_m[None, :], acc, mask=mask_b[:, None] & mask_m[None, :])


@_jit
def _compose_bwd_softmax_kernel(
    logits_ptr, tau_ptr, tau_value, partial_ptr, dlogits_ptr, alpha_ptr, dtau_ptr,
    B, M, n_splits,
    s_lb, s_lh, s_lm,
    s_db, s_dh, s_dm,
    BLOCK_B: tl.constexpr, BLOCK_M: tl.constexpr, TAU_PTR: tl.constexpr, NEED_DTAU: tl.constexpr,
):
    """dlogits and alpha (fp32, for the pool kernel) for BLOCK_B batch rows of one head, from the
    dalpha partials summed in split order (deterministic); one dtau partial per program only when tau
    needs a gradient.

    Grid: (batch blocks, H). BLOCK_M covers all of M; no tl.dot here, so BLOCK_B may be small.
    """
    h = tl.program_id(1)
    n_heads = tl.num_programs(1)
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    mask_b = offs_b < B
    offs_m = tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    valid = mask_b[:, None] & mask_m[None, :]
    tau = _load_tau(tau_ptr, tau_value, TAU_PTR)

    row_ptr = logits_ptr + offs_b.to(tl.int64)[:, None] * s_lb + h * s_lh
    mx, denom = _softmax_stats(row_ptr, s_lm, mask_b, M, tau, BLOCK_B, BLOCK_M)
    z, alpha = _softmax_weights(row_ptr, s_lm, offs_m, mask_b, mask_m, tau, mx, denom)
    row = (offs_b.to(tl.int64)[:, None] * n_heads + h) * M + offs_m[None, :]
    tl.store(alpha_ptr + row, alpha, mask=valid)

    dalpha = tl.zeros((BLOCK_B, BLOCK_M), tl.float32)
    plane = (B * n_heads).to(tl.int64) * M
    for s in range(0, n_splits):
        dalpha += tl.load(partial_ptr + s * plane + row, mask=valid, other=0.0)

    # softmax backward with respect to z = logits / tau, then the chain rule through the division
    dz = alpha * (dalpha - tl.sum(alpha * dalpha, axis=1)[:, None])
    dlogits_ptrs = dlogits_ptr + offs_b.to(tl.int64)[:, None] * s_db + h * s_dh + offs_m[None, :] * s_dm
    tl.store(dlogits_ptrs, (dz / tau).to(dlogits_ptr.dtype.element_ty), mask=valid)
    if NEED_DTAU:
        dtau = -tl.sum(tl.sum(dz * tl.where(valid, z, 0.0), axis=1), axis=0) / tau
        tl.store(dtau_ptr + tl.program_id(0) * n_heads + h, dtau)


@_jit
def _compose_bwd_pool_kernel(
    alpha_ptr, dout_ptr, dpool_ptr,
    B, M, L, Dh,
    s_gb, s_gl, s_gd,
    s_pm, s_pl,
    n_jblocks, tiles_per_head, n_heads,
    BLOCK_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """dP[m, l, d] = sum_b alpha[b, h(d), m] * dOut[b, l, d] for BLOCK_M pool rows x one column tile.

    Grid: (H * tiles_per_head, pool blocks). The batch reduction happens in this one program, in a
    fixed order: deterministic without atomics or a second reduction stage.
    """
    pid_t = tl.program_id(0)
    h = pid_t // tiles_per_head
    l, d, mask_c = _head_tile(h, pid_t % tiles_per_head, L, Dh, n_jblocks, BLOCK_L, BLOCK_D)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    dout_cols = dout_ptr + l * s_gl + d * s_gd

    acc = tl.zeros((BLOCK_M, BLOCK_L * BLOCK_D), tl.float32)
    for b0 in range(0, B, BLOCK_B):
        offs_b = b0 + tl.arange(0, BLOCK_B)
        mask_b = offs_b < B
        alpha_t = tl.load(alpha_ptr + offs_b[None, :] * (n_heads * M) + h * M + offs_m[:, None],
                          mask=mask_m[:, None] & mask_b[None, :], other=0.0)
        g = tl.load(dout_cols[None, :] + offs_b.to(tl.int64)[:, None] * s_gb,
                    mask=mask_b[:, None] & mask_c[None, :], other=0.0)
        acc = _weighted_sum(acc, alpha_t, g.to(dpool_ptr.dtype.element_ty), UPCAST)

    dpool_ptrs = dpool_ptr + offs_m[:, None] * s_pm + (l * s_pl + d)[None, :]
    tl.store(dpool_ptrs, acc.to(dpool_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_c[None, :])


# ----------------------------------------------------------------------------------------------
# Host side: checks, tile sizes, launches
# ----------------------------------------------------------------------------------------------


def _pow2(n: int, lo: int, hi: int) -> int:
    """The next power of two of ``n``, clamped to [lo, hi]."""
    return min(max(1 << max(n - 1, 0).bit_length(), lo), hi)


class _Tiles:
    """Column tiling of one head: BLOCK_L rows x BLOCK_D head columns, at most ``max_cols`` a tile.

    tl.dot needs every tile side >= 16. The block sizes in the launchers are not tuned on a GPU yet;
    they were chosen by compiling for sm_90 ahead of time (no GPU needed) and keeping the
    configurations that do not spill registers at M <= 256.
    """

    def __init__(self, length: int, head_width: int, max_cols: int = 128):
        self.block_d = _pow2(head_width, 16, max_cols)
        self.block_l = _pow2(length, 1, max(1, max_cols // self.block_d))
        self.n_jblocks = math.ceil(head_width / self.block_d)
        self.per_head = math.ceil(length / self.block_l) * self.n_jblocks

    def meta(self) -> dict:
        return {"BLOCK_L": self.block_l, "BLOCK_D": self.block_d}


def kernels_interpreted() -> bool:
    return type(_compose_fwd_kernel).__name__ == "InterpretedFunction"


def _tau_args(tau, like: torch.Tensor) -> tuple:
    """(tau_ptr, tau_value, TAU_PTR): a tensor tau is read on the device (no ``.item()`` sync)."""
    if isinstance(tau, torch.Tensor):
        return tau.detach().reshape(1).to(device=like.device, dtype=torch.float32), 1.0, True
    return like, float(tau), False


class _Launch(NamedTuple):
    grid: tuple[int, ...]
    tiles: _Tiles | None
    meta: dict  # compile-time block sizes and num_warps
    args: dict = {}  # run-time integers of the plan (splits of the dalpha reduction)


# SMs of the GPU the plan is made for, when it is made without one (the ahead-of-time checks): H100/H200
DEFAULT_SM_COUNT = 132


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return DEFAULT_SM_COUNT


def launch_plan(batch: int, heads: int, pool_size: int, length: int, width: int,
                sm_count: int = DEFAULT_SM_COUNT) -> dict[str, _Launch]:
    """Grid and block sizes of the four kernels for one problem size (also used by the tests'
    ahead-of-time compile checks, so what is checked is what runs).

    dalpha: a [64, 64] fp32 tile of (batch, pool) per program whatever M is; the head's column tiles
    are split so that the grid has about two programs per SM (at the model's B = 64, H = 4 an unsplit
    grid would be 4 programs on 132 SMs), each split an fp32 partial the softmax kernel sums in order.
    """
    head_width = width // heads
    fwd_tiles, pool_tiles = _Tiles(length, head_width), _Tiles(length, head_width)
    fwd_b, pool_m = _pow2(batch, 16, 32), _pow2(pool_size, 16, 64)

    dalpha_tiles = _Tiles(length, head_width, max_cols=64)
    dalpha_b, dalpha_m = _pow2(batch, 16, 64), _pow2(pool_size, 16, 64)
    b_blocks, m_blocks = triton.cdiv(batch, dalpha_b), triton.cdiv(pool_size, dalpha_m)
    wanted = min(max(1, math.ceil(2 * sm_count / (b_blocks * heads * m_blocks))), dalpha_tiles.per_head)
    tiles_per_split = math.ceil(dalpha_tiles.per_head / wanted)
    splits = math.ceil(dalpha_tiles.per_head / tiles_per_split)

    softmax_m = _pow2(pool_size, 2, MAX_POOL_SIZE_TRITON)
    softmax_b = _pow2(max(1, 4096 // softmax_m), 1, 32)  # about 4096 fp32 per array in registers
    return {
        "fwd": _Launch((triton.cdiv(batch, fwd_b), heads * fwd_tiles.per_head), fwd_tiles,
                       dict(BLOCK_B=fwd_b, BLOCK_M=_pow2(pool_size, 16, 32), num_warps=4, **fwd_tiles.meta())),
        "dalpha": _Launch((b_blocks, heads * m_blocks, splits), dalpha_tiles,
                          dict(BLOCK_B=dalpha_b, BLOCK_M=dalpha_m, num_warps=4, **dalpha_tiles.meta()),
                          dict(tiles_per_split=tiles_per_split, m_blocks=m_blocks, splits=splits)),
        "softmax": _Launch((triton.cdiv(batch, softmax_b), heads), None,
                           dict(BLOCK_B=softmax_b, BLOCK_M=softmax_m, num_warps=4)),
        "pool": _Launch((heads * pool_tiles.per_head, triton.cdiv(pool_size, pool_m)), pool_tiles,
                        dict(BLOCK_B=_pow2(batch, 16, 32), BLOCK_M=pool_m, num_warps=4, **pool_tiles.meta())),
    }


class KernelCall(NamedTuple):
    """One kernel launch, built before it runs: the launchers run these, and the ahead-of-time compile
    checks in the tests compile exactly these arguments (Triton's specialisation of them included)."""

    name: str
    kernel: object
    grid: tuple[int, ...]
    args: tuple
    meta: dict  # constexprs and num_warps

    def launch(self) -> None:
        self.kernel[self.grid](*self.args, **self.meta)


def forward_calls(logits: torch.Tensor, pool: torch.Tensor, tau, sm_count: int | None = None,
                  upcast: bool | None = None) -> tuple[torch.Tensor, list[KernelCall]]:
    """The ``[B, L, D]`` output (pool's dtype, not yet written) and the launch that writes it.
    ``upcast`` defaults to the tensors' device: True on CPU (the interpreter), False on a GPU."""
    batch, heads, pool_size = logits.shape
    _, length, width = pool.shape
    out = torch.empty((batch, length, width), dtype=pool.dtype, device=pool.device)
    if not out.numel():
        return out, []
    plan = launch_plan(batch, heads, pool_size, length, width, sm_count or _sm_count(pool.device))["fwd"]
    tau_ptr, tau_value, tau_in_memory = _tau_args(tau, logits)
    upcast = not pool.is_cuda if upcast is None else upcast
    args = (logits, pool, tau_ptr, tau_value, out,
            batch, pool_size, length, width // heads,
            *logits.stride(), pool.stride(0), pool.stride(1),
            *out.stride(),
            plan.tiles.n_jblocks, plan.tiles.per_head)
    return out, [KernelCall("fwd", _compose_fwd_kernel, plan.grid, args,
                            dict(TAU_PTR=tau_in_memory, UPCAST=upcast, **plan.meta))]


def backward_calls(logits: torch.Tensor, pool: torch.Tensor, tau, grad: torch.Tensor, need_pool: bool,
                   need_tau: bool = False, sm_count: int | None = None, upcast: bool | None = None):
    """(dlogits, dpool or None, dtau partials or None, launches): three launches, two without
    ``need_pool``; the dtau partials are computed only with ``need_tau``."""
    batch, heads, pool_size = logits.shape
    _, length, width = pool.shape
    plans = launch_plan(batch, heads, pool_size, length, width, sm_count or _sm_count(pool.device))
    upcast = not pool.is_cuda if upcast is None else upcast
    tau_ptr, tau_value, tau_in_memory = _tau_args(tau, logits)
    calls = []

    plan = plans["dalpha"]
    partials = torch.empty((plan.args["splits"], batch, heads, pool_size), dtype=torch.float32, device=pool.device)
    calls.append(KernelCall("dalpha", _compose_bwd_dalpha_kernel, plan.grid, (
        pool, grad, partials,
        batch, pool_size, length, width // heads,
        pool.stride(0), pool.stride(1), *grad.stride(),
        plan.tiles.n_jblocks, plan.tiles.per_head, plan.args["tiles_per_split"], plan.args["m_blocks"],
    ), dict(UPCAST=upcast, **plan.meta)))

    plan = plans["softmax"]
    dlogits = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    alpha = torch.empty((batch, heads, pool_size), dtype=torch.float32, device=logits.device)
    dtau_parts = torch.empty(plan.grid, dtype=torch.float32, device=logits.device) if need_tau else None
    calls.append(KernelCall("softmax", _compose_bwd_softmax_kernel, plan.grid, (
        logits, tau_ptr, tau_value, partials, dlogits, alpha, alpha if dtau_parts is None else dtau_parts,
        batch, pool_size, partials.shape[0],
        *logits.stride(), *dlogits.stride(),
    ), dict(TAU_PTR=tau_in_memory, NEED_DTAU=need_tau, **plan.meta)))

    dpool = None
    if need_pool:
        plan = plans["pool"]
        dpool = torch.empty_like(pool)
        calls.append(KernelCall("pool", _compose_bwd_pool_kernel, plan.grid, (
            alpha, grad, dpool,
            batch, pool_size, length, width // heads,
            *grad.stride(), pool.stride(0), pool.stride(1),
            plan.tiles.n_jblocks, plan.tiles.per_head, heads,
        ), dict(UPCAST=upcast, **plan.meta)))
    return dlogits, dpool, dtau_parts, calls


def launch_forward(logits: torch.Tensor, pool: torch.Tensor, tau) -> torch.Tensor:
    """``[B, L, D]`` prompts in the pool's dtype."""
    out, calls = forward_calls(logits, pool, tau)
    for call in calls:
        call.launch()
    return out


def launch_backward(logits: torch.Tensor, pool: torch.Tensor, tau, grad: torch.Tensor, need_pool: bool,
                    need_tau: bool = False, sm_count: int | None = None):
    """(dlogits, dpool or None, dtau as a 0-dim fp32 tensor or None); ``sm_count`` overrides the
    device's (it decides how far the dalpha reduction is split)."""
    dlogits, dpool, dtau_parts, calls = backward_calls(logits, pool, tau, grad, need_pool, need_tau, sm_count)
    for call in calls:
        call.launch()
    return dlogits, dpool, (dtau_parts.sum() if need_tau else None)
