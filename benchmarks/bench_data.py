"""Benchmark the data pipeline at 1M / 5M / 20M synthetic interactions: memory and examples/s per rank.

    python benchmarks/bench_data.py --data-root /tmp/bench_data                       # 1M, 5M, 20M; all modes
    python benchmarks/bench_data.py --data-root /tmp/bench_data --sizes 1000000 --modes raw tok
    python benchmarks/bench_data.py --data-root /tmp/bench_data --train-run runs/ml-100k-...   # measured training rate

``--data-root`` holds one prepared synthetic set per size (``synthetic-N``: N interactions, N/20 users,
N/50 items, ``--neighbors 0``), reused across runs; a missing size is prepared first and its wall
time and peak RSS recorded as a ``prepare`` row. Keep it outside the repository.

``--code`` (default HEAD) exports that commit's peapod_scale/ (with kernels/ and ds_configs/ inside it, as
installed) into a temp folder and measures it, so other people's uncommitted edits in the working tree are not
what is measured.

Every measurement runs in its own interpreter, so ``ru_maxrss`` is that mode's peak, and reports:
- ``peak_rss_mb``: peak RSS of the measuring (main) process;
- ``worker_peak_rss_mb``: the largest loader worker's peak (``RUSAGE_CHILDREN`` after the workers
  are reaped; Linux reports the largest child, not the sum);
- ``total_rss_mb`` / ``total_pss_mb``: the largest sum over main process + all workers, sampled every
  0.2 s with psutil. RSS counts pages the workers share with the main process (forked torch, Python)
  once per process, PSS splits them: PSS is the fair total, RSS an upper bound.

Modes (training's settings: batches of ``--batch-size`` rows, window / shuffle buffer 65,536 rows,
tasks sequential and top-N taking turns, rank 0 of 1 unless said):
- ``raw``: a full epoch over the train split through ``ShardStream`` + ``TrainStream`` (1 loader
  worker), batches of row dicts, no tokenization: rows/s and memory;
- ``tok``: what training does per rank, with 1 and 2 loader workers, for ``--batches`` batches;
  examples/s counted after the first batch (its latency is ``first_batch_s``). When
  ``stream.task_stream`` exists (rendering + tokenization in the loader workers, tensors arriving in
  the main process; tasks sequential and top-N at equal weights) that is measured; before it, raw
  rows from the loader rendered and tokenized by ``TaskBatcher`` in the main process. The row's
  ``tokenized_in`` ("workers" / "main") and label say which;
- ``lists``: the reference code's way: the whole train split loaded into Python lists, shuffled,
  batched, then the same tokenization for ``--batches`` batches. ``load_s`` is the load; its memory
  is estimated first from one shard, and a size whose estimate exceeds ``--memory-limit-gb`` (or
  the memory available now) is skipped with the reason recorded;
- ``hf``: Hugging Face ``datasets`` streaming over the same shards: ``load_dataset("parquet",
  streaming=True)`` + ``.shuffle(buffer_size=65536)`` + ``split_dataset_by_node`` + DataLoader
  (1 worker) + the same tokenization, for ``--batches`` batches;
- ``hf-ranks``: the same HF stream (user column only, no tokenization) split over 2 ranks, each rank
  iterated to its end: rows per rank and the stall between a rank's last row and the end of its pass.

Training's consumption rate: with ``--train-run DIR``, the median of
``throughput/samples_per_s_per_rank`` (or ``samples_per_s`` / world size) in DIR's TensorBoard
scalars, else DIR/train.log; without it, DEFAULT_TRAIN_RATE (measured, see below).

One JSON row per measurement is appended to benchmarks/results/bench_data.jsonl as soon as it is
done (machine, CPU count, load average at its start, versions, date, ``run_id``); the table at the
end compares each mode with the ``lists`` baseline of the same size in the same run, and prints the
goals: stream peak RSS (main + workers) grows <= 10 % from the smallest to the largest size, and a
rank's tokenized stream delivers >= 20x the examples/s training consumes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import common

ROWS = common.RESULTS / "bench_data.jsonl"
SIZES = [1_000_000, 5_000_000, 20_000_000]
MODES = ["raw", "tok", "lists", "hf", "hf-ranks"]
TASKS = ("sequential", "topn")           # training's default --tasks
COLUMNS = ["user", "history", "target"]  # what stream.batch_stream reads
WINDOW = 65_536                          # training's default --shuffle-buffer
SEED = 42                                # training's default --seed
TOPN_CANDIDATES = 20                     # the top-N prompt its recorded runs measured (training: 50 since 9831450)
# Examples/s per rank that training consumes when no --train-run is given: the figure of issue 3's
# brief for the tiny preset on this shared 2-core VM (~6.6 optimizer steps/s x micro batch 32 = ~210).
# The demo run runs/ml-100k-20261125-230043 (tiny, ZeRO-2, 2 CPU ranks) measured a median 337 per rank:
# pass --train-run for a measured figure.
DEFAULT_TRAIN_RATE = 210.0
GOAL_RSS_GROWTH = 0.10
GOAL_RATIO = 20.0


# ----------------------------------------------------------------------------------------------
# children: one measurement each, in a fresh interpreter; the last stdout line is a JSON object
# ----------------------------------------------------------------------------------------------

class MemorySampler:
    """Largest sum of RSS and of PSS over this process and its children (loader workers)."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.rss, self.pss = interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        rss = pss = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                info = proc.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
        self.rss, self.pss = max(self.rss, rss), max(self.pss, pss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> "MemorySampler":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _memory(sampler: MemorySampler) -> dict:
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            "total_rss_mb": sampler.rss / 2**20, "total_pss_mb": sampler.pss / 2**20}


def _train_files(root: str) -> tuple[dict, list[str]]:
    from peapod_scale.data.dataset import read_manifest, split_files

    manifest = read_manifest(root)
    return manifest, split_files(root, manifest, "train")


def _batcher(root: str, manifest: dict):
    from peapod_scale.data.batches import TaskBatcher
    from peapod_scale.data.tokenizer import load_codec

    return TaskBatcher(load_codec(root), manifest["counts"]["items"], TOPN_CANDIDATES, SEED)


def _tokenize(batches, batcher, count: int) -> dict:
    """Tokenize ``count`` batches, tasks taking turns; time from the first batch's arrival."""
    started = time.perf_counter()
    first = None
    examples = 0
    for step in range(count):
        rows = next(batches)
        batcher(rows, TASKS[step % len(TASKS)], step)
        if first is None:
            first = time.perf_counter()
        else:
            examples += len(rows)
    seconds = time.perf_counter() - first
    return {"batches": count, "examples": examples, "wall_s": seconds, "examples_per_s": examples / seconds,
            "first_batch_s": first - started}


def _row_stream(root: str, manifest: dict, files: list[str], batch: int, workers: int):
    """Endless batches of raw row dicts: ShardStream + TrainStream over the train split (training's columns)."""
    from peapod_scale.data.shard_stream import ShardStream, TrainStream

    dataset = ShardStream(files, batch, 0, 1, seed=SEED, window_rows=WINDOW, columns=COLUMNS)
    return iter(TrainStream(dataset, num_workers=workers))


def tokenizing_path() -> str:
    """'workers' when stream.py offers task_stream (batches tokenized in the loader workers), else 'main'."""
    from peapod_scale.data import dataset as stream

    return "workers" if hasattr(stream, "task_stream") else "main"


def child_raw(root: str, workers: int, batch: int, **_) -> dict:
    manifest, files = _train_files(root)
    steps = manifest["splits"]["train"]["rows"] // batch
    with MemorySampler() as sampler:
        stream = _row_stream(root, manifest, files, batch, workers)
        started = time.perf_counter()
        rows = 0
        for _ in range(steps):
            rows += len(next(stream))
        seconds = time.perf_counter() - started
        stream.close()  # shut the loader's workers down so that RUSAGE_CHILDREN sees them
        del stream
        import gc

        gc.collect()
        time.sleep(0.5)
    return {"examples": rows, "batches": steps, "wall_s": seconds, "examples_per_s": rows / seconds, **_memory(sampler)}


def child_tok(root: str, workers: int, batch: int, batches: int, **_) -> dict:
    """Training's data path per rank. With ``stream.task_stream`` (render + tokenize in the loader workers,
    batches arrive as tensors): that, tasks sequential and top-N at equal weights; before it: raw rows from
    the loader, rendered and tokenized by TaskBatcher in the main process."""
    from peapod_scale.data import dataset as stream_module

    manifest, files = _train_files(root)
    batcher = _batcher(root, manifest)
    path = tokenizing_path()
    with MemorySampler() as sampler:
        if path == "workers":
            stream = iter(stream_module.task_stream(root, manifest, {task: 1.0 for task in TASKS}, batcher, batch,
                                                    0, 1, SEED, WINDOW, workers, 1))

            class _Ready:  # the batch is ready: only count it
                @staticmethod
                def __call__(pair, _task, _step):
                    return pair

            class _Rows:
                def __init__(self, source):
                    self.source = source

                def __next__(self):
                    task, tensors = next(self.source)
                    return [None] * int(tensors["user_ids"].shape[0])

            result = _tokenize(_Rows(stream), _Ready(), batches)
        else:
            stream = _row_stream(root, manifest, files, batch, workers)
            result = _tokenize(stream, batcher, batches)
        if hasattr(stream, "close"):
            stream.close()
        del stream
        import gc

        gc.collect()
        time.sleep(0.5)
    return {**result, "tokenized_in": path, **_memory(sampler)}


def child_lists(root: str, batch: int, batches: int, **_) -> dict:
    import random

    import pyarrow.parquet as pq

    manifest, files = _train_files(root)
    batcher = _batcher(root, manifest)
    with MemorySampler() as sampler:
        started = time.perf_counter()
        everything = [row for f in files for row in pq.read_table(f, columns=COLUMNS).to_pylist()]
        random.Random(SEED).shuffle(everything)
        load_s = time.perf_counter() - started
        chunks = (everything[i:i + batch] for i in range(0, len(everything) - batch + 1, batch))
        result = _tokenize(chunks, batcher, batches)
    return {**result, "load_s": load_s, "rows_loaded": len(everything), **_memory(sampler)}


def child_lists_probe(root: str, **_) -> dict:
    """Bytes per row of the lists way, from the first train shard, and the RSS before loading."""
    import gc

    import psutil
    import pyarrow.parquet as pq

    manifest, files = _train_files(root)
    _batcher(root, manifest)  # the lists child holds the codec too
    gc.collect()
    before = psutil.Process().memory_info().rss
    rows = [row for row in pq.read_table(files[0], columns=COLUMNS).to_pylist()]
    gc.collect()
    after = psutil.Process().memory_info().rss
    return {"base_rss_mb": before / 2**20, "bytes_per_row": (after - before) / len(rows), "probe_rows": len(rows),
            "train_rows": manifest["splits"]["train"]["rows"]}


def _hf_stream(files: list[str], rank: int, world_size: int, columns: list[str]):
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets
    from datasets.distributed import split_dataset_by_node

    datasets.disable_progress_bars()
    ds = datasets.load_dataset("parquet", data_files=files, split="train", streaming=True, columns=columns)
    ds = ds.shuffle(seed=SEED, buffer_size=WINDOW)
    return split_dataset_by_node(ds, rank=rank, world_size=world_size)


def _rows_as_is(rows: list[dict]) -> list[dict]:
    return rows


def child_hf(root: str, workers: int, batch: int, batches: int, **_) -> dict:
    from torch.utils.data import DataLoader

    manifest, files = _train_files(root)
    batcher = _batcher(root, manifest)
    with MemorySampler() as sampler:
        loader = DataLoader(_hf_stream(files, 0, 1, COLUMNS), batch_size=batch, num_workers=workers,
                            collate_fn=_rows_as_is)
        iterator = iter(loader)
        result = _tokenize(iterator, batcher, batches)
        del iterator, loader
        import gc

        gc.collect()
        time.sleep(0.5)
    return {**result, **_memory(sampler)}


def child_hf_ranks(root: str, **_) -> dict:
    manifest, files = _train_files(root)
    per_rank, stall, wall = [], [], []
    with MemorySampler() as sampler:
        for rank in range(2):
            started = time.perf_counter()
            rows, last = 0, started
            for _row in _hf_stream(files, rank, 2, ["user"]):
                rows += 1
                last = time.perf_counter()
            end = time.perf_counter()
            per_rank.append(rows)
            stall.append(end - last)
            wall.append(end - started)
    return {"rows_per_rank": per_rank, "end_of_pass_stall_s": stall, "wall_s_per_rank": wall,
            "examples_per_s": sum(per_rank) / sum(wall), "train_files": len(files),
            "train_rows": manifest["splits"]["train"]["rows"], **_memory(sampler)}


def child_prepare(root: str, interactions: int, **_) -> dict:
    from peapod_scale.data.prepare.dataset import prepare_dataset

    n = interactions
    started = time.perf_counter()
    manifest = prepare_dataset("synthetic", None, root, neighbors=0,
                               num_users=max(n // 20, 1), num_items=max(n // 50, 2),
                               num_interactions=n)
    return {"wall_s": time.perf_counter() - started,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "train_rows": manifest["splits"]["train"]["rows"]}


CHILDREN = {"raw": child_raw, "tok": child_tok, "lists": child_lists, "lists-probe": child_lists_probe,
            "hf": child_hf, "hf-ranks": child_hf_ranks, "prepare": child_prepare}


# ----------------------------------------------------------------------------------------------
# parent
# ----------------------------------------------------------------------------------------------

def _data_commit(ref: str) -> str | None:
    """The last commit that touched peapod_scale/data/ (up to ``ref``), '+ uncommitted edits' for the working tree.

    The data path's own history, not the commit measured: a run's figures change when this does. None without a
    checkout (``PEAPOD_COMMIT`` names the tree's commit, not this one).
    """
    rev = "HEAD" if ref == "worktree" else ref
    text = (common.git("log", "-1", "--format=%h %s", rev, "--", "peapod_scale/data/") or "")[:100] or None
    if ref == "worktree" and common.differs(["peapod_scale/"]):
        text = f"{text} + uncommitted edits"
    return text


def _available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


CODE_DIR = common.REPO  # the peapod_scale the children import: the working tree, or an export of a commit (--code)


def _child(mode: str, timeout: float, **params) -> dict:
    """Run one measurement in a fresh interpreter; a failure comes back as {'error': ...}."""
    code = (f"import json, sys; sys.path[:0] = [{str(CODE_DIR)!r}, {str(common.REPO / 'benchmarks')!r}]; import bench_data; "
            f"result = bench_data.CHILDREN[{mode!r}](**json.loads(sys.argv[1])); "
            f"result['code_path'] = getattr(sys.modules.get('peapod_scale'), '__file__', None); print(json.dumps(result))")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "TOKENIZERS_PARALLELISM": "false"}
    try:
        done = subprocess.run([sys.executable, "-c", code, json.dumps(params)], capture_output=True, text=True,
                              check=False, cwd=CODE_DIR, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        return {"error": done.stderr.strip()[-2000:] or f"exit status {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


class Recorder:
    def __init__(self, save: bool, ref: str):
        self.save, self.rows = save, []
        self.run_id = uuid.uuid4().hex[:8]
        self.versions = common.versions("pyarrow", "numpy", "peapod_scale", "datasets", "psutil")
        self.data_commit = _data_commit(ref)

    def add(self, row: dict, load: float) -> dict:
        machine = common.machine(load)
        row = {**row, "run_id": self.run_id,
               "machine": {"node": machine["host"], "cpus": machine["cpus"], "platform": machine["platform"],
                           "load_1min": machine["load_1min"], "shared_vm": True},
               "versions": self.versions, "data_code": self.data_commit, "date": common.now_utc()}
        self.rows.append(row)
        if self.save:
            common.append_rows(ROWS, [row])
        return row


def _label(mode: str, workers: int | None) -> str:
    return {"raw": f"stream raw rows, full epoch, {workers} worker(s)",
            "tok": f"stream + tokenize, {workers} worker(s)",
            "tok-workers": f"task_stream (tokenized in workers), {workers} w",
            "tok-main": f"stream rows + tokenize in main, {workers} w",
            "lists": "Python lists + tokenize (reference)",
            "hf": f"HF datasets streaming + tokenize, {workers} worker(s)",
            "hf-ranks": "HF datasets streaming, 2 ranks, rows only"}[mode]


def _print_line(row: dict) -> None:
    if "error" in row or "skipped" in row:
        print(f"  {row['interactions']:>11,} {row['label']:<46} {'SKIPPED: ' + row['skipped'] if 'skipped' in row else 'FAILED: ' + row['error'][-300:]}",
              flush=True)
        return
    extra = ""
    if row["mode"] == "lists":
        extra = f"  load {row['load_s']:.1f} s"
    if row["mode"] == "hf-ranks":
        extra = f"  rows/rank {row['rows_per_rank']}  end stall {', '.join(f'{s:.1f}' for s in row['end_of_pass_stall_s'])} s"
    print(f"  {row['interactions']:>11,} {row['label']:<46} {row['examples_per_s']:>9,.0f}/s  "
          f"main {row['peak_rss_mb']:6.0f} MB  worker {row['worker_peak_rss_mb']:5.0f} MB  "
          f"total RSS {row['total_rss_mb']:6.0f} / PSS {row['total_pss_mb']:6.0f} MB  "
          f"(load {row['machine']['load_1min']:.1f}){extra}", flush=True)


def _train_rate(run: str | None) -> tuple[float, str]:
    """Examples/s per rank that training consumes, and where the figure comes from."""
    if not run:
        return DEFAULT_TRAIN_RATE, ("default: tiny preset, ZeRO-2, 2 CPU ranks, micro batch 32 on the shared 2-core VM, "
                                    "~6.6 steps/s x 32 examples (benchmarks/bench_data.py DEFAULT_TRAIN_RATE)")
    run_dir = Path(run)
    world = json.loads((run_dir / "config.json").read_text()).get("world_size", 1) if (run_dir / "config.json").is_file() else 1
    if (run_dir / "tensorboard").is_dir():
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
        acc.Reload()
        tags = acc.Tags()["scalars"]
        for tag, divide in (("throughput/samples_per_s_per_rank", 1), ("throughput/samples_per_s", world)):
            if tag in tags:
                values = [e.value / divide for e in acc.Scalars(tag)][1:] or [e.value / divide for e in acc.Scalars(tag)]
                return statistics.median(values), f"median {tag}{f' / {world} ranks' if divide > 1 else ''} in {run_dir}/tensorboard"
    log = run_dir / "train.log"
    if log.is_file():
        values = [float(line.split("|")[-1].split()[0]) / world for line in log.read_text().splitlines()
                  if line.rstrip().endswith("samples/s")]
        if values:
            return statistics.median(values[1:] or values), f"median samples/s / {world} ranks in {log}"
    raise SystemExit(f"--train-run {run}: no throughput/samples_per_s scalars and no train.log samples/s lines")


def ensure_dataset(n: int, root: Path, recorder: Recorder) -> Path:
    folder = root / f"synthetic-{n}"
    if (folder / "manifest.json").is_file():
        return folder
    print(f"  preparing {n:,} interactions in {folder} ...", flush=True)
    load = os.getloadavg()[0]
    result = _child("prepare", 3600, root=str(folder), interactions=n)
    if "error" in result:
        raise SystemExit(f"prepare {n} failed: {result['error']}")
    recorder.add({"bench": "prepare", "interactions": n, **result}, load)
    print(f"  prepare {n:,}: {result['wall_s']:.1f} s, peak RSS {result['peak_rss_mb']:.0f} MB", flush=True)
    return folder


def measure(mode: str, n: int, folder: Path, args, recorder: Recorder, workers: int | None = None) -> dict:
    base = {"bench": "stream", "interactions": n, "mode": mode, "label": _label(mode, workers), "workers": workers,
            "batch_size": args.batch_size}
    if mode == "lists":
        probe = _child("lists-probe", 600, root=str(folder))
        if "error" in probe:
            return recorder.add({**base, "error": "probe: " + probe["error"]}, os.getloadavg()[0])
        # the rows in lists, plus one shard's Arrow table and to_pylist buffers while loading, 20 % slack;
        # once a smaller size has run in this run, its measured peak per row replaces the probe's figure
        measured = [r for r in recorder.rows if r.get("mode") == "lists" and "rows_loaded" in r]
        if measured:
            per_row = max((r["peak_rss_mb"] - probe["base_rss_mb"]) * 2**20 / r["rows_loaded"] for r in measured)
            estimate = probe["base_rss_mb"] + 1.1 * per_row * probe["train_rows"] / 2**20
            base["estimate_from"] = "measured peak per row of a smaller size"
        else:
            per_row = probe["bytes_per_row"]
            estimate = probe["base_rss_mb"] + 1.2 * per_row * (probe["train_rows"] + probe["probe_rows"]) / 2**20
            base["estimate_from"] = "one-shard probe"
        limit = min(args.memory_limit_gb * 1024, 0.8 * _available_mb())
        base |= {"estimated_peak_mb": estimate, "bytes_per_row": per_row, "memory_limit_mb": limit}
        if estimate > limit:
            reason = (f"estimated peak {estimate / 1024:.1f} GB ({per_row:.0f} B/row x "
                      f"{probe['train_rows']:,} rows) > limit {limit / 1024:.1f} GB "
                      f"(--memory-limit-gb {args.memory_limit_gb:g}, 80 % of MemAvailable)")
            return recorder.add({**base, "skipped": reason}, os.getloadavg()[0])
    load = os.getloadavg()[0]
    params = {"root": str(folder), "batch": args.batch_size, "batches": args.batches}
    if workers is not None:
        params["workers"] = workers
    result = _child(mode, args.timeout, **params)
    if "tokenized_in" in result:
        base["label"] = _label(f"tok-{result['tokenized_in']}", workers)
    return recorder.add({**base, **result}, load)


def print_table(rows: list[dict], train_rate: float, train_source: str) -> None:
    stream_rows = [r for r in rows if r.get("bench") == "stream"]
    print("\n" + "=" * 150)
    print("Data pipeline, examples/s per rank and peak memory (shared 2-core VM: timings noisy, memory not)")
    print(f"{'interactions':>12}  {'mode':<46} {'ex/s':>8} {'vs lists':>8}  {'main MB':>8} {'worker MB':>9} "
          f"{'tot RSS':>8} {'tot PSS':>8} {'RSS vs lists':>12}  {'load':>5}  notes")
    for r in stream_rows:
        if "error" in r or "skipped" in r:
            print(f"{r['interactions']:>12,}  {r['label']:<46} {'skipped: ' + r['skipped'] if 'skipped' in r else 'failed'}")
            continue
        baseline = next((b for b in stream_rows if b["mode"] == "lists" and b["interactions"] == r["interactions"]
                         and "examples_per_s" in b), None)
        tokenized = r["mode"] in ("tok", "lists", "hf")
        speed = f"{r['examples_per_s'] / baseline['examples_per_s']:.2f}x" if baseline and tokenized else "-"
        memory = f"{r['total_rss_mb'] / baseline['total_rss_mb']:.2f}x" if baseline else "-"
        notes = ""
        if r["mode"] == "lists":
            notes = f"load {r['load_s']:.1f} s, est. {r['estimated_peak_mb']:.0f} MB"
        elif r["mode"] == "hf-ranks":
            notes = (f"rows/rank {r['rows_per_rank'][0]:,} / {r['rows_per_rank'][1]:,} of {r['train_rows']:,} "
                     f"({r['train_files']} files); end stall {max(r['end_of_pass_stall_s']):.1f} s")
        elif r["mode"] in ("tok", "hf"):
            notes = f"{r['batches']} batches, first after {r['first_batch_s']:.1f} s"
        elif r["mode"] == "raw":
            notes = f"{r['examples']:,} rows in {r['wall_s']:.0f} s"
        print(f"{r['interactions']:>12,}  {r['label']:<46} {r['examples_per_s']:>8,.0f} {speed:>8}  {r['peak_rss_mb']:>8.0f} "
              f"{r['worker_peak_rss_mb']:>9.0f} {r['total_rss_mb']:>8.0f} {r['total_pss_mb']:>8.0f} {memory:>12}  "
              f"{r['machine']['load_1min']:>5.1f}  {notes}")
    print("(ex/s: rows/s without tokenization for raw and hf-ranks; vs lists: against the lists way at the same size in "
          "the same run; main/worker: ru_maxrss; tot: sampled peak sum over main + workers; load: 1-min load average "
          "at the start)")

    print(f"\ntraining consumes {train_rate:,.0f} examples/s per rank ({train_source})")
    for mode in ("raw", "tok"):
        for workers in sorted({r["workers"] for r in stream_rows if r["mode"] == mode}):
            ok = sorted((r for r in stream_rows if r["mode"] == mode and r["workers"] == workers and "total_pss_mb" in r),
                        key=lambda r: r["interactions"])
            if len(ok) < 2:
                continue
            small, large = ok[0], ok[-1]
            sums = [(r["peak_rss_mb"] + r["worker_peak_rss_mb"]) for r in (small, large)]
            figures = {"main + largest worker peak RSS": sums, "sampled sum of RSS": [small["total_rss_mb"], large["total_rss_mb"]],
                       "sampled sum of PSS": [small["total_pss_mb"], large["total_pss_mb"]],
                       "main process peak RSS": [small["peak_rss_mb"], large["peak_rss_mb"]]}
            for name, (a, b) in figures.items():
                growth = b / a - 1
                verdict = "MET" if growth <= GOAL_RSS_GROWTH else "NOT MET"
                # the figure: peak RSS of the main process and its loader workers
                headline = name == "sampled sum of RSS" and mode == "raw" and workers == 1
                print(f"{'goal' if headline else 'also'} stream memory growth {small['interactions'] / 1e6:g}M -> "
                      f"{large['interactions'] / 1e6:g}M ({_label(mode, workers)}, {name}): "
                      f"{a:.0f} -> {b:.0f} MB = {growth:+.1%} (<= +10 %): {verdict}")
    for r in stream_rows:
        if r["mode"] in ("tok", "hf") and "examples_per_s" in r:
            ratio = r["examples_per_s"] / train_rate
            print(f"{'goal' if r['mode'] == 'tok' else 'also'} {r['interactions'] / 1e6:g}M {r['label']}: "
                  f"{r['examples_per_s']:,.0f} / {train_rate:,.0f} = {ratio:.1f}x training's rate (>= 20x): "
                  f"{'MET' if ratio >= GOAL_RATIO else 'NOT MET'}"
                  + (f"  [vs the default {DEFAULT_TRAIN_RATE:.0f}/s: {r['examples_per_s'] / DEFAULT_TRAIN_RATE:.1f}x]"
                     if train_rate != DEFAULT_TRAIN_RATE else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default="/tmp/bench_data",
                        help="folder of prepared synthetic sets, reused across runs (default: %(default)s)")
    parser.add_argument("--sizes", type=int, nargs="+", default=SIZES, help="interactions (default: 1M 5M 20M)")
    parser.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="loader workers for tok (default: 1 2)")
    parser.add_argument("--raw-workers", type=int, nargs="+", default=[1], help="loader workers for raw (default: 1)")
    parser.add_argument("--hf-workers", type=int, nargs="+", default=[1], help="loader workers for hf (default: 1)")
    parser.add_argument("--batch-size", type=int, default=32, help="rows per batch, training's micro batch (default: 32)")
    parser.add_argument("--batches", type=int, default=600, help="tokenized batches per tok/lists/hf measurement")
    parser.add_argument("--memory-limit-gb", type=float, default=6.0, help="skip a lists run estimated above this")
    parser.add_argument("--train-run", default=None, help="a run folder whose measured samples/s per rank is training's rate")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per measurement")
    parser.add_argument("--no-save", action="store_true", help="print only; append nothing to the results file")
    parser.add_argument("--code", default="HEAD",
                        help="git ref whose peapod_scale/ is measured (exported to a temp dir: other people's "
                             "uncommitted edits are not measured), or 'worktree' (default: %(default)s)")
    parser.add_argument("--report", metavar="RUN_ID", default=None,
                        help="only print the table of an earlier run from the results file")
    args = parser.parse_args()

    if args.report:
        rows = [json.loads(line) for line in ROWS.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if r.get("run_id") == args.report]
        if not rows:
            raise SystemExit(f"no rows of run {args.report} in {ROWS}")
        print_table(rows, *_train_rate(args.train_run))
        return

    global CODE_DIR
    scratch = tempfile.TemporaryDirectory(prefix="bench_data_code_")
    if args.code != "worktree":
        CODE_DIR = common.export_code(args.code, Path(scratch.name))
    train_rate, train_source = _train_rate(args.train_run)
    recorder = Recorder(save=not args.no_save, ref=args.code)
    root = Path(args.data_root)
    root.mkdir(parents=True, exist_ok=True)
    print(f"data benchmark {recorder.run_id} on {platform.node()} ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}), "
          f"code: {args.code} ({CODE_DIR}), data code: {recorder.data_commit}", flush=True)
    for n in args.sizes:
        folder = ensure_dataset(n, root, recorder)
        for mode in args.modes:
            for workers in {"raw": args.raw_workers, "tok": args.workers, "hf": args.hf_workers}.get(mode, [None]):
                _print_line(measure(mode, n, folder, args, recorder, workers))
    print_table(recorder.rows, train_rate, train_source)
    if recorder.save:
        print(f"\nappended {len(recorder.rows)} rows to {ROWS}")


if __name__ == "__main__":
    main()
