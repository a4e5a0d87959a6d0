"""Can the Triton kernels run here? Found out by trying, once per device and dtypes, before they are used.

What stops them in practice, and how each is found:

* triton is not importable (a CPU-only install, a broken wheel): the import in ``triton_compose``.
* no host C compiler, or no Python headers: at a kernel's first launch Triton builds a small C
  launcher for its signature with the host compiler (``CC``, else gcc or clang on ``PATH``), so a
  container without one dies at step 1. A trivial module is built the same way (Triton's own build
  function, outside its cache), so a cached launcher from an earlier run cannot hide the problem
  for the next signature.
* a GPU Triton cannot target (too old for its backend, a driver it does not support): ``compose.py``
  compiles and launches the kernels on tiny inputs, forward and backward, and compares their results
  with its reference (that self-test lives beside the reference, so this file imports no op).
* CPU tensors: the compiled kernels target GPUs; on CPU they run only in Triton's interpreter
  (``TRITON_INTERPRET=1`` set before ``peapod_scale.kernels`` is imported), which needs no compiler.

``compose(..., backend="auto")`` falls back to the torch reference with one warning when a problem
is found; ``backend="triton"`` raises ``TritonUnavailableError`` with the problems and what to do.
``compose.triton_problem`` caches the answers for the life of the process: the environment does not change
under it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from . import triton_compose
from .triton_compose import kernels_interpreted


class TritonUnavailableError(RuntimeError, ValueError):
    """``--compose triton`` cannot be honoured on this machine. A ValueError too, so that the CLI,
    which turns ValueErrors into one ``error:`` line, reports it as the option problem it is."""


def one_line(error: BaseException) -> str:
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
                    f"({one_line(error)}): install gcc or clang and the Python headers, or point CC at a compiler")
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


def environment_problem(device: torch.device) -> str | None:
    """What stops the kernels on ``device`` before any launch (import, host compiler, device), or None."""
    device = torch.device(device)
    if triton_compose.triton is None:
        return f"the triton package is not importable here ({triton_compose.TRITON_IMPORT_ERROR}): pip install triton"
    problems = [] if kernels_interpreted() else [host_compiler_problem()]
    problems.append(_device_problem(device))
    problems = [p for p in problems if p]
    return "; and ".join(problems) if problems else None
