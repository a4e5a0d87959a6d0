"""Benchmark the data pipeline: `prepare` at scale, and a streaming pass with tokenization.

    python benchmarks/bench_data.py                          # prepare 1M and 5M, stream 200k
    python benchmarks/bench_data.py --sizes 1000000 5000000 20000000 --stream-interactions 1000000

1. prepare: synthetic data of N interactions (N/20 users, N/50 items, --neighbors 0), each size in
   its own subprocess so that ``ru_maxrss`` is that run's peak resident memory; wall time includes
   generation, numbering, negatives, writing and the tokenizer.
2. stream: one full epoch over the train split of a prepared synthetic set, batches of 64, the
   tasks taking turns, every batch rendered and tokenized by ``TaskBatcher``:
   - ``ShardStream`` + ``TrainStream`` with 1 and 2 loader workers (rank 0 of world size 1), memory
     one window per worker;
   - the reference code's way: every training row loaded into a Python list first, then shuffled,
     batched and tokenized the same way (its load time and the list's memory included).
   Reported as examples/s per rank and peak RSS of the main process (loader workers hold one
   window each and are not counted).

A table is printed and one JSON row per measurement (machine, versions, date) is appended to
benchmarks/results/bench_data.jsonl.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "bench_data.jsonl"
BATCH = 64
TASKS = ("sequential", "topn", "explanation")

_PREPARE_CHILD = """
import json, resource, sys, time
from peapod_scale.data.prepare import prepare_dataset
n, out = int(sys.argv[1]), sys.argv[2]
started = time.perf_counter()
manifest = prepare_dataset("synthetic", None, out, num_neighbors=0, synthetic_shape=(max(n // 20, 1), max(n // 50, 2), n))
print(json.dumps({"wall_s": time.perf_counter() - started, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "train_rows": manifest["splits"]["train"]["rows"]}))
"""

_STREAM_CHILD = """
import json, random, resource, sys, time
import pyarrow.parquet as pq
from peapod_scale.data.batches import TaskBatcher
from peapod_scale.data.reader import ShardStream, TrainStream
from peapod_scale.data.tokenizer import load_codec
root, mode = sys.argv[1], sys.argv[2]
manifest = json.load(open(root + "/manifest.json"))
files = [root + "/" + f for f in manifest["splits"]["train"]["files"]]
batcher = TaskBatcher(load_codec(root), manifest["counts"]["items"])
tasks = manifest["tasks"]
started = time.perf_counter()
examples = 0
if mode == "lists":  # the reference way: everything in Python lists, then shuffle and batch
    everything = [row for f in files for row in pq.read_table(f).to_pylist()]
    random.Random(0).shuffle(everything)
    batches = (everything[i:i + %(batch)d] for i in range(0, len(everything) - %(batch)d + 1, %(batch)d))
else:
    dataset = ShardStream(files, batch_size=%(batch)d)
    stream = iter(TrainStream(dataset, num_workers=int(mode)))
    batches = (next(stream) for _ in range(dataset.steps_per_epoch))
for step, rows in enumerate(batches):
    batcher(rows, tasks[step %% len(tasks)], step)
    examples += len(rows)
seconds = time.perf_counter() - started
print(json.dumps({"examples": examples, "wall_s": seconds, "examples_per_s": examples / seconds,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""" % {"batch": BATCH}


def _child(code: str, *args: str) -> dict:
    """Run code in a fresh interpreter (its own peak RSS) and parse the JSON line it prints."""
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _versions() -> dict:
    import numpy
    import pyarrow
    import torch

    import peapod_scale

    return {"python": platform.python_version(), "numpy": numpy.__version__, "pyarrow": pyarrow.__version__,
            "torch": torch.__version__, "peapod_scale": peapod_scale.__version__}


def _context() -> dict:
    return {"machine": {"node": platform.node(), "cpus": os.cpu_count(), "platform": platform.platform(),
                        "load_1min": os.getloadavg()[0]},
            "versions": _versions(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def bench_prepare(sizes: list[int], work: Path) -> list[dict]:
    rows = []
    for n in sizes:
        result = _child(_PREPARE_CHILD, str(n), str(work / f"prepare-{n}"))
        rows.append({"bench": "prepare", "interactions": n, **result})
        print(f"  prepare {n:>12,} interactions  {result['wall_s']:8.1f} s  peak RSS {result['peak_rss_mb']:8.0f} MB",
              flush=True)
    return rows


def bench_stream(interactions: int, work: Path) -> list[dict]:
    root = work / f"stream-{interactions}"
    _child(_PREPARE_CHILD, str(interactions), str(root))
    rows = []
    for mode, label in (("1", "ShardStream+TrainStream, 1 worker"), ("2", "ShardStream+TrainStream, 2 workers"),
                        ("lists", "all rows in Python lists (reference)")):
        result = _child(_STREAM_CHILD, str(root), mode)
        rows.append({"bench": "stream", "interactions": interactions, "mode": label, "batch_size": BATCH, **result})
        print(f"  stream {label:<38} {result['examples_per_s']:9,.0f} ex/s  {result['examples']:>10,} ex  "
              f"peak RSS {result['peak_rss_mb']:6.0f} MB (main process; loader workers not counted)", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1_000_000, 5_000_000],
                        help="interactions per prepare run (20M takes ~10+ min on 2 busy cores)")
    parser.add_argument("--stream-interactions", type=int, default=200_000,
                        help="size of the synthetic set streamed in full (default: %(default)s)")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    context = _context()
    with tempfile.TemporaryDirectory(dir=args.work) as scratch:
        work = Path(scratch)
        print(f"data benchmark on {context['machine']['node']} ({context['machine']['cpus']} CPUs, "
              f"load {context['machine']['load_1min']:.1f})", flush=True)
        results = bench_prepare(args.sizes, work)
        if args.stream_interactions:
            results += bench_stream(args.stream_interactions, work)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a", encoding="utf-8") as handle:
        for row in results:
            handle.write(json.dumps({**row, **context}) + "\n")
    print(f"wrote {len(results)} rows to {RESULTS}")


if __name__ == "__main__":
    main()
