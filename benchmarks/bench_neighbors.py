"""Step time and peak memory of the neighbour user prompt (PeaPOD v2), code of one commit against another.

    python benchmarks/bench_neighbors.py                                   # before vs after the rewrite
    python benchmarks/bench_neighbors.py --code HEAD --rounds 5 --scope prompt
    python benchmarks/bench_neighbors.py --report RUN_ID                   # reprint a run's table

Each ``--code`` ref's ``peapod_scale/``, ``kernels/`` and ``ds_configs/`` are ``git archive``d into a scratch
folder, laid out as installed, and imported from there, so the commit is what is measured (not the working
tree others are editing). The default compares the commit before the per-head mixing rewrite (each
neighbour projected to an ``L x d`` prompt, then composed: a ``[B, n, L, d]`` tensor) with HEAD.

Settings default to the released code's: t5-small, n = 20 neighbours, L = 3, 4 heads, batch 64. Scopes:
``model`` is forward + backward of the whole PeaPOD model on a random batch (what a training step
spends outside the optimizer), ``prompt`` the user-prompt module alone (its output's sum, backward).
Every measurement runs in a fresh interpreter: ``--warmup`` untimed steps, then ``--reps`` timed ones;
the median is reported with min and max. Peak memory is the rise of resident memory during a step:
the kernel's peak counter (VmHWM) is reset through ``/proc/self/clear_refs`` before each step and
read after it, minus the resident memory before it; the children run with
``MALLOC_MMAP_THRESHOLD_=64 KiB`` so that freed tensors go back to the OS and each step starts from
what the process holds. The refs alternate over ``--rounds`` rounds, so load on a shared machine
falls on both; the table gives the spread between rounds.

One JSON row per measurement goes to ``benchmarks/results/bench_neighbors.jsonl`` (machine, CPU count,
1-min load at its start, versions, date, the measured commit and the benchmark's own commit).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import common

ROWS = common.RESULTS / "bench_neighbors.jsonl"
BEFORE_REWRITE = "1561e38~1"  # the commit before "each head mixes the n small user embeddings first"

_CHILD = r"""
import json, re, sys, time
import torch
from peapod_scale.model.peapod import PeaPOD, PeaPODConfig

p = json.loads(sys.argv[1])
torch.manual_seed(0)
torch.set_num_threads(p["threads"])
config = PeaPODConfig(num_users=p["users"], user_prompt="neighbors", num_neighbors=p["neighbors"],
                      prompt_length=p["prompt_length"], gate_heads=p["heads"], user_dim=p["user_dim"],
                      key_dim=p["user_dim"], compose_backend="torch")
model = PeaPOD.from_preset(p["arch"], p["vocab"], config, dropout_rate=0.0)
model.user_prompt.neighbors[1:] = torch.randint(1, p["users"] + 1, (p["users"], p["neighbors"]))
B, S, T = p["batch"], p["seq_len"], p["label_len"]
user_ids = torch.randint(1, p["users"] + 1, (B,))
batch = dict(input_ids=torch.randint(3, p["vocab"], (B, S)), attention_mask=torch.ones(B, S, dtype=torch.long),
             whole_word_ids=torch.randint(0, 64, (B, S)), user_ids=user_ids, task_ids=torch.zeros(B, dtype=torch.long))
labels = torch.randint(3, p["vocab"], (B, T))
grad = torch.randn(B, p["prompt_length"], model.t5.config.d_model)


def step():
    model.zero_grad(set_to_none=True)
    if p["scope"] == "model":
        model(**batch, labels=labels).loss.backward()
    else:
        model.user_prompt(user_ids).backward(grad)


def status(key):
    return int(re.search(key + r":\s+(\d+)", open("/proc/self/status").read()).group(1)) / 1024


for _ in range(p["warmup"]):
    step()
times, peaks = [], []
for _ in range(p["reps"]):
    model.zero_grad(set_to_none=True)
    before = status("VmRSS")
    open("/proc/self/clear_refs", "w").write("5")  # resets VmHWM to the current RSS
    started = time.perf_counter()
    step()
    times.append(time.perf_counter() - started)
    peaks.append(status("VmHWM") - before)
import peapod_scale
print("RESULT " + json.dumps({"times_s": times, "peak_rise_mb": peaks, "code_path": peapod_scale.__file__}))
"""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--code", nargs="+", default=[BEFORE_REWRITE, "HEAD"], help="git refs to measure")
    p.add_argument("--scope", nargs="+", choices=["model", "prompt"], default=["model", "prompt"])
    p.add_argument("--arch", default="t5-small")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--neighbors", type=int, default=20)
    p.add_argument("--prompt-length", type=int, default=3)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--user-dim", type=int, default=64, help="user (and key) embedding width; the trainer's default")
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--seq-len", type=int, default=96, help="encoder tokens per example (a 20-item history)")
    p.add_argument("--label-len", type=int, default=8)
    p.add_argument("--vocab", type=int, default=32_128)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-save", action="store_true")
    p.add_argument("--report", metavar="RUN_ID", help="print the table of an earlier run from the results file")
    return p.parse_args(argv)


def measure(code_dir: Path, params: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code_dir), "OMP_NUM_THREADS": str(params["threads"]),
           "MALLOC_MMAP_THRESHOLD_": str(64 << 10), "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(params)], cwd=code_dir, env=env,
                          capture_output=True, text=True, timeout=3600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"measurement failed ({params}):\n{done.stderr[-3000:]}")
    result = json.loads(lines[0][len("RESULT "):])
    if not result.pop("code_path").startswith(str(code_dir)):
        raise RuntimeError(f"the child did not import the code exported to {code_dir}")
    return result


def print_table(rows: list[dict]) -> None:
    print(f"{'scope':<7} {'code':<10} {'rounds':>6} {'median s':>9} {'round medians (min-max)':>24} "
          f"{'peak rise MB':>13} {'rounds (min-max)':>17} {'x time':>7} {'x memory':>9}")
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["scope"], row["code_commit"]), []).append(row)
    summary = {}
    for (scope, commit), group in groups.items():
        medians = [r["median_s"] for r in group]
        peaks = [r["peak_rise_mb_median"] for r in group]
        summary[scope, commit] = (statistics.median(medians), statistics.median(peaks), medians, peaks)
    for scope in dict.fromkeys(r["scope"] for r in rows):
        commits = [c for s, c in summary if s == scope]
        base = summary[scope, commits[0]]
        for commit in commits:
            t, m, medians, peaks = summary[scope, commit]
            print(f"{scope:<7} {commit:<10} {len(medians):>6} {t:>9.4f} {min(medians):>11.4f}-{max(medians):<12.4f} "
                  f"{m:>13.1f} {min(peaks):>8.1f}-{max(peaks):<8.1f} {base[0] / t:>7.2f} "
                  f"{(base[1] / m if m > 0 else float('nan')):>9.2f}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report:
        rows = [json.loads(line) for line in ROWS.read_text().splitlines() if line.strip()]
        print_table([r for r in rows if r["run_id"] == args.report])
        return 0
    run_id, machine = uuid.uuid4().hex[:8], common.machine()
    shared = dict(run_id=run_id, host=machine["host"], platform=machine["platform"], cpus=machine["cpus"],
                  bench_commit=common.commit(), **common.versions())
    settings = dict(arch=args.arch, batch=args.batch, neighbors=args.neighbors, prompt_length=args.prompt_length,
                    heads=args.heads, user_dim=args.user_dim, users=args.users, seq_len=args.seq_len,
                    label_len=args.label_len, vocab=args.vocab, threads=args.threads, warmup=args.warmup, reps=args.reps)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_neighbors_") as scratch:
        code = {ref: common.export_code(ref, Path(scratch)) for ref in args.code}
        for round_index in range(args.rounds):
            for scope in args.scope:
                for ref, code_dir in code.items():
                    load = os.getloadavg()[0]
                    result = measure(code_dir, dict(settings, scope=scope))
                    row = dict(shared, **settings, scope=scope, code_ref=ref, code_commit=code_dir.name,
                               round=round_index, load_1min=round(load, 2), date=common.now_utc(),
                               median_s=statistics.median(result["times_s"]), min_s=min(result["times_s"]),
                               max_s=max(result["times_s"]),
                               peak_rise_mb_median=statistics.median(result["peak_rise_mb"]), **result)
                    rows.append(row)
                    print(f"round {round_index} {scope:<6} {ref:<10} median {row['median_s']:.4f} s "
                          f"(min {row['min_s']:.4f}, max {row['max_s']:.4f}), peak rise "
                          f"{row['peak_rise_mb_median']:.1f} MB, load {load:.2f}", flush=True)
                    if not args.no_save:
                        common.append_rows(ROWS, [row])
    print(f"run {run_id}: {', '.join(f'{k}={v}' for k, v in settings.items())}")
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
