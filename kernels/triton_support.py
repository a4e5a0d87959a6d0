"""Can the Triton kernels run here? Found out by trying, once per device and dtypes, before they are used.

What stops them in practice, and how each is found:

* triton is not importable (a CPU-only install, a broken wheel): the import in ``triton_compose``.
* no host C compiler, or no Python headers: at a kernel's first launch Triton builds a small C
  launcher for its signature with the host compiler (``CC``, else gcc or clang on ``PATH``), so a
  container without one dies at step 1. A trivial module is built the same way (Triton's own build
  function, outside its cache), so a cached launcher from an earlier run cannot hide the problem
  for the next signature.
* a GPU Triton cannot target (too old for its backend, a driver it does not support): the kernels
  are compiled and launched on tiny inputs, forward and backward, and their results compared with
  the reference.
* CPU tensors: the compiled kernels target GPUs; on CPU they run only in Triton's interpreter
  (``TRITON_INTERPRET=1`` set before ``peapod_scale.kernels`` is imported), which needs no compiler.

``compose(..., backend="auto")`` falls back to the torch reference with one warning when a problem
is found; ``backend="triton"`` raises ``TritonUnavailableError`` with the problems and what to do.
The answers are cached for the life of the process: the environment does not change under it.
"""

from __future__ import annotations

import functools
import tempfile
import warnings
from pathlib import Path

import torch

from . import triton_compose
from .triton_compose import kernels_interpreted, launch_backward, launch_forward


class TritonUnavailableError(RuntimeError, ValueError):
    """``--compose triton`` cannot be honoured on this machine. A ValueError too, so that the CLI,
    which turns ValueErrors into one ``error:`` line, reports it as the option problem it is."""


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}"


def host_compiler_problem() -> str | None:
    """Build a trivial C extension the way Triton builds its launchers; None when that works."""
    try:
        from triton.runtime.build import _build
    except ImportError:  # another Triton layout: the probe launch below still exercises the real build
        return None
    with tempfile.TemporaryDirectory(prefix="peapod_cc_probe_") as scratch:
        source = Path(scratch) / "peapod_cc_probe.c"
        source.write_text("#include <Python.h>\nint peapod_cc_probe(void) { return 0; }\n")
        try:
            _build("peapod_cc_probe", str(source), scratch, [], [], [], [])
        except Exception as error:  # noqa: BLE001 - any failure to build is the answer
            return (f"Triton builds a C launcher for each kernel with the host C compiler and that failed "
                    f"({_one_line(error)}): install gcc or clang and the Python headers, or point CC at a compiler")
    return None


def _device_problem(device: torch.device) -> str | None:
    if device.type == "cpu" and not kernels_interpreted():
        return ("the compiled kernels target GPUs; CPU tensors run only in Triton's interpreter: set "
                "TRITON_INTERPRET=1 before peapod_scale.kernels is imported")
    if device.type not in ("cpu", "cuda"):
        return f"the kernels are written for CUDA GPUs, not {device.type}"
    if device.type == "cuda" and not torch.cuda.is_available():
        return "torch sees no CUDA device"
    return None


def _launch_problem(device: torch.device, logits_dtype: torch.dtype, values_dtype: torch.dtype) -> str | None:
    """Forward and backward on tiny inputs, against the reference (its own generator: the global RNG
    stream, which training and its resume depend on, is not touched)."""
    from .compose import compose_reference

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
        return f"the kernels do not compile or run on {where} ({_one_line(error)})"
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
    if triton_compose.triton is None:
        return f"the triton package is not importable here ({triton_compose.TRITON_IMPORT_ERROR}): pip install triton"
    problems = [] if kernels_interpreted() else [host_compiler_problem()]
    problems.append(_device_problem(device))
    problems = [p for p in problems if p]
    if problems:
        return "; and ".join(problems)
    return _launch_problem(device, logits_dtype, values_dtype)


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
