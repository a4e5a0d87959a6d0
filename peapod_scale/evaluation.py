"""Leave-one-out evaluation by beam search, users sharded over ranks, baselines on the same split."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import torch
import torch.distributed as dist
from tqdm import tqdm

from . import metrics
from .distributed import progress_interval
from .baselines import Popularity, Transitions
from .data.batches import TaskBatcher, evaluation_candidates
from .data.stream import read_rows, training_sequences
from .data.templates import parse_item
from .data.tokenizer import TextCodec

TOP_K = 10
EVAL_TASKS = ("sequential", "topn")


def _gather(objects: list, world_size: int) -> list:
    if world_size == 1:
        return objects
    gathered: list[list] = [None] * world_size  # type: ignore[list-item]
    dist.all_gather_object(gathered, objects)
    return [x for part in gathered for x in part]


def _max_answer_tokens(codec: TextCodec, num_items: int) -> int:
    lengths = codec.encode([str(i) for i in range(1, num_items + 1)])["attention_mask"].sum(1)
    return int(lengths.max())


@torch.no_grad()
def model_ranks(model, batcher: TaskBatcher, rows: Sequence[dict], task: str, *, batch_size: int,
                num_beams: int, max_new_tokens: int, show_progress: bool) -> list[tuple[int, int | None]]:
    """(user, 0-based rank of the held-out item or None) for each row, by beam search."""
    device = next(model.parameters()).device
    returned = min(TOP_K, num_beams)
    out = []
    for start in tqdm(range(0, len(rows), batch_size), desc=f"eval {task}", disable=not show_progress, leave=False,
                      mininterval=progress_interval()):
        chunk = rows[start : start + batch_size]
        batch = {k: v.to(device) for k, v in batcher(chunk, task, with_labels=False).items()}
        generated = model.generate(**batch, num_beams=num_beams, num_return_sequences=returned,
                                   max_new_tokens=max_new_tokens, do_sample=False, early_stopping=True)
        texts = batcher.codec.decode(generated.tolist())
        for i, row in enumerate(chunk):
            ranked = [parse_item(t) for t in texts[i * returned : (i + 1) * returned]]
            out.append((row["user"], metrics.hit_rank(ranked, row["target"])))
    return out


def baseline_ranks(baseline, rows: Sequence[dict], task: str, seed: int) -> list[int | None]:
    if task == "sequential":
        return [metrics.hit_rank(baseline.recommend(r["history"], TOP_K), r["target"]) for r in rows]
    return [metrics.hit_rank(baseline.rank_candidates(r["history"], evaluation_candidates(r, seed), TOP_K), r["target"])
            for r in rows]


def evaluate(model, codec: TextCodec, data_dir: str | Path, manifest: dict, *, split: str = "test",
             tasks: Sequence[str] = EVAL_TASKS, batch_size: int = 32, num_beams: int = 20, seed: int = 42,
             limit: int | None = None, rank: int = 0, world_size: int = 1) -> dict:
    """Metrics for the model and both baselines; every rank returns the same dict."""
    unknown = set(tasks) - set(EVAL_TASKS)
    if unknown:
        raise ValueError(f"cannot evaluate {sorted(unknown)}: this data has tasks {', '.join(EVAL_TASKS)}")
    rows = read_rows(data_dir, manifest, split)[:limit]
    batcher = TaskBatcher(codec, manifest["counts"]["items"], seed=seed)
    max_new_tokens = _max_answer_tokens(codec, manifest["counts"]["items"])
    sequences = list(training_sequences(data_dir, manifest))
    baselines = {"popularity": Popularity(sequences), "transitions": Transitions(sequences)}
    was_training = model.training
    model.eval()
    results: dict = {"split": split, "users": len(rows), "num_beams": num_beams, "constrained": False}
    for task in tasks:
        mine = model_ranks(model, batcher, rows[rank::world_size], task, batch_size=batch_size,
                           num_beams=num_beams, max_new_tokens=max_new_tokens, show_progress=rank == 0)
        ranks = [r for _, r in sorted(_gather(mine, world_size), key=lambda ur: ur[0])]
        results[task] = {"model": metrics.summarize(ranks)}
        for name, baseline in baselines.items():
            results[task][name] = metrics.summarize(baseline_ranks(baseline, rows, task, seed))
    model.train(was_training)
    return results


def format_table(results: dict) -> str:
    names = list(metrics.summarize([0]))
    lines = [f"{results['split']} split, {results['users']} users, beam {results['num_beams']}, "
             f"{'constrained' if results['constrained'] else 'unconstrained'} decoding"]
    lines.append(f"{'task':<11} {'method':<12} " + " ".join(f"{n:>8}" for n in names))
    for task in EVAL_TASKS:
        for method, values in results.get(task, {}).items():
            lines.append(f"{task:<11} {method:<12} " + " ".join(f"{values[n]:>8.4f}" for n in names))
    return "\n".join(lines)


def write_json_atomic(path: str | Path, payload: dict) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)
