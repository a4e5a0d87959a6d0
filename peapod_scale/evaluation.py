"""Leave-one-out evaluation by beam search, users sharded over ranks, baselines on the same split.

Ranking tasks (sequential, top-N) report HR/NDCG for the model and both baselines, plus the share of
the model's returned answers that are not valid items (not a number, not an item, or for top-N not one
of the candidates): constrained decoding must bring it to 0. The explanation task generates one text
per row whose target has an explanation and reports BLEU-1/4 and ROUGE-1/2/L against it, both the papers'
ROUGE and standard ROUGE, each named as such (see text_metrics).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence

import torch
import torch.distributed as dist
from tqdm import tqdm

from . import metrics, text_metrics
from .distributed import progress_interval
from .baselines import Popularity, Transitions
from .data.batches import TaskBatcher, evaluation_candidates
from .data.stream import read_rows, training_sequences
from .data.templates import parse_item
from .data.tokenizer import TextCodec
from .model.constraints import AnswerConstraints

TOP_K = 10
RANKING_TASKS = ("sequential", "topn")
EVAL_TASKS = RANKING_TASKS + ("explanation",)
EXPLANATION_MAX_TOKENS = 48
_PLACEHOLDER_ROW = {"user": 1, "history": [1], "target": 1, "negatives": [1], "explanation": ""}  # keeps an empty rank in lock-step


def _gather(objects: list, world_size: int) -> list:
    if world_size == 1:
        return objects
    gathered: list[list] = [None] * world_size  # type: ignore[list-item]
    dist.all_gather_object(gathered, objects)
    return [x for part in gathered for x in part]


def _max_answer_tokens(codec: TextCodec, num_items: int) -> int:
    lengths = codec.encode([str(i) for i in range(1, num_items + 1)])["attention_mask"].sum(1)
    return int(lengths.max())


def _generation_batches(rows: Sequence[dict], batch_size: int, num_batches: int, task: str, show_progress: bool):
    """(real rows, rows to run) per batch; past the end of this rank's shard a placeholder batch keeps
    ZeRO-3 ranks in lock-step (every forward is a collective there)."""
    for index in tqdm(range(num_batches), desc=f"eval {task}", disable=not show_progress, leave=False,
                      mininterval=progress_interval()):
        chunk = list(rows[index * batch_size : (index + 1) * batch_size])
        yield chunk, chunk or list(rows[:1]) or [_PLACEHOLDER_ROW]


def _is_valid_answer(item: int | None, row: dict, task: str, num_items: int) -> bool:
    if item is None or not 1 <= item <= num_items:
        return False
    return task != "topn" or item == row["target"] or item in row["negatives"]


def _scored(answers: Sequence[str], row: dict, task: str, num_items: int) -> tuple[int, int | None, int]:
    """(user, rank of the target, invalid answers) for one row's returned beams, best first.

    An answer that is not a valid item becomes None: a miss at its position (see ``metrics.hit_rank``).
    """
    items = [parse_item(text) for text in answers]
    ranked = [item if _is_valid_answer(item, row, task, num_items) else None for item in items]
    return row["user"], metrics.hit_rank(ranked, row["target"]), ranked.count(None)


@torch.no_grad()
def model_ranks(model, batcher: TaskBatcher, rows: Sequence[dict], task: str, *, batch_size: int,
                num_beams: int, max_new_tokens: int, show_progress: bool, num_batches: int | None = None,
                synced: bool = False, constrained: bool = False) -> list[tuple[int, int | None, int]]:
    """(user, 0-based rank of the held-out item or None, invalid answers returned) per row, by beam search.

    Under ZeRO-3 every forward is a collective: ``synced`` keeps ranks generating in lock-step, and
    ``num_batches`` makes a rank whose shard ran out run throw-away batches until the others finish.
    """
    device = next(model.parameters()).device
    returned = min(TOP_K, num_beams)
    num_batches = math.ceil(len(rows) / batch_size) if num_batches is None else num_batches
    out = []
    constraints = AnswerConstraints(batcher) if constrained else None  # beams spell only valid items
    for chunk, used in _generation_batches(rows, batch_size, num_batches, task, show_progress):
        batch = batcher(used, task, with_labels=False)
        generated = model.generate(**{k: v.to(device) for k, v in batch.items()}, num_beams=num_beams,
                                   constraint=constraints.for_rows(used, task) if constraints else None,
                                   num_return_sequences=returned, max_new_tokens=max_new_tokens, do_sample=False,
                                   early_stopping=True, synced_gpus=synced)
        texts = batcher.codec.decode(generated.tolist())
        for i, row in enumerate(chunk):
            out.append(_scored(texts[i * returned : (i + 1) * returned], row, task, batcher.num_items))
    return out


@torch.no_grad()
def model_explanations(model, batcher: TaskBatcher, rows: Sequence[dict], *, batch_size: int, num_beams: int,
                       show_progress: bool, num_batches: int | None = None, synced: bool = False) -> list[tuple[int, str]]:
    """(user, generated explanation) per row: one beam-search text for the row's target item."""
    device = next(model.parameters()).device
    num_batches = math.ceil(len(rows) / batch_size) if num_batches is None else num_batches
    out = []
    for chunk, used in _generation_batches(rows, batch_size, num_batches, "explanation", show_progress):
        batch = batcher(used, "explanation", with_labels=False)
        generated = model.generate(**{k: v.to(device) for k, v in batch.items()}, num_beams=num_beams,
                                   max_new_tokens=EXPLANATION_MAX_TOKENS, do_sample=False, synced_gpus=synced)
        texts = batcher.codec.decode(generated.tolist())
        out.extend((row["user"], text.strip()) for row, text in zip(chunk, texts))
    return out


def baseline_ranks(baseline, rows: Sequence[dict], task: str, seed: int) -> list[int | None]:
    if task == "sequential":
        return [metrics.hit_rank(baseline.recommend(r["history"], TOP_K), r["target"]) for r in rows]
    return [metrics.hit_rank(baseline.rank_candidates(r["history"], evaluation_candidates(r, seed), TOP_K), r["target"])
            for r in rows]


def explanation_rows(rows: Sequence[dict], data_dir: str | Path, split: str) -> list[dict]:
    """The rows whose target interaction has an explanation; an error when the data has none."""
    if rows and "explanation" not in rows[0]:
        raise ValueError(f"{data_dir}: the {split} split has no explanation column; the explanation task needs a "
                         "source with review text (prepare --source amazon-reviews, or p5 with exp_splits.pkl)")
    return [r for r in rows if r["explanation"]]


def evaluate(model, codec: TextCodec, data_dir: str | Path, manifest: dict, *, split: str = "test",
             tasks: Sequence[str] = RANKING_TASKS, batch_size: int = 32, num_beams: int = 20, seed: int = 42,
             limit: int | None = None, rank: int = 0, world_size: int = 1, synced: bool = False,
             constrained: bool = False) -> dict:
    """Metrics for the model (and both baselines on ranking tasks); every rank returns the same dict."""
    unknown = set(tasks) - set(EVAL_TASKS)
    if unknown:
        raise ValueError(f"cannot evaluate {sorted(unknown)}: the tasks are {', '.join(EVAL_TASKS)}")
    rows = read_rows(data_dir, manifest, split)[:limit]
    batcher = TaskBatcher(codec, manifest["counts"]["items"], seed=seed)
    was_training = model.training
    model.eval()
    results: dict = {"split": split, "users": len(rows), "num_beams": num_beams, "constrained": constrained}
    ranking = [t for t in tasks if t in RANKING_TASKS]
    if ranking:
        max_new_tokens = _max_answer_tokens(codec, manifest["counts"]["items"])
        sequences = list(training_sequences(data_dir, manifest))
        baselines = {"popularity": Popularity(sequences), "transitions": Transitions(sequences)}
        results["invalid_answers"] = {}
    for task in ranking:
        mine = model_ranks(model, batcher, rows[rank::world_size], task, batch_size=batch_size, num_beams=num_beams,
                           max_new_tokens=max_new_tokens, show_progress=rank == 0, synced=synced, constrained=constrained,
                           num_batches=_batches_per_rank(len(rows), world_size, batch_size))
        gathered = sorted(_gather(mine, world_size), key=lambda entry: entry[0])
        results[task] = {"model": metrics.summarize([r for _, r, _ in gathered])}
        for name, baseline in baselines.items():
            results[task][name] = metrics.summarize(baseline_ranks(baseline, rows, task, seed))
        returned = len(gathered) * min(TOP_K, num_beams)
        results["invalid_answers"][task] = sum(n for _, _, n in gathered) / max(returned, 1)
    if "explanation" in tasks:
        explained = explanation_rows(rows, data_dir, split)
        mine = model_explanations(model, batcher, explained[rank::world_size], batch_size=batch_size,
                                  num_beams=num_beams, show_progress=rank == 0, synced=synced,
                                  num_batches=_batches_per_rank(len(explained), world_size, batch_size))
        texts = dict(_gather(mine, world_size))
        hypotheses = [texts[r["user"]] for r in explained]
        results["explanation"] = {"model": text_metrics.explanation_metrics([r["explanation"] for r in explained],
                                                                            hypotheses) if explained else {}}
        results["explanation_rows"] = len(explained)
    model.train(was_training)
    return results


def _batches_per_rank(rows: int, world_size: int, batch_size: int) -> int:
    return math.ceil(math.ceil(rows / world_size) / batch_size)


def format_table(results: dict) -> str:
    lines = [f"{results['split']} split, {results['users']} users, beam {results['num_beams']}, "
             f"{'constrained' if results['constrained'] else 'unconstrained'} decoding"]
    header = None
    for task in EVAL_TASKS:
        if task not in results or not results[task]["model"]:
            continue
        names = list(results[task]["model"])
        widths = [max(8, len(n)) for n in names]
        if names != header:  # ranking tasks share one header; explanation has its own metrics
            header = names
            lines.append(f"{'task':<11} {'method':<12} " + " ".join(f"{n:>{w}}" for n, w in zip(names, widths)))
        for method, values in results[task].items():
            lines.append(f"{task:<11} {method:<12} " + " ".join(f"{values[n]:>{w}.4f}" for n, w in zip(names, widths)))
    invalid = results.get("invalid_answers", {})
    if invalid:
        lines.append("model answers that are not valid items: "
                     + ", ".join(f"{task} {share:.1%}" for task, share in invalid.items()))
    if "explanation" in results and results["explanation"]["model"]:
        lines.append(text_metrics.ROUGE_NOTE)
    if "explanation_rows" in results:
        lines.append(f"explanation: {results['explanation_rows']} rows with a reference text")
    return "\n".join(lines)


def write_json_atomic(path: str | Path, payload: dict) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)
