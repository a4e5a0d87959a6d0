"""The cost of users: the trainer's step, memory and checkpoint at 10 k to 10 M users, dense table beside sharded.

    python benchmarks/bench_users.py                                  # 10k 100k 1M 10M users, dense and sharded
    python benchmarks/bench_users.py --users 10000 100000 --steps 20  # a quick look
    python benchmarks/bench_users.py --report RUN_ID                  # reprint a run's table and redraw its PNG

Each size gets a synthetic dataset (``prepare --source synthetic``: ``--per-user`` interactions a user, 5 k items
that every size covers, so that the tokenizer and the backbone are the same at every size; no neighbour lists), prepared once into ``--scratch`` and reused. Each (size, table) is one real training job:
``--ranks`` gloo ranks through torchrun, the tiny preset, ZeRO-2, fp32, micro-batch 64, ``--steps`` optimizer steps
logged every 5, one checkpoint at the end, no evaluation. What a row holds, read from the run's own records:

- step time and its phases (data, forward, backward, optimizer): medians of the logged values after the first
  logged one (compilation and first-touch allocation);
- peak memory: the largest peak resident memory of a rank (the trainer's ``memory/peak_gib``);
- checkpoint: its bytes, the bytes of rank 0's own files (its ZeRO partition, its table shard, its RNG), and the
  save time the trainer logs;
- the user table per rank: rows x width x 4 bytes (sharded: the rank's rows and their accumulators).

Dense runs stop at ``--dense-max`` users (default 1 M): at 10 M the dense table is 640 M parameters, about 16 bytes
each with AdamW's states under ZeRO-2, more than this machine's memory for 2 ranks. Ratios: each step against the
same table's at the smallest size, and sharded against dense at the same size. One JSON row per run is appended to
``benchmarks/results/bench_users.jsonl`` (machine, versions, date, commit); the PNG (cost against users) goes beside.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import common

ROWS = common.RESULTS / "bench_users.jsonl"
PHASES = ("data", "forward", "backward", "optimizer")


def prepare(scratch: Path, users: int, per_user: int, items: int) -> tuple[Path, float]:
    """The dataset of ``users`` (reused when already prepared with the same shape) and its prepare seconds."""
    data = scratch / f"users{users}-per{per_user}-items{items}"
    record = data / "bench_prepare.json"
    if record.is_file():
        return data, json.loads(record.read_text())["seconds"]
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "peapod_scale.cli", "prepare", "--source", "synthetic", "--output", str(data),
                    "--num-users", str(users), "--num-items", str(items), "--num-interactions", str(users * per_user),
                    "--neighbors", "0", "--num-negatives", "20", "--overwrite"], check=True, cwd=common.REPO,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    seconds = time.perf_counter() - started
    record.write_text(json.dumps({"seconds": seconds}))
    return data, seconds


def train(data: Path, run_dir: Path, table: str, ranks: int, steps: int) -> float:
    shutil.rmtree(run_dir, ignore_errors=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
               "-m", "peapod_scale.train", "--data", str(data), "--output", str(run_dir), "--arch", "tiny",
               "--deepspeed", "z2", "--precision", "fp32", "--micro-batch-size", "64", "--max-steps", str(steps),
               "--log-every", "5", "--save-every", str(steps), "--keep-last", "1", "--eval-split", "none",
               "--warmup-steps", "5", "--user-table", table, "--num-workers", "1"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=common.REPO, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu",
                               "TOKENIZERS_PARALLELISM": "false"})
    if done.returncode != 0:
        raise RuntimeError(f"training failed ({table}, {data.name}):\n{(done.stdout + done.stderr)[-3000:]}")
    return time.perf_counter() - started


def measure(run_dir: Path, steps: int) -> dict:
    """The row's figures from the run folder: TensorBoard scalars, the checkpoint's record, train.log."""
    # lazy: benchmarks import the package from the tree they measure, after argument parsing
    from peapod_scale.tools.run_report import read_scalars
    from peapod_scale.training import checkpoint as checkpointing

    scalars = read_scalars(run_dir)
    later = lambda tag: [v for _, v in scalars[tag][1:]] or [v for _, v in scalars[tag]]  # noqa: E731
    row = {"step_ms": 1e3 * statistics.median(later("time/step_s")),
           **{f"{p}_ms": 1e3 * statistics.median(later(f"time/{p}_s")) for p in PHASES},
           "peak_gib": max(v for _, v in scalars["memory/peak_gib"])}
    tag_dir = run_dir / "checkpoints" / f"step{steps}"
    files = checkpointing.read_meta(tag_dir)["files"]
    row["checkpoint_mib"] = sum(files.values()) / 2**20
    rank0 = [n for n in files if "rank00000" in n or "zero_pp_rank_0_" in n or n.startswith("mp_rank_00")]
    row["checkpoint_rank0_mib"] = sum(files[n] for n in rank0) / 2**20
    log = (run_dir / "train.log").read_text()
    saved = [line for line in log.splitlines() if line.startswith(f"checkpoint step{steps}:")]
    row["save_s"] = float(saved[-1].split(" in ")[1].split(" s")[0]) if saved else None
    row["params_m"] = float(log.split(" M parameters")[0].split()[-1])
    return row


def table_bytes_per_rank(users: int, dim: int, table: str, ranks: int) -> float:
    # lazy: benchmarks import the package from the tree they measure, after argument parsing
    from peapod_scale.training.memory_estimate import paper_model_states

    rows = users + 1
    if table == "sharded":
        return -(-rows // ranks) * (dim * 4 + 4)  # the rank's rows and their row-wise Adagrad accumulators
    return sum(paper_model_states(rows * dim, 2, ranks, "fp32").values())  # ZeRO-2 fp32: the ZeRO paper's formula


def print_table(rows: list[dict]) -> None:
    base = {}
    for row in rows:
        base.setdefault(row["table"], row["step_ms"])
    dense = {r["users"]: r["step_ms"] for r in rows if r["table"] == "dense"}
    print(f"{'users':>11} {'table':>8} {'params M':>9} {'step ms':>8} {'vs first':>8} {'vs dense':>8} "
          f"{'data':>6} {'fwd':>6} {'bwd':>6} {'opt':>6} {'peak GiB':>8} {'table/rank MiB':>14} {'ckpt MiB':>9} "
          f"{'rank0 MiB':>9} {'save s':>7} {'prepare s':>9}")
    for r in rows:
        versus = f"{r['step_ms'] / dense[r['users']]:.2f}x" if r["table"] == "sharded" and r["users"] in dense else "-"
        print(f"{r['users']:>11,} {r['table']:>8} {r['params_m']:>9.2f} {r['step_ms']:>8.0f} "
              f"{r['step_ms'] / base[r['table']]:>7.2f}x {versus:>8} " + " ".join(f"{r[p + '_ms']:>6.0f}" for p in PHASES)
              + f" {r['peak_gib']:>8.2f} {r['table_bytes_per_rank'] / 2**20:>14.1f} {r['checkpoint_mib']:>9.1f} "
              f"{r['checkpoint_rank0_mib']:>9.1f} {r['save_s'] or 0:>7.2f} {r['prepare_s']:>9.0f}")


def draw(rows: list[dict], path: Path) -> None:
    # lazy: matplotlib is the bench extra's
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for table, style in (("dense", "o-"), ("sharded", "s-")):
        mine = [r for r in rows if r["table"] == table]
        if not mine:
            continue
        users = [r["users"] for r in mine]
        axes[0].plot(users, [r["step_ms"] for r in mine], style, label=table)
        axes[1].plot(users, [r["checkpoint_rank0_mib"] for r in mine], style, label=table)
        axes[2].plot(users, [r["peak_gib"] for r in mine], style, label=table)
    for axis, title in zip(axes, ("step time (ms, median)", "checkpoint: rank 0's files (MiB)",
                                  "peak memory of a rank (GiB)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("users")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    first = rows[0]
    figure.suptitle(f"bench_users {first['run']}: tiny preset, ZeRO-2 fp32, {first['ranks']} gloo ranks, micro-batch 64 "
                    f"({first['host']}, commit {first['commit']})")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, nargs="+", default=[10_000, 100_000, 1_000_000, 10_000_000])
    parser.add_argument("--tables", nargs="+", default=["dense", "sharded"], choices=["dense", "sharded"])
    parser.add_argument("--dense-max", type=int, default=1_000_000, help="largest size run with the dense table")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--per-user", type=int, default=4, help="interactions a user (3 at least: leave-one-out)")
    parser.add_argument("--items", type=int, default=5_000,
                        help="items; every size should cover them all, so that the vocabulary and the backbone match")
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/bench_users"))
    parser.add_argument("--report", metavar="RUN_ID", help="reprint the table of a run from its rows")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    if args.report:
        rows = [r for r in map(json.loads, ROWS.read_text().splitlines()) if r["run"] == args.report]
        print_table(rows)
        draw(rows, common.RESULTS / f"bench_users_{args.report}.png")
        return
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    provenance = {"run": run_id, "date": common.now_utc(), "commit": common.commit(dirty_paths=["peapod_scale"]),
                  **common.machine(), **common.versions("deepspeed", "torchrec", "fbgemm-gpu-cpu"), "ranks": args.ranks,
                  "steps": args.steps, "per_user": args.per_user, "items": args.items}
    rows = []
    for users in sorted(args.users):
        data, prepare_s = prepare(args.scratch, users, args.per_user, args.items)
        for table in args.tables:
            if table == "dense" and users > args.dense_max:
                print(f"{users:,} users, dense: skipped (above --dense-max {args.dense_max:,}: "
                      f"{table_bytes_per_rank(users, 64, 'dense', args.ranks) / 2**30:.1f} GiB of table a rank)")
                continue
            wall = train(data, args.scratch / f"run-{table}-{users}", table, args.ranks, args.steps)
            row = {**provenance, "users": users, "table": table, "wall_s": wall, "prepare_s": prepare_s,
                   "table_bytes_per_rank": table_bytes_per_rank(users, 64, table, args.ranks),
                   **measure(args.scratch / f"run-{table}-{users}", args.steps)}
            rows.append(row)
            print(f"{users:,} users, {table}: step {row['step_ms']:.0f} ms, checkpoint {row['checkpoint_mib']:.1f} MiB",
                  flush=True)
            if not args.no_save:
                common.append_rows(ROWS, [row])
            shutil.rmtree(args.scratch / f"run-{table}-{users}", ignore_errors=True)
    print_table(rows)
    if not args.no_save and rows:
        draw(rows, common.RESULTS / f"bench_users_{run_id}.png")


if __name__ == "__main__":
    main()
