"""Benchmark the prompt composition op: eager torch reference vs torch.compile of it vs the Triton kernel.

    python benchmarks/bench_prompt_compose.py                       # headline shapes, bf16
    python benchmarks/bench_prompt_compose.py --shapes training --mode full
    python benchmarks/bench_prompt_compose.py --sweep --dtype bf16 fp16
    python benchmarks/bench_prompt_compose.py -B 64 256 -M 64 -L 16 -D 1024 -H 8 --mode full

On a GPU, per shape and dtype: first the kernel's output and gradients are checked against the
reference (a mismatch is reported and that shape is not timed); ``torch.compile`` is compiled for that
shape alone (``dynamic=False`` after ``torch._dynamo.reset()``, so a sweep never compares against a
dynamic-shape graph or a fallback to eager); then medians and 20/80% quantiles from
``triton.testing.do_bench`` and, beside them, the median of a CUDA-graph replay
(``do_bench_cudagraph``: launch overhead removed, which dominates eager at D = 1024), effective
bandwidth (the bytes the op must move at least, over the median time) and its fraction of a
device-to-device copy measured in the same run, peak memory above the inputs, speedups vs eager and
vs compile. One JSON row per measurement (with the commit measured) is appended to
``benchmarks/results/bench_prompt_compose.jsonl`` (``--results`` elsewhere), a table is printed and,
with matplotlib installed, a plot is saved next to the JSON.

Shapes: ``headline`` B=256, H=8, M=64, L=16, D=1024/4096 (the goals below); ``training`` PeaPOD's
real training shapes, M=32, L=3, H=4, B 32-256, D 512-4096 (t5-small to flan-t5-xxl widths).

Without a GPU there is nothing to time: the script says so, checks the kernel against the reference
in Triton's interpreter on small shapes, and reports no timings.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from pathlib import Path

import torch

import common

# Triton chooses interpreter or compiler when the kernels are decorated, i.e. when the kernels module is
# imported: without a GPU the interpreter must be switched on before that import.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from peapod_scale.kernels.compose import compose_reference, compose_triton  # noqa: E402

try:
    import triton
    import triton.testing
except Exception:  # noqa: BLE001 - any broken install means "no triton" here
    triton = None

ROWS_FILE = "bench_prompt_compose.jsonl"  # in --results
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PROVIDERS = ("eager", "compile", "triton")
MODES = ("forward", "backward", "full")
HEADLINE = dict(B=256, H=8, M=64, L=16)  # D in {1024, 4096}
TRAINING = dict(B=(32, 64, 256), H=4, M=32, L=3, D=(512, 768, 1024, 4096))  # t5-small, -base, -large, flan-t5-xxl
# GPU goals at the headline shapes, bf16, full forward+backward (not yet measured)
GOALS = dict(vs_eager=1.5, vs_compile=1.2, copy_fraction=0.70)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-B", "--batch", type=int, nargs="+", default=[HEADLINE["B"]])
    p.add_argument("-H", "--heads", type=int, nargs="+", default=[HEADLINE["H"]])
    p.add_argument("-M", "--pool", type=int, nargs="+", default=[HEADLINE["M"]])
    p.add_argument("-L", "--length", type=int, nargs="+", default=[HEADLINE["L"]])
    p.add_argument("-D", "--width", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), default=["bf16"])
    p.add_argument("--shapes", choices=["headline", "training"], default=None,
                   help="a named shape set instead of the product of -B/-H/-M/-L/-D")
    p.add_argument("--sweep", action="store_true",
                   help="vary one of B (64-1024), M (16-256), L (8-32), D (512-4096), H (1-16) at a time "
                        "around the headline shape, instead of the product of -B/-H/-M/-L/-D")
    p.add_argument("--mode", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--provider", nargs="+", choices=PROVIDERS, default=list(PROVIDERS))
    p.add_argument("--tau", type=float, default=0.7)
    p.add_argument("--warmup-ms", type=int, default=25)
    p.add_argument("--rep-ms", type=int, default=100)
    p.add_argument("--copy-mib", type=int, default=1024, help="size of the device-to-device copy reference")
    p.add_argument("--results", type=Path, default=common.RESULTS, help="folder for the JSON rows and the plot")
    p.add_argument("--no-graph", action="store_true", help="skip the CUDA-graph figure")
    p.add_argument("--no-save", action="store_true", help="print only: no JSON rows, no plot")
    return p.parse_args(argv)


def shapes(args) -> list[dict]:
    if args.shapes == "headline":
        return [dict(HEADLINE, D=d) for d in (1024, 4096)]
    if args.shapes == "training":
        fixed = {k: v for k, v in TRAINING.items() if k not in ("B", "D")}
        return [dict(fixed, B=b, D=d) for b in TRAINING["B"] for d in TRAINING["D"]]
    if not args.sweep:
        grid = itertools.product(args.batch, args.heads, args.pool, args.length, args.width)
        return [dict(B=b, H=h, M=m, L=l, D=d) for b, h, m, l, d in grid]
    found = [dict(HEADLINE, D=d) for d in (1024, 4096)]
    for key, values in dict(B=(64, 1024), M=(16, 256), L=(8, 32), H=(1, 16), D=(512,)).items():
        found += [{**HEADLINE, "D": 1024, key: v} for v in values]
    return found


def make_inputs(shape, dtype, device, seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
    logits = torch.randn(shape["B"], shape["H"], shape["M"], device=device, generator=gen).to(dtype)
    pool = torch.randn(shape["M"], shape["L"], shape["D"], device=device, generator=gen).to(dtype)
    grad = torch.randn(shape["B"], shape["L"], shape["D"], device=device, generator=gen).to(dtype)
    return logits.requires_grad_(), pool.requires_grad_(), grad


def min_bytes(shape, dtype, mode) -> int:
    """Bytes the op has to move at least: every input read once, every output written once."""
    size = torch.tensor([], dtype=dtype).element_size()
    logits, pool, prompt = shape["B"] * shape["H"] * shape["M"], shape["M"] * shape["L"] * shape["D"], shape["B"] * shape["L"] * shape["D"]
    forward = logits + pool + prompt                # read logits, pool; write the prompt
    backward = prompt + 2 * pool + 2 * logits       # read dOut, pool, logits; write dpool, dlogits
    return size * {"forward": forward, "backward": backward, "full": forward + backward}[mode]


# ---------------------------------------------------------------------------------------------
# GPU timing
# ---------------------------------------------------------------------------------------------


def copy_bandwidth(mib: int, warmup: int, rep: int) -> float:
    """GB/s of a large device-to-device copy (read + write), the ceiling for a bandwidth-bound op."""
    src = torch.empty(mib << 20, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=warmup, rep=rep)
    return 2 * src.numel() / (ms * 1e-3) / 1e9


def bench_one(fn_forward, logits, pool, grad, mode, warmup, rep, graph=True):
    """(median, p20, p80) in ms, peak memory in MiB above what was allocated before, and the median
    of a CUDA-graph replay in ms (None when skipped or not capturable, with the reason)."""
    params = [logits, pool]
    if mode == "forward":  # with autograd recording, as in training
        def step():
            fn_forward()
    elif mode == "backward":
        out = fn_forward()

        def step():
            out.backward(grad, retain_graph=True)
    else:
        def step():
            fn_forward().backward(grad)
    step()  # compiles (triton, torch.compile) outside the timed region
    torch.cuda.synchronize()
    for t in params:
        t.grad = None
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    peak_mib = (torch.cuda.max_memory_allocated() - before) / 2**20
    median, p20, p80 = triton.testing.do_bench(step, warmup=warmup, rep=rep, quantiles=[0.5, 0.2, 0.8],
                                               grad_to_none=params)
    graph_ms, graph_error = None, None
    if graph:
        try:
            graph_ms = triton.testing.do_bench_cudagraph(step, rep=rep, return_mode="median")
        except Exception as error:  # noqa: BLE001 - e.g. an op that cannot be captured: say so in the row
            graph_error = f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
            torch.cuda.synchronize()
    for t in params:
        t.grad = None
    return median, p20, p80, peak_mib, graph_ms, graph_error


CHECK_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 4e-3}  # relative to max |reference|


def check_against_reference(shape, dtype, device, tau, tensor_tau=False) -> dict:
    """Max relative error of the kernel's output and gradients (and dtau for a tensor tau) against the
    reference (fp32 accumulation), on the benchmark's own inputs; ``ok``: the shape may be timed."""
    results = {}
    for name, impl in (("triton", compose_triton), ("reference", compose_reference)):
        logits, pool, grad = make_inputs(shape, dtype, device, seed=1)
        tau_arg = torch.tensor(tau, device=device, requires_grad=True) if tensor_tau else tau
        out = impl(logits, pool, tau_arg)
        out.backward(grad)
        results[name] = dict(out=out.detach(), dlogits=logits.grad, dpool=pool.grad)
        if tensor_tau:
            results[name]["dtau"] = tau_arg.grad
    errors = {}
    for key, want in results["reference"].items():
        got = results["triton"][key]
        scale = max(float(want.float().abs().max()), 1e-6)
        errors[key] = float((got.float() - want.float()).abs().max()) / scale
    return dict(errors=errors, ok=all(e <= CHECK_TOLERANCE[dtype] for e in errors.values()))


def run_gpu(args) -> int:
    device_name = torch.cuda.get_device_name()
    copy_gbps = copy_bandwidth(args.copy_mib, args.warmup_ms, args.rep_ms)
    print(f"{device_name}: device-to-device copy {copy_gbps:.0f} GB/s ({args.copy_mib} MiB)")
    machine, versions = common.machine(), common.versions("triton")
    # the commit measured, "+dirty" when kernels/ (the code timed here) differs from it
    shared = dict(date=common.now_utc(), host=machine["host"], platform=machine["platform"], device=device_name,
                  torch=versions["torch"], triton=versions["triton"], cuda=torch.version.cuda,
                  commit=common.commit(dirty_paths=["kernels"]), copy_gbps=round(copy_gbps, 1), tau=args.tau)
    rows, failures = [], 0
    for shape, dtype_name in itertools.product(shapes(args), args.dtype):
        dtype = DTYPES[dtype_name]
        check = check_against_reference(shape, dtype, "cuda", args.tau)
        label = "B{B} H{H} M{M} L{L} D{D}".format(**shape)
        print(f"check {label} {dtype_name}: " + "  ".join(f"{k} {v:.1e}" for k, v in check["errors"].items())
              + ("  ok" if check["ok"] else "  MISMATCH: not timed"))
        if not check["ok"]:
            failures += 1
            rows.append(dict(shared, provider="triton", mode="check", dtype=dtype_name, **shape,
                             check_errors=check["errors"], check_ok=False))
            if not args.no_save:
                common.append_rows(args.results / ROWS_FILE, rows[-1:])
            continue
        import torch._dynamo

        torch._dynamo.reset()  # a graph for this shape only, never a dynamic-shape one from an earlier shape
        compiled = torch.compile(compose_reference, dynamic=False)
        impls = {"eager": compose_reference, "compile": compiled, "triton": compose_triton}
        for mode in args.mode:
            logits, pool, grad = make_inputs(shape, dtype, "cuda")
            group = []
            for provider in args.provider:
                def forward(impl=impls[provider]):
                    return impl(logits, pool, args.tau)
                median, p20, p80, peak, graph_ms, graph_error = bench_one(
                    forward, logits, pool, grad, mode, args.warmup_ms, args.rep_ms, graph=not args.no_graph)
                gbps = min_bytes(shape, dtype, mode) / (median * 1e-3) / 1e9
                group.append(dict(shared, provider=provider, mode=mode, dtype=dtype_name, **shape,
                                  ms_median=median, ms_p20=p20, ms_p80=p80, graph_ms=graph_ms,
                                  graph_error=graph_error, gbps=round(gbps, 1),
                                  copy_fraction=round(gbps / copy_gbps, 3), peak_mib=round(peak, 1),
                                  check_errors=check["errors"], check_ok=True))
            by_provider = {r["provider"]: r for r in group}
            for r in group:
                for base in ("eager", "compile"):
                    if base in by_provider:
                        r[f"speedup_vs_{base}"] = round(by_provider[base]["ms_median"] / r["ms_median"], 3)
                        if r["graph_ms"] and by_provider[base]["graph_ms"]:
                            r[f"graph_speedup_vs_{base}"] = round(by_provider[base]["graph_ms"] / r["graph_ms"], 3)
            rows += group
            if not args.no_save:
                common.append_rows(args.results / ROWS_FILE, group)  # as measured: a run cut short keeps them
            del logits, pool, grad
            torch.cuda.empty_cache()
    print_table([r for r in rows if r["mode"] != "check"])
    check_goals(rows)
    if not args.no_save:
        print(f"{len(rows)} rows appended to {args.results / ROWS_FILE}")
        plot(rows, args.results)
    return 1 if failures else 0


def print_table(rows):
    head = f"{'B':>5} {'H':>3} {'M':>4} {'L':>3} {'D':>5} {'dtype':>5} {'mode':>8} {'provider':>8} " \
           f"{'median ms':>10} {'p20-p80':>15} {'graph ms':>9} {'GB/s':>7} {'copy%':>6} {'peak MiB':>9} " \
           f"{'x eager':>8} {'x compile':>9}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['B']:>5} {r['H']:>3} {r['M']:>4} {r['L']:>3} {r['D']:>5} {r['dtype']:>5} {r['mode']:>8} "
              f"{r['provider']:>8} {r['ms_median']:>10.4f} {r['ms_p20']:>7.4f}-{r['ms_p80']:<7.4f} "
              f"{(r['graph_ms'] if r['graph_ms'] is not None else float('nan')):>9.4f} "
              f"{r['gbps']:>7.0f} {100 * r['copy_fraction']:>5.0f}% {r['peak_mib']:>9.1f} "
              f"{r.get('speedup_vs_eager', float('nan')):>8.2f} {r.get('speedup_vs_compile', float('nan')):>9.2f}")


def check_goals(rows):
    """The headline goals: bf16, full forward+backward, at the headline shapes."""
    for r in rows:
        if r["mode"] == "check":
            continue
        headline = all(r[k] == v for k, v in HEADLINE.items()) and r["D"] in (1024, 4096)
        if not (headline and r["provider"] == "triton" and r["mode"] == "full" and r["dtype"] == "bf16"):
            continue
        verdicts = [f"x eager {r.get('speedup_vs_eager', float('nan')):.2f} (goal {GOALS['vs_eager']})",
                    f"x compile {r.get('speedup_vs_compile', float('nan')):.2f} (goal {GOALS['vs_compile']})",
                    f"copy {100 * r['copy_fraction']:.0f}% (goal {100 * GOALS['copy_fraction']:.0f}%)"]
        met = (r.get("speedup_vs_eager", 0) >= GOALS["vs_eager"] and r.get("speedup_vs_compile", 0) >= GOALS["vs_compile"]
               and r["copy_fraction"] >= GOALS["copy_fraction"])
        print(f"goal D={r['D']}: {'MET' if met else 'NOT MET'}: " + ", ".join(verdicts))


def plot(rows, results: Path) -> None:
    rows = [r for r in rows if r["mode"] != "check"]
    if not rows:
        return
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return
    labels = sorted({(r["B"], r["H"], r["M"], r["L"], r["D"], r["dtype"], r["mode"]) for r in rows})
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(labels)), 4))
    width = 0.8 / len({r["provider"] for r in rows})
    for i, provider in enumerate(p for p in PROVIDERS if any(r["provider"] == p for r in rows)):
        speed = {(r["B"], r["H"], r["M"], r["L"], r["D"], r["dtype"], r["mode"]): r.get("speedup_vs_eager", 0)
                 for r in rows if r["provider"] == provider}
        ax.bar([x + i * width for x in range(len(labels))], [speed.get(k, 0) for k in labels], width, label=provider)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(labels))])
    ax.set_xticklabels(["B{}H{}M{}L{}D{} {} {}".format(*k) for k in labels], rotation=60, ha="right", fontsize=7)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_ylabel("speedup vs eager (median)")
    ax.set_title(f"compose on {rows[0]['device']}")
    ax.legend()
    fig.tight_layout()
    png = results / f"bench_prompt_compose-{rows[0]['date'][:19].replace(':', '')}.png"
    fig.savefig(png, dpi=120)
    print(f"plot saved to {png}")


# ---------------------------------------------------------------------------------------------
# No GPU: a correctness pass in Triton's interpreter, no timings
# ---------------------------------------------------------------------------------------------

# small stand-ins for the sweep (M, L and D/H not powers of two); interpreted Triton is ~10^4x slower
CPU_SHAPES = [dict(B=4, H=2, M=6, L=3, D=20), dict(B=3, H=4, M=10, L=2, D=72), dict(B=5, H=1, M=17, L=5, D=24)]


def run_cpu(args) -> int:
    print("No CUDA device: no timings are reported (the GPU figures are not measured here).")
    if triton is None:
        print("triton is not importable: the kernel cannot run at all here; nothing to check.")
        return 0
    print("Correctness pass of the Triton kernel in Triton's interpreter (TRITON_INTERPRET=1), small shapes:")
    failures = 0
    for shape, dtype in itertools.product(CPU_SHAPES, DTYPES.values()):  # every dtype: it is cheap
        check = check_against_reference(shape, dtype, "cpu", args.tau, tensor_tau=True)
        failures += not check["ok"]
        label = "B{B} H{H} M{M} L{L} D{D}".format(**shape)
        detail = "  ".join(f"{k} {v:.1e}" for k, v in check["errors"].items())
        print(f"  {label:<22} {str(dtype).replace('torch.', ''):<9} max rel. error  {detail}  "
              f"{'ok' if check['ok'] else 'FAIL'}")
    print("all match the reference" if not failures else f"{failures} case(s) do NOT match the reference")
    return 1 if failures else 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if torch.cuda.is_available():
        if triton is None:
            print("triton is not importable: cannot benchmark the kernel")
            return 1
        return run_gpu(args)
    return run_cpu(args)


if __name__ == "__main__":
    sys.exit(main())
