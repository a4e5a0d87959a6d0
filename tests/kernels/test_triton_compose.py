"""Tests for ``peapod_scale.kernels.triton_compose``: the Triton kernels against the torch reference.

Why a subprocess for the kernel tests: Triton picks interpreter or compiler when ``@triton.jit``
decorates a function, that is when ``kernels/triton_compose.py`` is first imported, and only from the
``TRITON_INTERPRET`` variable as it is at that moment. Inside this pytest process the module is
already imported (by this file, or by any other test file or conftest collected before it), so
setting the variable here would be too late and the order of imports is not ours to control.
``test_triton_kernel_in_interpreter`` therefore starts a fresh ``python -m pytest`` on this file with
``TRITON_INTERPRET=1`` in its environment from the first line, and that child runs the
``TestTritonKernel`` class on CPU tensors. On a machine with a GPU the same class also runs here,
in-process, on CUDA tensors with the compiled kernels.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from peapod_scale.kernels import compose, compose_reference

from helpers import HAS_TRITON, REPO, TAU_TOLERANCE, TOLERANCE, grads_of, make_inputs

CHILD_FLAG = "PEAPOD_COMPOSE_INTERPRETER_CHILD"
IN_CHILD = os.environ.get(CHILD_FLAG) == "1"
KERNEL_DEVICE = "cpu" if IN_CHILD else "cuda"


def _nvidia_tool(name):
    if not HAS_TRITON:
        return None
    path = Path(importlib.util.find_spec("triton").origin).parent / "backends" / "nvidia" / "bin" / name
    return path if path.exists() else None


# (B, H, M, L, D), logits dtype, pool dtype, tau a tensor that needs a gradient
AOT_CASES = {
    "headline-bf16": ((256, 8, 64, 16, 1024), "bf16", "bf16", True),
    "headline-fp16": ((256, 8, 64, 16, 1024), "fp16", "fp16", True),
    "headline-fp32": ((256, 8, 64, 16, 1024), "fp32", "fp32", True),
    "pool256-bf16": ((256, 8, 256, 16, 1024), "bf16", "bf16", True),       # the launch plan's large-M branches
    "pool1024-bf16": ((64, 4, 1024, 3, 512), "bf16", "bf16", False),       # the largest M accepted
    "fp32-logits-bf16-pool": ((64, 4, 32, 3, 512), "fp32", "bf16", False),  # the model's shapes, float tau
    "batch1-head1-bf16": ((1, 1, 32, 3, 512), "bf16", "bf16", False),       # ints of 1 become constexprs
}
TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@pytest.mark.skipif(IN_CHILD or _nvidia_tool("ptxas") is None or _nvidia_tool("cuobjdump") is None,
                    reason="needs compiled-mode triton with its bundled ptxas and cuobjdump")
@pytest.mark.parametrize("case", list(AOT_CASES))
def test_kernels_compile_for_h100_as_launched(case):
    """Ahead-of-time compile for sm_90 (no GPU needed) of every launch the launchers make for a shape,
    with their arguments as Triton specialises them at a real launch (alignment and divisibility by
    16 of pointers and ints, ints of 1 as constants): catches what the interpreter does not check (dot
    shapes, layouts, type rules of the GPU backend) and, for 16-bit pools, register spills and
    missing tensor cores."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    module = importlib.import_module("peapod_scale.kernels.triton_compose")
    (batch, heads, pool_size, length, width), logits_dtype, pool_dtype, tensor_tau = AOT_CASES[case]
    logits = torch.zeros(batch, heads, pool_size, dtype=TORCH_DTYPES[logits_dtype])
    pool = torch.zeros(pool_size, length, width, dtype=TORCH_DTYPES[pool_dtype])
    grad = torch.zeros(batch, length, width, dtype=TORCH_DTYPES[pool_dtype])
    tau = torch.tensor(0.7) if tensor_tau else 0.7
    _, forward = module.forward_calls(logits, pool, tau, sm_count=132, upcast=False)
    *_, backward = module.backward_calls(logits, pool, tau, grad, need_pool=True, need_tau=tensor_tau,
                                         sm_count=132, upcast=False)
    assert [c.name for c in forward + backward] == ["fwd", "dalpha", "softmax", "pool"]
    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    for call in forward + backward:
        kernel = call.kernel
        binder = create_function_from_signature(kernel.signature, kernel.params, backend)
        bound, specialization, options = binder(*call.args, **call.meta)
        options, signature, constexprs, attrs = kernel._pack_args(backend, call.meta, bound, specialization, options)
        compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target,
                                  options=options.__dict__)
        cubin = Path(os.environ.get("TMPDIR", "/tmp")) / f"compose_{case}_{call.name}_{os.getpid()}.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        usage = subprocess.run([str(_nvidia_tool("cuobjdump")), "--dump-resource-usage", str(cubin)],
                               capture_output=True, text=True, check=True).stdout
        cubin.unlink()
        stack = int(re.search(r"STACK:(\d+)", usage).group(1))
        if pool_dtype != "fp32":
            assert stack == 0, f"{call.name} spills registers: {usage}"
            if call.name != "softmax":  # the only kernel without a matmul
                assert "mma" in compiled.asm["ptx"], f"{call.name} does not use tensor cores"


@pytest.mark.skipif(IN_CHILD or not HAS_TRITON, reason="starts the interpreter run; needs triton")
def test_triton_kernel_in_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", **{CHILD_FLAG: "1"})
    run = subprocess.run(
        [sys.executable, "-m", "pytest", str(Path(__file__).resolve()), "-q", "-k", "TestTritonKernel",
         "-p", "no:cacheprovider", "-W", "ignore::RuntimeWarning"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    report = run.stdout[-6000:] + run.stderr[-3000:]
    assert run.returncode == 0, report
    passed = re.search(r"(\d+) passed", run.stdout)
    assert passed and int(passed.group(1)) >= 25, report
    assert not re.search(r"\d+ (failed|skipped|error)", run.stdout), report
    print(run.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# The kernel: CPU tensors in the interpreter child, CUDA tensors in-process when there is a GPU
# ---------------------------------------------------------------------------------------------

SHAPES = [
    # (B, H, M, L, D): nothing a power of two where it can be avoided
    (2, 1, 5, 3, 12),     # H=1: whole-prompt softmax
    (3, 2, 7, 3, 20),     # head width 10, padded to 16
    (2, 4, 6, 11, 36),    # head width 9, two row blocks of the tile
    (70, 1, 70, 2, 136),  # several batch blocks, M chunks, pool blocks and column blocks
]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# every dtype on the small shapes; the largest in fp32 and bf16 only, to keep the interpreter run short
SHAPE_DTYPES = [(s, d) for s in SHAPES for d in DTYPES if s[0] < 8 or d is not torch.float16]


def triton_compose(logits, values, tau, **kwargs):
    return compose(logits, values, tau, backend="triton", **kwargs)


class TestTritonKernel:
    __test__ = IN_CHILD or torch.cuda.is_available()

    @pytest.mark.parametrize("shape,dtype", SHAPE_DTYPES, ids=str)
    def test_forward_and_grads_match_reference(self, shape, dtype):
        logits, values = make_inputs(*shape, dtype, KERNEL_DEVICE, seed=sum(shape))
        tau = torch.tensor(0.7, device=KERNEL_DEVICE)
        grad_out = torch.randn(shape[0], shape[3], shape[4]).to(KERNEL_DEVICE, dtype)
        got = grads_of(triton_compose, logits, values, tau, grad_out)
        want = grads_of(compose_reference, logits, values, tau, grad_out)
        assert got[0].dtype == dtype and got[1].dtype == dtype and got[2].dtype == dtype
        for name, g, w in zip(("out", "dlogits", "dvalues"), got[:3], want[:3]):
            torch.testing.assert_close(g, w, **TOLERANCE[dtype], msg=lambda m: f"{name}: {m}")
        torch.testing.assert_close(got[3], want[3], **TAU_TOLERANCE)

    @pytest.mark.parametrize("tau", [0.35, 2.0])
    def test_float_tau_and_fp32_logits_with_bf16_pool(self, tau):
        logits, values = make_inputs(3, 2, 7, 3, 20, torch.bfloat16, KERNEL_DEVICE, logits_dtype=torch.float32)
        grad_out = torch.randn(3, 3, 20).to(KERNEL_DEVICE, torch.bfloat16)
        got = grads_of(triton_compose, logits, values, tau, grad_out)
        want = grads_of(compose_reference, logits, values, tau, grad_out)
        assert got[3] is None and got[1].dtype == torch.float32
        torch.testing.assert_close(got[0], want[0], **TOLERANCE[torch.bfloat16])
        torch.testing.assert_close(got[1], want[1], **TOLERANCE[torch.float32])
        torch.testing.assert_close(got[2], want[2], **TOLERANCE[torch.bfloat16])

    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
    def test_nonfinite_forward_parity(self, dtype):
        logits, values = make_inputs(4, 2, 5, 3, 8, dtype, KERNEL_DEVICE)
        logits[0, 0, 1] = float("-inf")   # a masked pool entry: finite output
        logits[1, 1, :] = float("-inf")   # everything masked: NaN
        logits[2, 0, 0] = float("inf")    # NaN, like torch.softmax
        logits[3, 1, 3] = float("nan")
        values[2, 1, 5] = float("nan")    # 0 * NaN is NaN for every batch row, as in the reference
        if dtype is torch.float32:
            values[4, 2, 0] = float("inf")  # fp32 only: the 16-bit split-weight path turns inf into NaN
        out = triton_compose(logits, values, 1.3)
        ref = compose_reference(logits, values, 1.3)
        assert bool(out.isnan().any()) and bool(out.isfinite().any())
        assert torch.equal(out.isnan(), ref.isnan()) and torch.equal(out.isinf(), ref.isinf())
        torch.testing.assert_close(out, ref, equal_nan=True, **TOLERANCE[dtype])

    def test_masked_pool_entries_forward_and_backward(self):
        logits, values = make_inputs(3, 2, 70, 2, 8, torch.float32, KERNEL_DEVICE)
        logits[:, 0, 2] = float("-inf")
        logits[1, 1, :64] = float("-inf")  # a whole chunk of M masked: the online softmax must not NaN
        tau = torch.tensor(0.9, device=KERNEL_DEVICE)
        grad_out = torch.randn(3, 2, 8, device=KERNEL_DEVICE)
        got = grads_of(triton_compose, logits, values, tau, grad_out)
        want = grads_of(compose_reference, logits, values, tau, grad_out)
        for g, w in zip(got[:3], want[:3]):
            assert bool(g.isfinite().all())
            torch.testing.assert_close(g, w, **TOLERANCE[torch.float32])
        assert bool(got[1][:, 0, 2].eq(0).all()) and bool(got[1][1, 1, :64].eq(0).all())
        assert bool(got[3].isnan()) and bool(want[3].isnan())  # d/dtau of -inf/tau: 0 * inf in both

    @pytest.mark.parametrize("dtype,atol", [(torch.bfloat16, 0.05), (torch.float16, 0.004)])
    def test_weights_keep_fp32_precision_with_16bit_values(self, dtype, atol):
        """Values of +-256 that nearly cancel: a weight rounded to the values' dtype would be off by
        256 * 2**-9 (bf16) or 256 * 2**-12 (fp16) per term; the hi+lo split keeps ~2**-17."""
        batch, pool = 6, 8
        sign = torch.tensor([(-1.0) ** i for i in range(max(batch, pool))], device=KERNEL_DEVICE)
        logits = (0.01 * torch.randn(batch, 1, pool, generator=torch.Generator().manual_seed(0))).to(KERNEL_DEVICE)
        values = (256 * sign[:pool, None, None].expand(pool, 2, 16)).to(dtype)
        grad_out = (256 * sign[:batch, None, None].expand(batch, 2, 16)).to(dtype)
        got = grads_of(triton_compose, logits, values, 1.0, grad_out)
        want = grads_of(compose_reference, logits, values, 1.0, grad_out)
        assert float(want[0].float().abs().max()) < 4  # nearly cancelled: one bf16 step is <= 2**-6
        torch.testing.assert_close(got[0].float(), want[0].float(), rtol=0, atol=atol)
        torch.testing.assert_close(got[2].float(), want[2].float(), rtol=0, atol=atol)

    def test_backward_is_bitwise_repeatable(self):
        """Can fail only on a GPU, where programs run concurrently (the interpreter runs them one after
        another); the GPU check runs this class compiled."""
        logits, values = make_inputs(70, 2, 9, 3, 20, torch.bfloat16, KERNEL_DEVICE)
        tau = torch.tensor(0.8, device=KERNEL_DEVICE)
        grad_out = torch.randn(70, 3, 20).to(KERNEL_DEVICE, torch.bfloat16)
        first = grads_of(triton_compose, logits, values, tau, grad_out)
        second = grads_of(triton_compose, logits, values, tau, grad_out)
        for a, b in zip(first, second):
            assert torch.equal(a, b)
        leaf = values.detach().requires_grad_()
        out = triton_compose(logits, leaf, tau)
        out.backward(grad_out, retain_graph=True)
        once = leaf.grad.clone()
        out.backward(grad_out)
        assert torch.equal(leaf.grad, 2 * once)

    def test_strided_inputs_and_expanded_grad(self):
        logits, values = make_inputs(3, 2, 5, 4, 12, torch.float32, KERNEL_DEVICE)
        logits_t = logits.transpose(0, 2).contiguous().transpose(0, 2)  # same values, other strides
        values_t = values.transpose(0, 1).contiguous().transpose(0, 1)
        assert not logits_t.is_contiguous() and not values_t.is_contiguous()
        got = grads_of(triton_compose, logits_t, values_t, 1.1, torch.ones(1, 1, 1, device=KERNEL_DEVICE).expand(3, 4, 12))
        want = grads_of(compose_reference, logits, values, 1.1, torch.ones(3, 4, 12, device=KERNEL_DEVICE))
        for g, w in zip(got[:3], want[:3]):
            torch.testing.assert_close(g, w, **TOLERANCE[torch.float32])

    def test_empty_batch(self):
        logits, values = make_inputs(0, 2, 5, 4, 12, torch.float32, KERNEL_DEVICE)
        out = triton_compose(logits.requires_grad_(), values.requires_grad_(), 1.0)
        assert out.shape == (0, 4, 12)
        out.sum().backward()
        assert bool((values.grad == 0).all())

    @pytest.mark.parametrize("sm_count", [1, 8, 1000])
    def test_any_split_of_the_dalpha_reduction_gives_the_reference_gradients(self, sm_count):
        """1 SM: one partial per head; 8: two uneven splits (5 + 4 tiles); 1000: every column tile its own
        partial (summed in order)."""
        from peapod_scale.kernels.triton_compose import launch_backward, launch_plan

        shape = (70, 2, 70, 3, 272)  # 3 x 3 column tiles a head, two batch and two pool blocks
        splits = launch_plan(*shape, sm_count=sm_count)["dalpha"].args["splits"]
        assert splits == {1: 1, 8: 2, 1000: 9}[sm_count]
        logits, values = make_inputs(*shape, torch.float32, KERNEL_DEVICE, seed=3)
        grad_out = torch.randn(70, 3, 272, generator=torch.Generator().manual_seed(1)).to(KERNEL_DEVICE)
        tau = torch.tensor(0.9, device=KERNEL_DEVICE)
        want = grads_of(compose_reference, logits, values, tau, grad_out)
        dlogits, dpool, dtau = launch_backward(logits, values, tau, grad_out, need_pool=True, need_tau=True,
                                               sm_count=sm_count)
        for got, ref in zip((dlogits, dpool, dtau), want[1:]):
            torch.testing.assert_close(got, ref.reshape(got.shape), **TOLERANCE[torch.float32])
        again = launch_backward(logits, values, tau, grad_out, need_pool=True, need_tau=True, sm_count=sm_count)
        assert all(torch.equal(a, b) for a, b in zip((dlogits, dpool, dtau), again))

    def test_the_backward_cannot_be_differentiated_again(self):
        logits, values = make_inputs(3, 2, 5, 2, 16, torch.float32, KERNEL_DEVICE)
        logits.requires_grad_()
        out = triton_compose(logits, values, 0.7)
        grad_out = torch.ones_like(out, requires_grad=True)  # a double backward differentiates through this
        (dlogits,) = torch.autograd.grad(out, logits, grad_out, create_graph=True)
        with pytest.raises(RuntimeError, match="once_differentiable"):
            dlogits.sum().backward()



class TestCompiledKernelOnGPU:
    """What only a GPU shows: a CPU tau beside CUDA tensors, the kernels a backward launches."""

    __test__ = not IN_CHILD and torch.cuda.is_available()

    def test_a_0dim_cpu_tau_works_beside_cuda_tensors_and_others_are_refused(self):
        logits, values = make_inputs(3, 2, 7, 3, 20, torch.float32, KERNEL_DEVICE)
        grad_out = torch.randn(3, 3, 20, device=KERNEL_DEVICE)
        got = grads_of(triton_compose, logits, values, torch.tensor(0.6), grad_out)
        want = grads_of(compose_reference, logits, values, torch.tensor(0.6), grad_out)
        assert got[3].device.type == "cpu"
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, **TOLERANCE[torch.float32])
        with pytest.raises(ValueError, match="0-dim CPU tensor"):
            triton_compose(logits, values, torch.tensor([0.6]))

    def test_a_float_tau_launches_no_dtau_work(self):
        logits, values = make_inputs(64, 4, 32, 3, 512, torch.bfloat16, KERNEL_DEVICE)
        grad_out = torch.randn(64, 3, 512).to(KERNEL_DEVICE, torch.bfloat16)

        def backward_kernels(tau):
            a, v = logits.detach().requires_grad_(), values.detach().requires_grad_()
            out = triton_compose(a, v, tau)
            torch.cuda.synchronize()
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                out.backward(grad_out)
                torch.cuda.synchronize()
            return [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]

        assert sorted(backward_kernels(0.7)) == ["_compose_bwd_dalpha_kernel", "_compose_bwd_pool_kernel",
                                                 "_compose_bwd_softmax_kernel"]
        assert len(backward_kernels(torch.tensor(0.7, device=KERNEL_DEVICE, requires_grad=True))) > 3


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_dtau_work_is_planned_only_when_tau_needs_a_gradient():
    """The launches the backward would make, read before any launch (no GPU or interpreter needed)."""
    from peapod_scale.kernels.triton_compose import backward_calls

    logits, values = make_inputs(4, 2, 5, 3, 32, torch.float32)
    grad = torch.zeros(4, 3, 32)
    for tau, need_tau in ((0.7, False), (torch.tensor(0.7), False), (torch.tensor(0.7), True)):
        *_, dtau_parts, calls = backward_calls(logits, values, tau, grad, need_pool=True, need_tau=need_tau)
        softmax = next(c for c in calls if c.name == "softmax")
        assert softmax.meta["NEED_DTAU"] is need_tau and (dtau_parts is not None) is need_tau
        assert softmax.meta["TAU_PTR"] is isinstance(tau, torch.Tensor)

