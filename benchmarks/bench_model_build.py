"""Peak memory of building a preset: a plain build on one process vs ``deepspeed.zero.Init`` on N ranks.

    python benchmarks/bench_model_build.py                          # t5-large, plain vs ZeRO-3 on 2 ranks
    python benchmarks/bench_model_build.py --arch t5-base flan-t5-large --ranks 2 4

What it shows: at ZeRO-3 the trainer builds the model inside zero.Init, so each rank holds 1/N of the
parameters plus the largest module being initialised (the token embedding), never the whole model.
Each build runs in fresh processes (gloo ranks on this machine; CPU only), and ``ru_maxrss`` of each
process is its peak resident memory, which includes the Python/torch/DeepSpeed baseline (measured
alone, with nothing built, and reported beside it); "held" is the resident memory once the build is
done. Children run with ``MALLOC_MMAP_THRESHOLD_=1 MiB`` so that glibc returns freed tensors to the OS:
otherwise its heap keeps the full-size temporaries of construction and RSS says nothing about what a
rank holds. The plain build is the baseline of the ratios.

A table is printed and one JSON row per measurement is appended to
``benchmarks/results/bench_model_build.jsonl`` (machine, versions, date).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import common

ROWS = common.RESULTS / "bench_model_build.jsonl"

_CHILD = """
import gc, json, os, resource, sys, time
import torch, deepspeed
from peapod_scale.config.train import TrainConfig
from peapod_scale.model.build import build_model
arch, mode = sys.argv[1], sys.argv[2]
if mode != "plain":
    deepspeed.init_distributed(dist_backend="gloo")
ds = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "zero_optimization": {"stage": 3}}
torch.manual_seed(0)
started = time.perf_counter()
elements = 0
if arch != "none":
    cfg = TrainConfig(data="unused", output="unused", arch=arch, pool_size=8, user_dim=8)
    model = build_model(cfg, num_users=100, vocab_size=32128, ds_config=ds if mode == "zero3" else None)
    elements = sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in model.parameters())  # held here
gc.collect()
held = int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024
print("RESULT " + json.dumps({"build_s": time.perf_counter() - started, "local_params": elements, "held_rss_mb": held,
      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_build(arch: str, mode: str, ranks: int) -> list[dict]:
    """One result per rank (``plain``: one process, no process group)."""
    port = str(common.free_port())
    processes = []
    for rank in range(ranks):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(ranks), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1",
               "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}  # freed tensors go back to the OS: RSS = what is held
        processes.append(subprocess.Popen([sys.executable, "-c", _CHILD, arch, mode], env=env, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    results = []
    for process in processes:
        out, err = process.communicate(timeout=1800)
        lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
        if process.returncode != 0 or not lines:
            raise RuntimeError(f"{arch} {mode} build failed:\n{err[-3000:]}")
        results.append(json.loads(lines[0][len("RESULT "):]))
    return results


def environment() -> dict:
    machine = common.machine()
    return {"date": common.now_utc(), "host": machine["host"], "cpus": machine["cpus"],
            "load_1min": machine["load_1min"], **common.versions("deepspeed", "transformers")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", nargs="+", default=["t5-large"], help="presets to build (default: %(default)s)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[2], help="ZeRO-3 world sizes (default: %(default)s)")
    parser.add_argument("--no-save", action="store_true", help="print only, append nothing to the results file")
    args = parser.parse_args(argv)

    env = environment()
    baseline = run_build("none", "plain", 1)[0]["held_rss_mb"]
    print(f"{env['host']} ({env['cpus']} CPUs, load {env['load_1min']:.1f}); process baseline {baseline:.0f} MB "
          "resident with nothing built; MB per rank, the largest rank")
    header = (f"{'arch':<14} {'build':<10} {'params/rank':>12} {'held MB':>8} {'peak MB':>8} {'peak-base':>10} "
              f"{'vs plain':>9} {'time s':>7}")
    print(header)
    rows = []
    for arch in args.arch:
        plain = run_build(arch, "plain", 1)[0]
        plain_above = plain["peak_rss_mb"] - baseline
        measurements = [("plain", 1, [plain])] + [(f"zero3 x{n}", n, run_build(arch, "zero3", n)) for n in args.ranks]
        for label, ranks, per_rank in measurements:
            peak = max(r["peak_rss_mb"] for r in per_rank)
            held = max(r["held_rss_mb"] for r in per_rank)
            above = peak - baseline
            row = {**env, "arch": arch, "build": label, "ranks": ranks, "local_params": per_rank[0]["local_params"],
                   "held_rss_mb_max_rank": held, "peak_rss_mb_max_rank": peak, "peak_above_baseline_mb": above,
                   "ratio_vs_plain": above / plain_above,
                   "build_s": max(r["build_s"] for r in per_rank), "baseline_rss_mb": baseline}
            rows.append(row)
            print(f"{arch:<14} {label:<10} {row['local_params'] / 1e6:>11.1f}M {held:>8.0f} {peak:>8.0f} {above:>10.0f} "
                  f"{row['ratio_vs_plain']:>8.2f}x {row['build_s']:>7.1f}")
    if not args.no_save:
        common.append_rows(ROWS, rows)
        print(f"appended {len(rows)} rows to {ROWS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
