"""Tests for ``peapod_scale.kernels.compose``: the torch reference, the dispatch and its argument checks.

The Triton kernels themselves (interpreter on CPU, compiled on a GPU, ahead-of-time compiles) are
tested in ``test_kernels_triton_compose.py``; the helpers here (inputs, gradients, tolerances) are
shared with it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from peapod_scale.kernels import TritonUnavailableError, check_compose_backend, compose, compose_reference

from helpers import HAS_TRITON, REPO, grads_of, make_inputs

# ---------------------------------------------------------------------------------------------
# In-process: the reference path, dispatch, argument checks (no kernel launch)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("per_sample", [False, True])
def test_cpu_default_path_is_the_reference(dtype, per_sample):
    logits, values = make_inputs(3, 2, 5, 4, 6, dtype)
    if per_sample:
        values = torch.randn(3, 5, 4, 6).to(dtype)
    tau = torch.tensor(0.6)
    grad_out = torch.randn(3, 4, 6).to(dtype)
    for backend in ("auto", "torch"):
        got = grads_of(lambda a, b, t: compose(a, b, t, backend=backend), logits, values, tau, grad_out)
        want = grads_of(compose_reference, logits, values, tau, grad_out)
        for g, w in zip(got, want):
            assert torch.equal(g, w)


def test_reference_matches_a_per_head_loop():
    """The reference itself, against the formula written out head by head."""
    logits, values = make_inputs(2, 3, 4, 2, 9, torch.float64)
    out = compose_reference(logits, values, 0.5)
    for h in range(3):
        alpha = torch.softmax(logits[:, h] / 0.5, dim=-1)
        cols = slice(3 * h, 3 * h + 3)
        torch.testing.assert_close(out[:, :, cols], torch.einsum("bm,mld->bld", alpha, values[:, :, cols]))


BAD_INPUTS = [
    # (logits shape, values shape, error, message fragment)
    ((2, 4), (3, 2, 8), ValueError, "logits must be"),
    ((2, 2, 3), (3, 8), ValueError, "values must be"),
    ((2, 2, 3), (4, 2, 8), ValueError, "M=3"),
    ((2, 3, 3), (3, 2, 8), ValueError, "must divide"),
    ((2, 2, 3), (5, 3, 2, 8), ValueError, "B=5"),
]


@pytest.mark.parametrize("backend", ["auto", "torch", "triton"])
@pytest.mark.parametrize("logits_shape,values_shape,error,match", BAD_INPUTS)
def test_bad_shapes_raise(backend, logits_shape, values_shape, error, match):
    with pytest.raises(error, match=match):
        compose(torch.randn(logits_shape), torch.randn(values_shape), backend=backend)


def test_triton_backend_rejects_what_it_does_not_handle():
    logits, values = make_inputs(2, 2, 3, 4, 6, torch.float32)
    with pytest.raises(ValueError, match="backend must be"):
        compose(logits, values, backend="cuda")
    with pytest.raises(NotImplementedError, match="per-sample"):
        compose(logits, torch.randn(2, 3, 4, 6), backend="triton")
    with pytest.raises(TypeError, match="fp32, bf16 or fp16 values"):
        compose(logits, values.double(), backend="triton")
    with pytest.raises(TypeError, match="fp32, bf16 or fp16 logits"):
        compose(logits.to(torch.int32), values, backend="triton")
    with pytest.raises(ValueError, match="scalar tau"):
        compose(logits, values, torch.ones(2, 1, 1), backend="triton")


@pytest.mark.skipif(not HAS_TRITON or os.environ.get("TRITON_INTERPRET") == "1", reason="needs compiled-mode triton")
def test_triton_on_cpu_without_interpreter_says_how_to_run_it():
    logits, values = make_inputs(2, 2, 3, 4, 6, torch.float32)
    with pytest.raises(TritonUnavailableError, match="TRITON_INTERPRET=1") as raised:
        compose(logits, values, backend="triton")
    assert isinstance(raised.value, ValueError) and "\n" not in str(raised.value)  # one `error:` line in the CLI
    with pytest.raises(TritonUnavailableError, match="TRITON_INTERPRET=1"):
        check_compose_backend("triton", "cpu")
    assert check_compose_backend("auto", "cpu") == "torch" and check_compose_backend("torch", "cpu") == "torch"


def _python(code: str, tmp_path: Path, **env) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter; ``CC`` is dropped and ``env`` (None: drop) applied."""
    environment = {k: v for k, v in os.environ.items() if k not in ("CC", "TRITON_INTERPRET")}
    environment.update({k: v for k, v in env.items() if v is not None})
    for key in (k for k, v in env.items() if v is None):
        environment.pop(key, None)
    environment.setdefault("TRITON_CACHE_DIR", str(tmp_path / "triton-cache"))  # no launcher built earlier
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=300)


NO_COMPILER_CHECK = """
    import torch, warnings
    from peapod_scale.kernels import TritonUnavailableError, compose, compose_reference
    a, v = torch.randn(2, 2, 3), torch.randn(3, 4, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto on CPU: the reference, silently
        assert torch.equal(compose(a, v, 0.5), compose_reference(a, v, 0.5))
    try:
        compose(a, v, 0.5, backend="triton")
    except TritonUnavailableError as error:
        print("ERROR " + str(error))
"""


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
@pytest.mark.parametrize("compiler", ["none on PATH", "CC names a missing file"])
def test_a_missing_host_compiler_is_named_before_any_launch(tmp_path, compiler):
    """No C compiler for Triton's launchers, for real: PATH holds no compiler (and CC is unset), or CC
    points at a file that does not exist. The interpreter is off, so the kernels would be compiled."""
    env = {"PATH": str(tmp_path)} if compiler == "none on PATH" else {"CC": str(tmp_path / "no-such-cc")}
    run = _python(NO_COMPILER_CHECK, tmp_path, **env)
    errors = [line for line in run.stdout.splitlines() if line.startswith("ERROR ")]
    assert run.returncode == 0 and len(errors) == 1, run.stdout + run.stderr
    message = errors[0]
    assert "C compiler" in message and "install gcc or clang" in message, message
    assert ("Failed to find C compiler" if compiler == "none on PATH" else "FileNotFoundError") in message
    assert "TRITON_INTERPRET=1" in message  # CPU tensors: the other thing to fix, in the same line


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_the_interpreter_needs_no_host_compiler(tmp_path):
    run = _python("""
        import torch
        from peapod_scale.kernels import compose, compose_reference
        a, v = torch.randn(2, 2, 3), torch.randn(3, 4, 32)
        error = (compose(a, v, 0.5, backend="triton") - compose_reference(a, v, 0.5)).abs().max().item()
        print(f"ERROR {error}")
    """, tmp_path, PATH=str(tmp_path), TRITON_INTERPRET="1")
    assert run.returncode == 0, run.stdout + run.stderr
    assert float(run.stdout.split("ERROR ")[1]) < 1e-5


@pytest.mark.skipif(not torch.cuda.is_available() or not HAS_TRITON, reason="needs a CUDA GPU")
def test_auto_on_gpu_without_a_host_compiler_falls_back_with_one_warning(tmp_path):
    run = _python("""
        import torch, warnings
        from peapod_scale.kernels import TritonUnavailableError, compose, compose_reference
        a, v = torch.randn(4, 2, 8, device="cuda"), torch.randn(8, 3, 64, device="cuda")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                assert torch.equal(compose(a, v, 0.5), compose_reference(a, v, 0.5))
        print("WARNINGS", len(caught), caught[0].message if caught else "")
        try:
            compose(a, v, 0.5, backend="triton")
        except TritonUnavailableError as error:
            print("ERROR " + str(error))
    """, tmp_path, PATH=str(tmp_path))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "WARNINGS 1 compose: the Triton kernels cannot run on cuda" in run.stdout, run.stdout
    assert "C compiler" in run.stdout.split("ERROR ")[1], run.stdout


def test_import_and_cpu_path_work_without_triton():
    code = (
        "import sys\n"
        "sys.modules['triton'] = None  # makes `import triton` raise ImportError\n"
        "sys.modules['triton.language'] = None\n"
        "import torch\n"
        "from peapod_scale.kernels import compose, compose_reference\n"
        "a, v = torch.randn(2, 2, 3), torch.randn(3, 4, 6)\n"
        "assert torch.equal(compose(a, v, 0.5), compose_reference(a, v, 0.5))\n"
        "try:\n"
        "    compose(a, v, backend='triton')\n"
        "except RuntimeError as e:\n"
        "    assert 'triton package' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('backend=triton without triton did not raise')\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout + run.stderr
