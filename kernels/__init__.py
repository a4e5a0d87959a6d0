"""Fused ops for peapod-scale (installed as ``peapod_scale.kernels``).

``compose`` is the one op both user-prompt variants call; the plain torch reference is the ground
truth and the default on CPU, the Triton kernel is used on CUDA.
"""

from .compose import compose, compose_reference

__all__ = ["compose", "compose_reference"]
