"""Fused ops for peapod-scale (installed as ``peapod_scale.kernels``).

``compose`` is the op the pool user prompt calls: the plain torch reference (``compose.py``) is the
ground truth and the default on CPU, the Triton kernels (``triton_compose.py``) are used on CUDA.
Importing this package never needs a GPU or triton: without triton only the reference path is
available.
"""

from .compose import ComposeFunction, check_compose_backend, compose, compose_reference, compose_triton
from .triton_support import TritonUnavailableError

__all__ = ["ComposeFunction", "TritonUnavailableError", "check_compose_backend", "compose", "compose_reference",
           "compose_triton"]
