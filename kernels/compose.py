"""Prompt composition: per-head gating softmax over a prompt pool, then the weighted sum.

    out[b, l, h*Dh:(h+1)*Dh] = sum_m softmax(logits[b, h, :] / tau)[m] * values[(b,) m, l, h*Dh:(h+1)*Dh]

``values`` is a shared pool ``[M, L, D]`` (PeaPOD's seed variant) or per-sample ``[B, M, L, D]``.
Head h owns the h-th D/H slice of the width.

This file holds the plain torch reference (the ground truth and the CPU default), the self-test that
holds the kernels against it once per device and dtypes, the ``torch.autograd.Function`` around the Triton
kernels, and ``compose``, which picks one at run time. The kernels and their launch plan are in
``triton_compose.py``; what else can stop them (no triton, no host compiler, no GPU) in ``triton_support.py``.

Per-sample values keep the reference path, in both directions. There is nothing to share across the
batch there: every value element is read once and used once (a batched mat-vec over a
``[B, M, L, D]`` tensor, and ``dvalues`` is an outer product of the same size), so a kernel could only
save the reference's fp32 up-cast. ``backend="auto"`` routes them to the reference;
``backend="triton"`` refuses them with a clear error rather than silently falling back.
"""

from __future__ import annotations

import functools
import warnings

import torch
from torch.autograd.function import once_differentiable

from .triton_compose import FLOAT_DTYPES, MAX_POOL_SIZE_TRITON, launch_backward, launch_forward
from .triton_support import TritonUnavailableError, environment_problem, one_line


def _check_shapes(logits: torch.Tensor, values: torch.Tensor) -> tuple[int, int, int, int, int]:
    """Validate ``logits [B, H, M]`` against ``values [(B,) M, L, D]``; return (B, H, M, L, D)."""
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, H, M], got shape {tuple(logits.shape)}")
    batch, heads, pool = logits.shape
    if values.dim() not in (3, 4):
        raise ValueError(f"values must be [M, L, D] or [B, M, L, D], got shape {tuple(values.shape)}")
    if values.dim() == 4 and values.shape[0] != batch:
        raise ValueError(f"per-sample values have B={values.shape[0]} but logits have B={batch}")
    m_dim, length, width = values.shape[-3:]
    if m_dim != pool:
        raise ValueError(f"logits have M={pool} but values have M={m_dim}")
    if heads == 0 or width % heads:
        raise ValueError(f"H={heads} heads must divide the width D={width}")
    return batch, heads, pool, length, width


def compose_reference(logits: torch.Tensor, values: torch.Tensor, tau: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Plain torch ground truth; accumulates in fp32 and returns ``values``' dtype."""
    batch, heads, _, length, width = _check_shapes(logits, values)
    weights = torch.softmax(logits.float() / tau, dim=-1)  # [B, H, M]
    head_values = values.float().reshape(*values.shape[:-1], heads, width // heads)  # [(B,) M, L, H, Dh]
    if values.dim() == 3:
        out = torch.einsum("bhm,mlhd->blhd", weights, head_values)
    else:
        out = torch.einsum("bhm,bmlhd->blhd", weights, head_values)
    return out.reshape(batch, length, width).to(values.dtype)


# -- can the kernels run here? Found out by trying, once per device and dtypes (see triton_support.py) --------------

def _self_test_problem(device: torch.device, logits_dtype: torch.dtype, values_dtype: torch.dtype) -> str | None:
    """Forward and backward on tiny inputs, against the reference (its own generator: the global RNG
    stream, which training and its resume depend on, is not touched)."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 3, generator=gen).to(device, logits_dtype)
    pool = torch.randn(3, 2, 32, generator=gen).to(device, values_dtype)
    grad = torch.randn(2, 2, 32, generator=gen).to(device, values_dtype)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    try:
        got = [launch_forward(logits, pool, 1.0), *launch_backward(logits, pool, 1.0, grad, need_pool=True)[:2]]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except Exception as error:  # noqa: BLE001 - compile or launch failures are the answer
        return f"the kernels do not compile or run on {where} ({one_line(error)})"
    leaves = [logits.detach().requires_grad_(), pool.detach().requires_grad_()]
    want_out = compose_reference(*leaves, 1.0)
    want_out.backward(grad)
    tolerance = 1e-4 if values_dtype == logits_dtype == torch.float32 else 3e-2
    for name, g, w in zip(("output", "dlogits", "dpool"), got, (want_out.detach(), leaves[0].grad, leaves[1].grad)):
        error = float((g.float() - w.float()).abs().max()) / max(float(w.float().abs().max()), 1e-6)
        if not error <= tolerance:
            return f"the kernels give wrong results on {where} ({name}: relative error {error:.1e})"
    return None


@functools.lru_cache(maxsize=None)
def triton_problem(device: torch.device, logits_dtype: torch.dtype = torch.float32,
                   values_dtype: torch.dtype = torch.float32) -> str | None:
    """Why the Triton path cannot run on ``device`` for these dtypes, or None when it can."""
    device = torch.device(device)
    return environment_problem(device) or _self_test_problem(device, logits_dtype, values_dtype)


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=4)


def use_triton(backend: str, device: torch.device, logits_dtype: torch.dtype = torch.float32,
               values_dtype: torch.dtype = torch.float32) -> bool:
    """For ``backend='auto'``: whether the kernels can run (else one warning, and the reference is used).
    For ``backend='triton'``: True, or ``TritonUnavailableError`` saying what to fix."""
    problem = triton_problem(torch.device(device), logits_dtype, values_dtype)
    if problem is None:
        return True
    if backend == "triton":
        raise TritonUnavailableError(f"--compose triton cannot run on {device}: {problem} (or choose --compose auto "
                                     "or torch)")
    _warn_once(f"compose: the Triton kernels cannot run on {device} ({problem}); using the torch reference "
               "(--compose torch chooses it without this check)")
    return False


def _check_triton(logits: torch.Tensor, pool: torch.Tensor, tau) -> None:
    """Everything the kernels assume, checked before any launch, with messages that say what to do."""
    _, _, pool_size, _, _ = _check_shapes(logits, pool)
    if pool.dim() == 4:
        raise NotImplementedError(
            "the Triton compose kernel handles a shared pool [M, L, D] only; per-sample values "
            "[B, M, L, D] use the reference (backend='auto' or 'torch'), see the module docstring")
    for name, tensor in (("logits", logits), ("values", pool)):
        if tensor.dtype not in FLOAT_DTYPES:
            raise TypeError(f"Triton compose needs fp32, bf16 or fp16 {name}, got {tensor.dtype}")
    if logits.device != pool.device:
        raise ValueError(f"logits on {logits.device} but values on {pool.device}")
    if pool_size == 0:
        raise ValueError("the pool is empty (M=0)")
    if pool_size > MAX_POOL_SIZE_TRITON:
        raise ValueError(f"Triton compose supports M <= {MAX_POOL_SIZE_TRITON}, got M={pool_size}; use backend='torch'")
    if isinstance(tau, torch.Tensor) and tau.numel() != 1:
        raise ValueError(f"Triton compose needs a scalar tau, got shape {tuple(tau.shape)}")
    if isinstance(tau, torch.Tensor) and tau.device != pool.device and not (tau.device.type == "cpu" and tau.dim() == 0):
        raise ValueError(f"tau on {tau.device} with values on {pool.device}: a tau tensor goes on the values' device, "
                         "or is a 0-dim CPU tensor (torch's rule for scalars)")
    use_triton("triton", pool.device, logits.dtype, pool.dtype)  # raises TritonUnavailableError, saying why


class ComposeFunction(torch.autograd.Function):
    """Autograd wrapper of the Triton kernels (shared pool). The backward is not itself differentiable
    (``once_differentiable``: a double backward raises instead of returning silently wrong zeros).

    tau: a float, or a one-element tensor on the values' device, or a 0-dim CPU tensor; its gradient is
    computed (and launched) only when it requires one, and returned on tau's own device.
    """

    @staticmethod
    def forward(ctx, logits, pool, tau):
        pool = pool.contiguous()
        tau_is_tensor = isinstance(tau, torch.Tensor)
        ctx.save_for_backward(logits, pool, tau if tau_is_tensor else None)
        ctx.tau = None if tau_is_tensor else tau
        return launch_forward(logits, pool, tau)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        logits, pool, tau_tensor = ctx.saved_tensors
        tau = ctx.tau if tau_tensor is None else tau_tensor
        need_logits, need_pool, need_tau = ctx.needs_input_grad
        if grad.numel():
            dlogits, dpool, dtau = launch_backward(logits, pool, tau, grad, need_pool, need_tau)
        else:
            dlogits, dpool = torch.zeros_like(logits), torch.zeros_like(pool)
            dtau = logits.new_zeros((), dtype=torch.float32) if need_tau else None
        grad_tau = dtau.reshape(tau.shape).to(device=tau.device, dtype=tau.dtype) if need_tau else None
        return (dlogits if need_logits else None), (dpool if need_pool else None), grad_tau


def compose_triton(logits: torch.Tensor, pool: torch.Tensor, tau: float | torch.Tensor = 1.0) -> torch.Tensor:
    """The fused kernel: ``[B, L, D]`` prompts from a shared pool."""
    _check_triton(logits, pool, tau)
    return ComposeFunction.apply(logits, pool, tau)


def _triton_fits(logits: torch.Tensor, values: torch.Tensor, tau) -> bool:
    """What ``backend='auto'`` offers the kernel: CUDA, shared pool, supported dtypes and sizes."""
    return (values.is_cuda and logits.device == values.device and values.dim() == 3
            and logits.dtype in FLOAT_DTYPES and values.dtype in FLOAT_DTYPES
            and 0 < values.shape[0] <= MAX_POOL_SIZE_TRITON
            and not (isinstance(tau, torch.Tensor) and tau.numel() != 1))


def compose(logits: torch.Tensor, values: torch.Tensor, tau: float | torch.Tensor = 1.0,
            backend: str = "auto") -> torch.Tensor:
    """Dispatch: ``auto`` picks Triton on CUDA where it can run (else one warning and the reference)
    and the torch reference elsewhere; ``triton`` insists (``TritonUnavailableError`` where it cannot run)."""
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"compose backend must be auto, torch or triton, got {backend!r}")
    _check_shapes(logits, values)
    if backend == "triton" or (backend == "auto" and _triton_fits(logits, values, tau)
                               and use_triton("auto", values.device, logits.dtype, values.dtype)):
        return compose_triton(logits, values, tau)
    return compose_reference(logits, values, tau)


def check_compose_backend(backend: str, device: torch.device | str, dtype: torch.dtype = torch.float32) -> str:
    """The path a shared pool of ``dtype`` on ``device`` will take, ``'triton'`` or ``'torch'``, found
    before training starts: ``--compose triton`` that cannot run raises ``TritonUnavailableError`` (a
    ValueError: one ``error:`` line from the CLI), ``auto`` warns once where it falls back."""
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"--compose must be auto, torch or triton, got {backend!r}")
    if backend == "torch" or (backend == "auto" and torch.device(device).type != "cuda"):
        return "torch"
    return "triton" if use_triton(backend, device, dtype, dtype) else "torch"
