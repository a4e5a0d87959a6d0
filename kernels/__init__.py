"""Fused ops for peapod-scale (installed as ``peapod_scale.kernels``).

``compose`` is the op the pool user prompt calls: the plain torch reference (``compose.py``) is the
ground truth and the default on CPU, the Triton kernels (``triton_compose.py``) are used on CUDA.
Importing this package never needs a GPU or triton: without triton only the reference path is
available.

This folder sits at the top of the repository, so a process whose ``sys.path`` holds the repository
root (``python -m peapod_scale.train`` or ``python -m pytest`` started there, as srun and torchrun do)
can also find it as a top-level package ``kernels``: the import name of Hugging Face's hub-kernels
distribution, which transformers >= 5.25 requires and imports. Under that name this file loads the
installed distribution in its place, or fails as if no ``kernels`` were there. An ``__init__.py``-less
folder would never shadow a regular package, but setuptools' editable installs cannot map a namespace
folder into ``peapod_scale``.
"""

if __name__ != "peapod_scale.kernels":
    import importlib.machinery
    import importlib.util
    import sys
    from pathlib import Path

    _root = Path(__file__).resolve().parents[1]
    _spec = importlib.machinery.PathFinder.find_spec(
        __name__, [entry for entry in sys.path if Path(entry or ".").resolve() != _root])
    if _spec is None or _spec.loader is None:  # nothing installed under this name (or only namespace folders)
        raise ModuleNotFoundError(f"No module named {__name__!r} (the repository's kernels/ folder is peapod_scale.kernels)",
                                  name=__name__)
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[__name__] = _module  # the import statement returns what sys.modules holds after this file runs
    _spec.loader.exec_module(_module)
else:
    from .compose import ComposeFunction, check_compose_backend, compose, compose_reference, compose_triton
    from .triton_support import TritonUnavailableError

    __all__ = ["ComposeFunction", "TritonUnavailableError", "check_compose_backend", "compose", "compose_reference",
               "compose_triton"]
