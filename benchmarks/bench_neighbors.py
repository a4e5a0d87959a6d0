"""Step time and peak memory of the neighbour user prompt (PeaPOD v2), code of one commit against another;
and, with ``--search``, the time and recall of ``prepare``'s neighbour search, exact against approximate.

    python benchmarks/bench_neighbors.py                                   # before vs after the rewrite
    python benchmarks/bench_neighbors.py --code HEAD --rounds 5 --scope prompt
    python benchmarks/bench_neighbors.py --report RUN_ID                   # reprint a run's table
    python benchmarks/bench_neighbors.py --search --threads 2              # exact vs ANN at 10 k, 100 k, 1 M users
    python benchmarks/bench_neighbors.py --search --sizes 10000 20000 50000 --data clustered
    python benchmarks/bench_neighbors.py --search --sizes 100000 --nprobe 32 64 128   # tune nprobe
    python benchmarks/bench_neighbors.py --search --report RUN_ID

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

``--search`` measures ``top_neighbors`` (peapod_scale/data/prepare/user_similarity.py) of the working tree, in
this process (its rows' ``code_commit`` ends in ``+dirty`` when that file differs from HEAD): the exact search
(``method="exact"``) and the FAISS IVF-Flat one (``method="ann"``, the module's nlist/nprobe unless ``--nprobe``
names others), each run once, at ``--threads`` threads for torch and faiss alike. The embeddings are made as
``prepare`` makes them (``--data bpr``, the default): ``bpr_embeddings`` (64-d, 10 epochs, seed 0) on synthetic
interactions -- 20,000 items in 50 topics with Zipf popularity, each user drawing ~20 items from two topics and
one in five from the whole catalogue -- or (``--data clustered``, seconds instead of minutes at 1 M) Gaussian
clusters with a decaying spectrum. Recall@n is the mean over users of |ANN list & exact list| / n: over all
users up to ``--full-exact-max`` users; above it the exact search is not run (hours), but the exact lists of
``--sample`` random users are computed by brute force (each against all N), their time x N / sample is the
exact search's ESTIMATED time (marked ``~`` in the table), and recall is over that sample. Rows go to
``benchmarks/results/bench_neighbors_search.jsonl``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np

import common

ROWS = common.RESULTS / "bench_neighbors.jsonl"
SEARCH_ROWS = common.RESULTS / "bench_neighbors_search.jsonl"
SEARCH_CODE = "peapod_scale/data/prepare/user_similarity.py"
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
    search = p.add_argument_group("--search: prepare's neighbour search, exact against approximate")
    search.add_argument("--search", action="store_true", help="measure the neighbour search, not the prompt")
    search.add_argument("--sizes", nargs="+", type=int, default=[10_000, 100_000, 1_000_000], help="users")
    search.add_argument("--data", choices=["bpr", "clustered"], default="bpr")
    search.add_argument("--dim", type=int, default=64, help="embedding width (prepare's --mf-dim default)")
    search.add_argument("--nprobe", nargs="+", type=int, default=[None],
                        help="IVF lists probed (default: the module's own choice); one ANN run each")
    search.add_argument("--full-exact-max", type=int, default=100_000,
                        help="above this many users the exact search is estimated from --sample users")
    search.add_argument("--sample", type=int, default=2_000, help="users whose exact lists are brute-forced")
    search.add_argument("--cache", type=Path, help="folder to keep embeddings in and reuse them from (BPR on 1 M "
                        "users took 32 min here); a file is named by data, users, width and seed")
    return p.parse_args(argv)


def synthetic_interactions(users: int, seed: int = 0, items: int = 20_000, topics: int = 50,
                           per_user: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """(0-based user, 1-based item) pairs with taste structure: BPR on them gives prepare's kind of embedding,
    most users close to others of their two topics, plus the noise of few interactions."""
    rng = np.random.default_rng(seed)
    item_topic = rng.integers(0, topics, items)
    popularity = 1.0 / np.arange(1, items + 1) ** 0.8
    user_topics = rng.integers(0, topics, (users, 2))
    lengths = rng.poisson(per_user - 3, users) + 3
    user = np.repeat(np.arange(users), lengths)
    topic = user_topics[user, rng.integers(0, 2, len(user))]
    item = np.empty(len(user), dtype=np.int64)
    for t in range(topics):
        members, chosen = np.flatnonzero(item_topic == t), topic == t
        item[chosen] = rng.choice(members, size=chosen.sum(), p=popularity[members] / popularity[members].sum())
    anywhere = rng.random(len(user)) < 0.2
    item[anywhere] = rng.choice(items, size=anywhere.sum(), p=popularity / popularity.sum())
    return user, item + 1


def clustered_vectors(users: int, dim: int, seed: int = 0) -> np.ndarray:
    """Gaussian clusters (about 100 users each, Zipf sizes) with a 1/sqrt(k) spectrum, as MF factors have."""
    rng = np.random.default_rng(seed)
    clusters = max(users // 100, 1)
    scale = (np.arange(1, dim + 1) ** -0.5).astype(np.float32)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32) * scale
    sizes = rng.zipf(1.5, size=clusters).astype(float)
    member = rng.choice(clusters, size=users, p=sizes / sizes.sum())
    return centres[member] + 0.5 * rng.normal(size=(users, dim)).astype(np.float32) * scale


def recall_at_n(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over rows of |found & exact| / n."""
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found.tolist(), exact.tolist())]))


def search_main(args) -> int:
    """Exact against ANN at each size; see the module's docstring."""
    import time

    import faiss
    import torch

    from peapod_scale.data.prepare import user_similarity as us

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    run_id, machine = uuid.uuid4().hex[:8], common.machine()
    shared = dict(run_id=run_id, host=machine["host"], platform=machine["platform"], cpus=machine["cpus"],
                  bench_commit=common.commit(), code_commit=common.commit(dirty_paths=[SEARCH_CODE]),
                  # the file measured, by content: rows of different uncommitted edits share one "+dirty" commit
                  code_sha256=hashlib.sha256((common.REPO / SEARCH_CODE).read_bytes()).hexdigest()[:12],
                  **common.versions("numpy", "faiss"), data=args.data, dim=args.dim, neighbors=args.neighbors,
                  threads=args.threads)
    rows = []
    for users in args.sizes:
        cached = args.cache / f"{args.data}_{users}x{args.dim}_seed0.npy" if args.cache else None
        started = time.perf_counter()
        if cached is not None and cached.exists():
            embeddings, embed_s = np.load(cached), None
        else:
            if args.data == "bpr":
                pairs = synthetic_interactions(users)
                embeddings = us.bpr_embeddings(*pairs, users, 20_000, args.dim, seed=0, progress=True)
            else:
                embeddings = clustered_vectors(users, args.dim)
            embed_s = time.perf_counter() - started
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                np.save(cached, embeddings)
        print(f"{users:,} users: {args.data} embeddings "
              f"{f'from {cached}' if embed_s is None else f'in {embed_s:.1f} s'}", flush=True)
        load = os.getloadavg()[0]
        if users <= args.full_exact_max:
            started = time.perf_counter()
            exact = us.top_neighbors(embeddings, args.neighbors, method="exact", progress=True)
            exact_s, estimated, sample = time.perf_counter() - started, False, None
        else:
            sample = np.sort(np.random.default_rng(0).choice(users, size=args.sample, replace=False))
            vectors = torch.nn.functional.normalize(torch.from_numpy(embeddings).float(), dim=1)
            started = time.perf_counter()
            exact = us._exact_neighbors(vectors, sample, min(args.neighbors, users - 1), 1024, progress=True)
            exact_s, estimated = (time.perf_counter() - started) * users / args.sample, True
            del vectors
        print(f"  exact {'~' if estimated else ''}{exact_s:.1f} s"
              f"{f' (estimated from {args.sample:,} users x N / {args.sample:,})' if estimated else ''}", flush=True)
        for nprobe in args.nprobe:
            ann_load = os.getloadavg()[0]
            started = time.perf_counter()
            found, search = us.find_neighbors(embeddings, args.neighbors, method="ann", seed=0, nprobe=nprobe,
                                              progress=True)
            ann_s = time.perf_counter() - started
            recall = recall_at_n(found if sample is None else found[sample], exact)
            row = dict(shared, users=users, embed_s=None if embed_s is None else round(embed_s, 2), exact_s=exact_s,
                       exact_estimated=estimated,
                       exact_how=(f"{args.sample} random users against all, x N/{args.sample}" if estimated
                                  else "all users"),
                       ann_s=ann_s, ann_search=search, speedup=exact_s / ann_s, recall=recall,
                       recall_users=users if sample is None else args.sample, load_1min=round(load, 2),
                       ann_load_1min=round(ann_load, 2), date=common.now_utc())
            rows.append(row)
            print(f"  ANN {search}: {ann_s:.1f} s, x{row['speedup']:.1f}, recall@{args.neighbors} {recall:.4f} "
                  f"(load {load:.2f} / {ann_load:.2f})", flush=True)
            if not args.no_save:
                common.append_rows(SEARCH_ROWS, [row])
    print(f"run {run_id}: data={args.data}, dim={args.dim}, n={args.neighbors}, threads={args.threads}, "
          f"code {shared['code_commit']}, faiss {shared['faiss']}")
    print_search_table(rows)
    return 0


def print_search_table(rows: list[dict]) -> None:
    """N, exact s (~: estimated), ANN s, speed-up, recall@n, the index's settings."""
    print(f"{'users':>9} {'exact s':>9} {'ANN s':>8} {'speed-up':>8} {'recall':>7} {'over':>7} {'load':>9}  ANN search")
    for r in rows:
        exact = f"{'~' if r['exact_estimated'] else ''}{r['exact_s']:.1f}"
        print(f"{r['users']:>9,} {exact:>9} {r['ann_s']:>8.1f} {r['speedup']:>8.1f} {r['recall']:>7.4f} "
              f"{r['recall_users']:>7,} {r['load_1min']:>4.1f}/{r['ann_load_1min']:<4.1f}  {r['ann_search']}")
    if any(r["exact_estimated"] for r in rows):
        print("~: estimated, the exact lists of a random sample of users timed and scaled by N / sample")


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
        path = SEARCH_ROWS if args.search else ROWS
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        (print_search_table if args.search else print_table)([r for r in rows if r["run_id"] == args.report])
        return 0
    if args.search:
        return search_main(args)
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
