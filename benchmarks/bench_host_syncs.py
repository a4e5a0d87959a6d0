"""What the training loop's host-device synchronizations cost: the loop as it was against the loop as it is.

    python benchmarks/bench_host_syncs.py --data D                         # tiny; CUDA if there is one
    python benchmarks/bench_host_syncs.py --data D --arch t5-small --micro-batch 64   # as benchmarks/gpu_check.sh

``--data``: a dataset folder written by ``peapod-scale prepare``.

Before 25fa33b and c0a1e44 every micro-step waited for the device about seven times: a
``torch.cuda.synchronize()`` after each of the step meter's four phases, two ``float(tensor.sum())`` of the
device batch when counting tokens, and ``loss.item()``. The trainer now counts tokens on the host copy of the
batch, keeps losses on the device until a log step, and times phases on one synchronized step a window, so
the host queues the next step while the device works. Both loops here run the same model (``build_model``,
random init), the same batches (rendered once, then cycled: no loader cost) and torch AdamW, one process;
they take turns ``--repeats`` times, and the table gives the median ms per step, the spread and the ratio.
On CPU there is no device to wait for: the waits are no-ops and the two host reads cost microseconds, so the
ratio there is ~1.00 by construction; the figure that matters is a GPU's.

One JSON row per measurement goes to benchmarks/results/bench_host_syncs.jsonl (machine, versions, date,
commit).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import common

LOOPS = ("per-step syncs (before)", "trainer now")


def build(args):
    import torch

    from peapod_scale.config.train import TrainConfig
    from peapod_scale.data.batches import TaskBatcher
    from peapod_scale.data.dataset import read_manifest, read_rows
    from peapod_scale.data.tokenizer import load_codec
    from peapod_scale.model.build import build_model

    device = torch.device(args.device)
    cfg = TrainConfig(data=args.data, output="unused", arch=args.arch, dropout=0.0)
    manifest = read_manifest(args.data)
    codec = load_codec(args.data)
    rows = read_rows(args.data, manifest, "train")
    batcher = TaskBatcher(codec, manifest["counts"]["items"], cfg.topn_candidates, cfg.seed, topn_history=cfg.topn_history)
    batches = []
    for i in range(args.batches):  # alternate the two tasks, as the trainer's schedule does
        chunk = rows[i * args.micro_batch:(i + 1) * args.micro_batch]
        if len(chunk) < args.micro_batch:
            raise SystemExit(f"--data {args.data}: {len(rows)} train rows, fewer than --batches x --micro-batch")
        batches.append(batcher(chunk, ("sequential", "topn")[i % 2], step=i))
    torch.manual_seed(0)
    model = build_model(cfg, manifest["counts"]["users"], codec.vocab_size).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    return model, optimizer, batches, device


def run_loop(kind: str, model, optimizer, batches, device, steps: int, window: int) -> float:
    """Seconds per optimizer step of ``steps`` steps of the loop ``kind``."""
    import torch

    cuda = device.type == "cuda"
    wait = torch.cuda.synchronize if cuda else (lambda: None)
    wait()
    start = time.perf_counter()
    loss_sum, tokens = torch.zeros((), device=device), 0.0
    for step in range(steps):
        host = batches[step % len(batches)]
        batch = {k: v.to(device, non_blocking=True) for k, v in host.items()}
        if kind == LOOPS[0]:
            wait()                                                   # phase "data"
            loss = model(**batch).loss
            wait()                                                   # phase "forward"
            loss.backward()
            wait()                                                   # phase "backward"
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            wait()                                                   # phase "optimizer"
            tokens += float(batch["attention_mask"].sum()) + float((batch["labels"] != -100).sum())
            loss_sum += loss.item()
        else:
            if step % window == 0:
                wait()                                               # the window's one timed step
            tokens += float(host["attention_mask"].sum()) + float((host["labels"] != -100).sum())
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach()
            if (step + 1) % window == 0:
                float(loss_sum)                                      # the log step reads the losses
    wait()
    return (time.perf_counter() - start) / steps


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="dataset folder written by `peapod-scale prepare`")
    parser.add_argument("--arch", default="tiny")
    parser.add_argument("--micro-batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=60, help="steps per measurement (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=10, help="steps before measuring (default: %(default)s)")
    parser.add_argument("--window", type=int, default=20, help="the trainer's --log-every (default: %(default)s)")
    parser.add_argument("--batches", type=int, default=8, help="distinct batches cycled (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: CUDA when torch sees a GPU, else the CPU (default: %(default)s)")
    parser.add_argument("--results", default=str(common.RESULTS), help="folder of the JSON rows (default: %(default)s)")
    args = parser.parse_args(argv)
    if not (Path(args.data) / "manifest.json").is_file():
        print(f"error: --data {args.data}: not a dataset folder (run `peapod-scale prepare` first)", file=sys.stderr)
        raise SystemExit(2)
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: torch sees no CUDA device", file=sys.stderr)
        raise SystemExit(2)
    model, optimizer, batches, device = build(args)
    model.train()
    for kind in LOOPS:
        run_loop(kind, model, optimizer, batches, device, args.warmup, args.window)
    times = {kind: [] for kind in LOOPS}
    for repeat in range(args.repeats):  # taking turns: other load on the machine hits both alike
        for kind in LOOPS:
            times[kind].append(run_loop(kind, model, optimizer, batches, device, args.steps, args.window))
            print(f"repeat {repeat + 1}/{args.repeats} {kind}: {1e3 * times[kind][-1]:.2f} ms/step", flush=True)
    machine = common.machine()
    versions = common.versions("transformers", "deepspeed")
    del versions["python"]  # this script's rows never carried it
    shared = {"date": common.now_utc(), "commit": common.commit(), "arch": args.arch, "micro_batch": args.micro_batch,
              "steps": args.steps, "window": args.window,
              "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
              "machine": {"host": machine["host"], "cpus": machine["cpus"], "load": machine["load_1min"],
                          "threads": torch.get_num_threads()},
              "versions": versions}
    base = statistics.median(times[LOOPS[0]])
    print(f"\n{args.arch}, micro batch {args.micro_batch}, {shared['device']}, {args.steps} steps x {args.repeats}\n")
    print("| loop | ms/step | spread | vs before |\n|---|---:|---:|---:|")
    rows = []
    for kind in LOOPS:
        median = statistics.median(times[kind])
        rows.append({**shared, "loop": kind, "step_ms": 1e3 * median, "runs_ms": [1e3 * t for t in times[kind]],
                     "speedup_vs_before": base / median})
        print(f"| {kind} | {1e3 * median:.2f} | {1e3 * min(times[kind]):.2f}-{1e3 * max(times[kind]):.2f} | "
              f"{base / median:.3f}x |")
    common.append_rows(Path(args.results) / "bench_host_syncs.jsonl", rows)


if __name__ == "__main__":
    main()
