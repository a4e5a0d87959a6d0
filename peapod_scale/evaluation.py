"""Leave-one-out evaluation by beam search, users sharded over ranks, baselines on the same split."""

from __future__ import annotations

import json
import math
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
from .model.constraints import AnswerConstraints

TOP_K = 10
EVAL_TASKS = ("sequential", "topn")
_PLACEHOLDER_ROW = {"user": 1, "history": [1], "target": 1, "negatives": [1]}  # keeps an empty rank in lock-step


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
                num_beams: int, max_new_tokens: int, show_progress: bool, num_batches: int | None = None,
                synced: bool = False, constrained: bool = False) -> list[tuple[int, int | None]]:
    """(user, 0-based rank of the held-out item or None) for each row, by beam search.

    Under ZeRO-3 every forward is a collective: ``synced`` keeps ranks generating in lock-step, and
    ``num_batches`` makes a rank whose shard ran out run throw-away batches until the others finish.
    """
    device = next(model.parameters()).device
    returned = min(TOP_K, num_beams)
    num_batches = math.ceil(len(rows) / batch_size) if num_batches is None else num_batches
    out = []
    constraints = AnswerConstraints(batcher) if constrained else None  # beams spell only valid items
    for index in tqdm(range(num_batches), desc=f"eval {task}", disable=not show_progress, leave=False,
                      mininterval=progress_interval()):
        chunk = rows[index * batch_size : (index + 1) * batch_size]
        used = chunk or rows[:1] or [_PLACEHOLDER_ROW]
        batch = batcher(used, task, with_labels=False)
        generated = model.generate(**{k: v.to(device) for k, v in batch.items()}, num_beams=num_beams,
                                   constraint=constraints.for_rows(used, task) if constraints else None,
                                   num_return_sequences=returned, max_new_tokens=max_new_tokens, do_sample=False,
                                   early_stopping=True, synced_gpus=synced)
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
             limit: int | None = None, rank: int = 0, world_size: int = 1, synced: bool = False,
             constrained: bool = False) -> dict:
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
    results: dict = {"split": split, "users": len(rows), "num_beams": num_beams, "constrained": constrained}
    for task in tasks:
        mine = model_ranks(model, batcher, rows[rank::world_size], task, batch_size=batch_size, num_beams=num_beams,
                           max_new_tokens=max_new_tokens, show_progress=rank == 0, synced=synced, constrained=constrained,
                           num_batches=math.ceil(math.ceil(len(rows) / world_size) / batch_size))
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
