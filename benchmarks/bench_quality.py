"""Recommendation quality of a random-init PeaPOD against counting baselines, on the leak-free protocol and P5's.

    python benchmarks/bench_quality.py --steps 200 --limit 300                    # smoke: minutes
    python benchmarks/bench_quality.py                                            # full budget (see below)
    python benchmarks/bench_quality.py --dataset ml-100k --item-index random --user-prompt pool
    python benchmarks/bench_quality.py --dataset all-beauty                       # + explanation (BLEU / ROUGE)
    python benchmarks/bench_quality.py --report RUN_ID [RUN_ID ...]               # reprint (and merge) runs' tables

``--dataset beauty`` (default) prepares the P5 "Amazon Beauty" split at ../shared/data/p5/beauty
(``--input``) once per ``--item-index`` into ``--work`` (outside the repository); ``ml-100k`` prepares
MovieLens-100K; ``all-beauty`` the Amazon All_Beauty_5 reviews (../shared/data/reviews), whose review texts
add the explanation task (trained beside the other two, scored with BLEU-1/4 and both ROUGEs). For every item index and every ``--user-prompt`` (pool = PeaPOD, neighbors = PeaPOD v2,
none = POD) it trains with ``peapod-scale train`` on ``--nproc`` ranks (ZeRO-2, the same ``--steps``,
``--arch`` and ``--train-args`` for all: the same budget), evaluates sequential and top-N (1 + 99
candidates) on ``--split`` and puts beside the model the three counting baselines computed on the same
rows from the training part only: popularity, item-to-item transitions and "last id + k"
(``baselines.NextIds``, which measures the numbering leak of ``--item-index sequential``).

Full budget (the defaults): the tiny preset with the demo's flags (``BASE_TRAIN_ARGS``: batch 128 per rank on
2 ranks, lr 2e-3, two sequential steps per top-N step; the best of the ML-100K valid-split ablations,
benchmarks/results/bench_quality_ml100k_valid_ablations.md), constrained decoding (the trainer's default),
then each dataset's own flags (``DATASETS``), then ``--train-args``. On ML-100K that is the demo itself,
1,150 steps with top-N prompts of 50 candidates after the user's last item, ~5 min of training on this 2-core
machine (0.28 s a step). The Beauty and All_Beauty_5 defaults keep the top-N prompts their recorded tables were
measured with (20 candidates, no history).
On Beauty a step costs ~0.45 s (a 12k-item vocabulary), and evaluating all 22,363 users with 20 beams
would take ~40 min, so a configuration within 30 minutes on this 2-core machine is ``--steps 2000 --limit
3000`` (the defaults for beauty: 3,000 test users spread over the split, the baselines scored on the same rows):
21-23 min each, measured.

Each training gets a free rendezvous port (``--master_port``): on a machine shared with other DeepSpeed
jobs the default 29500 may be taken, and the ranks then wait at start-up without a word.

Published numbers are printed beside ours, each with its protocol. They come from pretrained weights
or GPU hours; ours from random init on 2 CPU cores.

One JSON row per configuration goes to benchmarks/results/bench_quality.jsonl as soon as it is done
(machine, versions, date, commit, run id, flags, wall time, metrics); the end prints a Markdown table and
saves benchmarks/results/bench_quality_<run_id>.md and .png (metric bars per method; matplotlib) and the
training curves per task of every configuration (``peapod-scale report`` on the run folders) under
benchmarks/results/bench_quality_<run_id>_curves/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from peapod_scale.eval.text_metrics import ROUGE_NOTE
from peapod_scale.tools.atomic_files import write_text_atomic

import common

METRICS = ("HR@5", "NDCG@5", "HR@10", "NDCG@10")
TASKS = ("sequential", "topn", "explanation")
METHODS = ("model", "popularity", "transitions", "next_ids")
EXPLANATION_METRICS = ("BLEU-1", "BLEU-4", "ROUGE-1/papers", "ROUGE-2/papers", "ROUGE-L/papers",
                       "ROUGE-1/standard", "ROUGE-2/standard", "ROUGE-L/standard")
SHARED = common.REPO.parent / "shared" / "data"
# every dataset's flags: the demo's (scripts/demo.sh) as the recorded Beauty runs had them (70 warm-up; ml-100k
# takes the demo's 60 below); the dataset's "train" flags and --train-args follow them, a later flag wins
BASE_TRAIN_ARGS = "--dropout 0 --micro-batch-size 128 --lr 2e-3 --warmup-steps 70 --task-weights sequential=2,topn=1"
# dataset -> prepare --source, default --input (None: the source's own), more prepare flags, flags added after
# --train-args, and the default --steps and --limit: a configuration within 30 minutes on 2 CPU cores
DATASETS = {
    # Beauty and All_Beauty_5: the recorded tables (benchmarks/README.md) trained top-N with 20 candidates and
    # no history (the trainer's defaults before the third round of ML-100K ablations)
    "beauty": {"source": "p5", "input": SHARED / "p5" / "beauty", "prepare": "",
               "train": "--topn-candidates 20 --topn-history 0",
               "steps": 2000, "limit": 3000},
    # the demo (scripts/demo.sh): 1,150 steps, 60 warm-up, the trainer's top-N prompts (50 candidates, last item)
    "ml-100k": {"source": "movielens", "input": None, "prepare": "", "train": "--warmup-steps 60", "steps": 1150,
                "limit": None},
    # 85 items: a user's never-seen items are too few for 99 negatives, so top-N ranks 1 + 49. The reviews'
    # text makes a third task: trained as often as top-N, scored with BLEU/ROUGE
    "all-beauty": {"source": "amazon-reviews", "input": SHARED / "reviews" / "All_Beauty_5.json.gz",
                   "prepare": "--num-negatives 49",
                   "train": "--topn-candidates 20 --topn-history 0 --task-weights sequential=2,topn=1,explanation=1 "
                            "--eval-tasks sequential,topn,explanation",
                   "steps": 1400, "limit": None},
}
PUBLISHED = [  # (method, protocol, task, {metric: value}); sequential on P5 Beauty
    ("POD (Li et al. 2023)", "P5 sequential ids (leaky)", "sequential",
     {"HR@5": .0537, "NDCG@5": .0395, "HR@10": .0688, "NDCG@10": .0443}),
    ("P5, random ids (Hua et al. 2023)", "leak-free", "sequential", {"HR@5": .0213, "HR@10": .0479}),
    ("SASRec", "leak-free", "sequential", {"HR@5": .0387, "HR@10": .0605}),
    ("TIGER", "leak-free", "sequential", {"HR@5": .0454, "HR@10": .0648}),
]


def _sh(cmd: list[str], log: Path, env: dict | None = None) -> float:
    start = time.time()
    log.parent.mkdir(parents=True, exist_ok=True)  # --work may not exist yet
    with open(log, "w") as out:
        code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=common.REPO, env=env)
    if code != 0:
        sys.exit(f"bench_quality: {shlex.join(cmd)} exited {code}; see {log}")
    return time.time() - start


def prepare(args, item_index: str) -> Path:
    data = Path(args.work) / f"{args.dataset}-{item_index}"
    if not (data / "manifest.json").exists():
        dataset = DATASETS[args.dataset]
        cmd = ["peapod-scale", "prepare", "--output", str(data), "--item-index", item_index,
               "--source", dataset["source"]]
        cmd += (["--input", args.input] if args.input else []) + shlex.split(dataset["prepare"])
        _sh(cmd, Path(args.work) / f"prepare-{args.dataset}-{item_index}.log")
    return data


def next_id_metrics(data: Path, split: str, limit: int | None, seed: int) -> dict:
    """The "last id + k" heuristic on the rows the model was evaluated on."""
    from peapod_scale.data.dataset import read_manifest, read_rows
    from peapod_scale.eval import ranking_metrics as metrics
    from peapod_scale.eval.baselines import NextIds
    from peapod_scale.eval.evaluate import baseline_ranks, spread_rows

    manifest = read_manifest(data)
    rows = spread_rows(read_rows(data, manifest, split), limit)
    heuristic = NextIds(manifest["counts"]["items"])
    return {task: metrics.summarize(baseline_ranks(heuristic, rows, task, seed)) for task in ("sequential", "topn")}


def all_user_baselines(data: Path, split: str, seed: int) -> dict:
    """The counting baselines on every user of the split: what a ``--limit`` subset's figures are a sample of.

    ``--limit`` users are spread evenly over the split (``evaluation.spread_rows``); runs before that took the
    first N in the split's order, which are not typical: on P5 Beauty the first 3,000 score half the transition
    HR@10 of all 22,363 (.0320 against .0660), and with P5's own item ids, numbered by first appearance over the
    users in order, "last id + 1" scores .1197 on them against .0308 on all.
    """
    from peapod_scale.data.dataset import read_manifest, read_rows
    from peapod_scale.eval import ranking_metrics as metrics
    from peapod_scale.eval.baselines import NextIds, Popularity, Transitions
    from peapod_scale.eval.evaluate import baseline_ranks, training_sequences

    manifest = read_manifest(data)
    rows = read_rows(data, manifest, split)
    sequences = list(training_sequences(data, manifest))
    methods = {"popularity": Popularity(sequences), "transitions": Transitions(sequences),
               "next_ids": NextIds(manifest["counts"]["items"])}
    return {"users": len(rows), **{task: {name: metrics.summarize(baseline_ranks(method, rows, task, seed))
                                          for name, method in methods.items()} for task in ("sequential", "topn")}}


def explanation_baselines(data: Path, split: str, limit: int | None) -> dict:
    """Texts that need no model, scored like the model's: the commonest training text, and each user's own.

    On All_Beauty_5, 89 % of the test reviews repeat word for word a text the same user wrote in training (the
    same review posted for several items), so "the user's commonest training text" is the bar to read the
    model's BLEU / ROUGE against.
    """
    from collections import Counter

    import pyarrow.parquet as pq

    from peapod_scale.data.dataset import read_manifest, read_rows, split_files
    from peapod_scale.eval.evaluate import spread_rows
    from peapod_scale.eval.text_metrics import explanation_metrics

    manifest = read_manifest(data)
    train = [row for path in split_files(data, manifest, "train_explanation")
             for row in pq.read_table(path, columns=["user", "explanation"]).to_pylist()]
    rows = [r for r in spread_rows(read_rows(data, manifest, split), limit) if r["explanation"]]
    commonest = Counter(r["explanation"] for r in train).most_common(1)[0][0]
    per_user: dict[int, Counter] = {}
    for row in train:
        per_user.setdefault(row["user"], Counter())[row["explanation"]] += 1
    references = [r["explanation"] for r in rows]
    users_own = [per_user[r["user"]].most_common(1)[0][0] if r["user"] in per_user else commonest for r in rows]
    return {"commonest text": explanation_metrics(references, [commonest] * len(rows)),
            "user's commonest text": explanation_metrics(references, users_own),
            "repeats a training text of the user": sum(r["explanation"] in per_user.get(r["user"], {}) for r in rows)
            / max(len(rows), 1)}


def train_flags(args) -> str:
    """The shared flags, then the dataset's, then the user's ``--train-args``: a later flag wins."""
    return " ".join(f for f in (BASE_TRAIN_ARGS, DATASETS[args.dataset]["train"], args.train_args) if f)


def train_and_evaluate(args, data: Path, item_index: str, user_prompt: str, run_id: str) -> dict:
    out = Path(args.work) / run_id / f"{item_index}-{user_prompt}"
    cmd = ["deepspeed", "--num_gpus", str(args.nproc), "--master_port", str(common.free_port()), "peapod_scale/train.py", "--data", str(data),
           "--output", str(out), "--resume", "none", "--overwrite", "--deepspeed", "ds_configs/z2.json",
           "--arch", args.arch, "--max-steps", str(args.steps), "--user-prompt", user_prompt,
           "--eval-split", args.split, "--save-every", "1000000", "--seed", str(args.seed)]
    cmd += ["--eval-limit", str(args.limit)] if args.limit else []
    cmd += shlex.split(train_flags(args))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "TOKENIZERS_PARALLELISM": "false", "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu")}
    wall = _sh(cmd, out.with_suffix(".log"), env)
    results = json.loads((out / f"metrics_{args.split}.json").read_text())
    heuristic = next_id_metrics(data, args.split, args.limit, args.seed)
    for task in ("sequential", "topn"):
        results[task]["next_ids"] = heuristic[task]
    if results.get("explanation", {}).get("model"):
        results["explanation"].update(explanation_baselines(data, args.split, args.limit))
    from peapod_scale.data.dataset import read_manifest

    return {"item_index": item_index, "user_prompt": user_prompt, "wall_s": round(wall, 1), "run_dir": str(out),
            "topn_candidates": 1 + read_manifest(data)["num_negatives"],
            "command": shlex.join(cmd), "metrics": {t: results[t] for t in TASKS if t in results},
            "explanation_rows": results.get("explanation_rows"),
            "baselines_all_users": all_user_baselines(data, args.split, args.seed) if args.limit else None,
            "invalid_answers": results.get("invalid_answers"), "constrained": results.get("constrained")}


def markdown(rows: list[dict], dataset: str) -> str:
    users = (f"{rows[0]['limit']} users " + ("spread over the split" if rows[0].get("limit_rows") == "spread" else
                                            "(the first in the split's order)")) if rows[0].get("limit") else "all users"
    lines = [f"## {dataset}: ours (random init, {rows[0]['steps']} steps on CPU) and baselines", "",
             f"Split {rows[0]['split']}, {users}; top-N: {rows[0].get('topn_candidates', 100)} candidates.", "",
             "| item index | user prompt | task | method | " + " | ".join(METRICS) + " | wall s |",
             "|---|---|---|---|" + "---:|" * (len(METRICS) + 1)]
    for row in rows:
        for task in ("sequential", "topn"):
            for method in METHODS:
                values = row["metrics"][task].get(method)
                # the baselines depend on the item index only: printed once per index
                first_of_index = row is next(r for r in rows if r["item_index"] == row["item_index"])
                if values and (method == "model" or first_of_index):
                    lines.append(f"| {row['item_index']} | {row['user_prompt'] if method == 'model' else '-'} | "
                                 f"{task} | {method} | " + " | ".join(f"{values[m]:.4f}" for m in METRICS) +
                                 f" | {row['wall_s'] if method == 'model' else ''} |")
    full_rows = [row for row in rows if row.get("baselines_all_users")
                 and row is next(r for r in rows if r["item_index"] == row["item_index"])]
    if full_rows:
        lines += ["", f"The same baselines on every user of the split ({full_rows[0]['baselines_all_users']['users']}; "
                      "what the subset's figures sample):", "",
                  "| item index | task | method | " + " | ".join(METRICS) + " |", "|---|---|---|" + "---:|" * len(METRICS)]
        for row in full_rows:
            for task in ("sequential", "topn"):
                for method in METHODS[1:]:
                    values = row["baselines_all_users"][task][method]
                    lines.append(f"| {row['item_index']} | {task} | {method} | " +
                                 " | ".join(f"{values[m]:.4f}" for m in METRICS) + " |")
    explained = [row for row in rows if row["metrics"].get("explanation", {}).get("model")]
    if explained:
        lines += ["", f"Explanation ({explained[0].get('explanation_rows')} rows with a review text; x 100, "
                      "whitespace tokens; " + ROUGE_NOTE + "):", "",
                  "| item index | user prompt | " + " | ".join(EXPLANATION_METRICS) + " |",
                  "|---|---|" + "---:|" * len(EXPLANATION_METRICS)]
        for row in explained:
            for method, values in row["metrics"]["explanation"].items():
                if isinstance(values, dict) and (method == "model" or row is explained[0]):
                    lines.append(f"| {row['item_index']} | {row['user_prompt'] if method == 'model' else method} | " +
                                 " | ".join(f"{values[m]:.2f}" for m in EXPLANATION_METRICS) + " |")
        share = explained[0]["metrics"]["explanation"].get("repeats a training text of the user")
        if share is not None:
            lines += ["", f"{100 * share:.1f} % of these references repeat word for word a text the same user wrote "
                          "in training."]
    if dataset == "beauty":
        lines += ["", "Published, P5 Beauty sequential (pretrained weights or GPU hours):", "",
                  "| method | protocol | " + " | ".join(METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
        for method, protocol, _, values in PUBLISHED:
            lines.append(f"| {method} | {protocol} | " + " | ".join(
                f"{values[m]:.4f}" if m in values else "-" for m in METRICS) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, task in zip(axes, ("sequential", "topn")):
        labels, values = [], []
        for row in rows:
            first_of_index = row is next(r for r in rows if r["item_index"] == row["item_index"])
            for method in METHODS:
                if method == "model" or first_of_index:
                    labels.append(f"{row['item_index']}/{row['user_prompt'] if method == 'model' else method}")
                    values.append(row["metrics"][task][method]["HR@10"])
        ax.bar(range(len(values)), values)
        ax.set_xticks(range(len(values)), labels, rotation=60, ha="right", fontsize=8)
        ax.set_title(f"{task} HR@10")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def curves(rows: list[dict], path: Path) -> None:
    """Training curves per task of every configuration, from the runs' TensorBoard events (`peapod-scale report`)."""
    run_dirs = [Path(row["run_dir"]) for row in rows if row.get("run_dir") and Path(row["run_dir"]).is_dir()]
    if not run_dirs:
        print("the runs' folders are gone: no training curves")
        return
    try:
        from peapod_scale.tools.run_report import report as training_report
        print(f"training curves: {training_report(run_dirs, path)}")
    except ImportError as missing:
        print(f"no training curves ({missing}; pip install matplotlib)")


def report(rows: list[dict], run_id: str, dataset: str) -> None:
    text = markdown(rows, dataset)
    print(text)
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    write_text_atomic(common.RESULTS / f"bench_quality_{run_id}.md", text)
    plot(rows, common.RESULTS / f"bench_quality_{run_id}.png")
    curves(rows, common.RESULTS / f"bench_quality_{run_id}_curves")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="beauty",
                        help="beauty: P5 Amazon Beauty; ml-100k: MovieLens-100K; all-beauty: Amazon All_Beauty_5 "
                             "reviews, adding the explanation task (BLEU/ROUGE) (default: %(default)s)")
    parser.add_argument("--input", help="the raw data (default: the dataset's copy under ../shared/data)")
    parser.add_argument("--work", default="/tmp/bench_quality", help="prepared data and runs (outside the repo)")
    parser.add_argument("--item-index", nargs="+", default=["random", "sequential"], choices=["random", "sequential"])
    parser.add_argument("--user-prompt", nargs="+", default=["pool", "neighbors", "none"],
                        choices=["pool", "neighbors", "none"])
    parser.add_argument("--steps", type=int, help="training steps (default: beauty 2000, ml-100k 1150, all-beauty 1400)")
    parser.add_argument("--arch", default="tiny")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--split", choices=["valid", "test"], default="test")
    parser.add_argument("--limit", type=int, help="evaluate N users spread evenly over the split, 0 for all "
                                                  "(default: beauty 3000, otherwise all)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--train-args", default="",
                        help="more `peapod-scale train` flags, the same for every configuration; they come after "
                             f"the shared ones ({BASE_TRAIN_ARGS}) and the dataset's, so they win")
    parser.add_argument("--report", metavar="RUN_ID", nargs="+",
                        help="reprint the table and plots of earlier runs (several: merged into one table, saved "
                             "under their ids joined by '+')")
    args = parser.parse_args(argv)
    log = common.RESULTS / "bench_quality.jsonl"
    if args.report:
        all_rows = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
        rows = [row for run_id in args.report for row in all_rows if row["run_id"] == run_id]
        missing = [run_id for run_id in args.report if not any(row["run_id"] == run_id for row in rows)]
        if missing:
            sys.exit(f"bench_quality: error: no rows of run {', '.join(missing)} in {log}")
        return report(rows, "+".join(args.report), rows[0]["dataset"])
    dataset = DATASETS[args.dataset]
    args.input = args.input or (str(dataset["input"]) if dataset["input"] else None)
    args.steps = args.steps or dataset["steps"]
    args.limit = dataset["limit"] if args.limit is None else (args.limit or None)  # --limit 0: every user
    if args.input and not Path(args.input).exists():
        sys.exit(f"bench_quality: error: --input {args.input} does not exist")
    if args.dataset == "beauty" and not (Path(args.input) / "sequential_data.txt").exists():
        sys.exit(f"bench_quality: error: {args.input} has no sequential_data.txt (P5 Beauty); pass --input")
    run_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    machine, versions = common.machine(), common.versions("deepspeed", "transformers")
    python = versions.pop("python")  # a field of its own in this script's rows
    shared = {"run_id": run_id, "dataset": args.dataset, "steps": args.steps, "arch": args.arch,
              "split": args.split, "limit": args.limit, "limit_rows": "spread", "train_args": train_flags(args),
              "machine": {"host": machine["host"], "cpus": machine["cpus"], "load": machine["load_1min"]},
              "versions": versions, "commit": common.commit(), "python": python}
    rows = []
    for item_index in args.item_index:
        data = prepare(args, item_index)
        for user_prompt in args.user_prompt:
            row = {**shared, "date": common.now_utc(),
                   **train_and_evaluate(args, data, item_index, user_prompt, run_id)}
            common.append_rows(log, [row])
            rows.append(row)
            print(f"{item_index}/{user_prompt}: {row['wall_s']} s, sequential HR@10 "
                  f"{row['metrics']['sequential']['model']['HR@10']:.4f}, top-N HR@10 "
                  f"{row['metrics']['topn']['model']['HR@10']:.4f}", flush=True)
    report(rows, run_id, args.dataset)


if __name__ == "__main__":
    main()
