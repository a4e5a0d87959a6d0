"""Leave-one-out evaluation by beam search, users sharded over ranks, baselines on the same split.

Ranking tasks (sequential, top-N) report HR/NDCG for the model and both baselines, plus the share of
the model's returned answers that are not valid items (not a number, not an item, or for top-N not one
of the candidates): constrained decoding must bring it to 0. The explanation task generates one text
per row whose target has an explanation and reports BLEU-1/4 and ROUGE-1/2/L against it, both the papers'
ROUGE and standard ROUGE, each named as such (see text_metrics).

Memory: a batch of ``batch_size`` rows is split into generate calls that fit a memory budget sized
from the model (``generation_memory``); without ZeRO-3 lock-step an out-of-memory error halves the
rows per call and retries. ``results["generation"]`` says, per task, the longest prompt (no prompt
is cut), the rows per call and how often they were halved.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from peapod_scale.data.batches import TaskBatcher, evaluation_candidates
from peapod_scale.data.dataset import read_rows, training_sequences
from peapod_scale.data.templates import parse_item
from peapod_scale.data.tokenizer import TextCodec
from peapod_scale.distributed.ranks import HostCollectives
from peapod_scale.eval import ranking_metrics as metrics
from peapod_scale.eval import text_metrics
from peapod_scale.eval.baselines import Popularity, Transitions
from peapod_scale.eval.generation_memory import RowLimit, device_budget, is_out_of_memory
from peapod_scale.model.constraints import AnswerConstraints
from peapod_scale.tools.progress import progress_interval

TOP_K = 10
RANKING_TASKS = ("sequential", "topn")
EVAL_TASKS = RANKING_TASKS + ("explanation",)
EXPLANATION_MAX_TOKENS = 48
_PLACEHOLDER_ROW = {"user": 1, "history": [1], "target": 1, "negatives": [1], "explanation": ""}  # keeps an empty rank in lock-step


def _gather(objects: list, collectives: HostCollectives) -> list:
    return [x for part in collectives.gather_objects(objects) for x in part]


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


def _parts(rows: int, calls: int) -> list[list[int]]:
    """``calls`` contiguous, near-equal lists of row indices; empty ones when there are more calls than rows."""
    return [list(range(rows * i // calls, rows * (i + 1) // calls)) for i in range(calls)]


class _Generation:
    """The generate calls of one task on this rank: sized by ``RowLimit``, in lock-step when ``synced``.

    A batch of ``batch_size`` rows is split into as many calls as the memory budget needs. Under
    ZeRO-3 (``synced``) every forward is a collective, so all ranks must make the same number of calls:
    the count per batch is the largest any rank needs (one small all-reduce), and a rank with fewer
    rows runs throw-away calls. Without ``synced`` a rank that runs out of memory halves the rows per
    call and retries that call's rows in two; in lock-step that is impossible (the other ranks are
    inside the same forward, waiting on a collective), so there it stops with what to set instead.
    """

    def __init__(self, model, batcher: TaskBatcher, task: str, limit: RowLimit, collectives: HostCollectives,
                 synced: bool, constraints: AnswerConstraints | None, **generate_kwargs):
        self.model, self.batcher, self.task, self.limit = model, batcher, task, limit
        self.collectives, self.synced, self.constraints = collectives, synced, constraints
        self.device = next(model.parameters()).device
        self.generate_kwargs = generate_kwargs
        self.longest_prompt = 0  # tokens of the longest text prompt (soft prompts not counted)
        self.largest_call = 0  # rows of the largest call that ran real rows

    def texts(self, rows: Sequence[dict]) -> list[str]:
        """The generated texts of ``rows`` (``num_return_sequences`` per row, in row order)."""
        batch = self.batcher(rows, self.task, with_labels=False)
        width = batch["input_ids"].shape[1]
        self.longest_prompt = max(self.longest_prompt, width)
        calls = math.ceil(len(rows) / self.limit.rows(width))
        if self.synced:
            calls = int(self.collectives.max([float(calls)])[0])
        texts = []
        for part in _parts(len(rows), calls):
            if part:
                texts += self._run(batch, rows, part)
            else:  # lock-step: this rank has fewer rows than calls; the output is thrown away
                self._run(batch, rows, [0], real=False)
        return texts

    def _run(self, batch: dict[str, torch.Tensor], rows: Sequence[dict], part: list[int], real: bool = True) -> list[str]:
        try:
            texts = self._generate(batch, rows, part)
            self.largest_call = max(self.largest_call, len(part) if real else 0)
            return texts
        except Exception as error:  # noqa: BLE001 -- only out-of-memory is handled, the rest re-raised
            if not is_out_of_memory(error):
                raise
            if self.synced or len(part) == 1:
                raise RuntimeError(self._cannot_back_off(len(part))) from error
        # out of the except block: the failed call's tensors (held by the traceback) are freed now
        self.limit.halve(len(part))
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        half = len(part) // 2
        return self._run(batch, rows, part[:half], real) + self._run(batch, rows, part[half:], real)

    def _generate(self, batch: dict[str, torch.Tensor], rows: Sequence[dict], part: list[int]) -> list[str]:
        index = torch.tensor(part)
        width = int(batch["attention_mask"][index].sum(1).max())  # drop columns that are padding in every row
        inputs = {name: (t[index, :width] if t.dim() == 2 else t[index]).to(self.device) for name, t in batch.items()}
        constraint = self.constraints.for_rows([rows[i] for i in part], self.task) if self.constraints else None
        generated = self.model.generate(**inputs, constraint=constraint, synced_gpus=self.synced,
                                        **self.generate_kwargs)
        return self.batcher.codec.decode(generated.tolist())

    def _cannot_back_off(self, rows: int) -> str:
        where = ("in lock-step with the other ranks (ZeRO-3), where ranks cannot back off together"
                 if self.synced else "with a single row")
        return (f"evaluation ({self.task}) ran out of memory generating {rows} rows per call {where}: lower "
                f"--eval-batch-size (evaluate --batch-size) to {max(1, rows // 2)} or --num-beams")


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
def model_ranks(generation: _Generation, rows: Sequence[dict], *, batch_size: int, num_batches: int,
                show_progress: bool) -> list[tuple[int, int | None, int]]:
    """(user, 0-based rank of the held-out item or None, invalid answers returned) per row, by beam search.

    ``num_batches`` makes a rank whose shard ran out run throw-away batches until the others finish
    (ZeRO-3 lock-step).
    """
    returned = generation.generate_kwargs["num_return_sequences"]
    out = []
    for chunk, used in _generation_batches(rows, batch_size, num_batches, generation.task, show_progress):
        texts = generation.texts(used)
        for i, row in enumerate(chunk):
            out.append(_scored(texts[i * returned : (i + 1) * returned], row, generation.task,
                               generation.batcher.num_items))
    return out


@torch.no_grad()
def model_explanations(generation: _Generation, rows: Sequence[dict], *, batch_size: int, num_batches: int,
                       show_progress: bool) -> list[tuple[int, str]]:
    """(user, generated explanation) per row: one beam-search text for the row's target item."""
    out = []
    for chunk, used in _generation_batches(rows, batch_size, num_batches, "explanation", show_progress):
        texts = generation.texts(used)
        out.extend((row["user"], text.strip()) for row, text in zip(chunk, texts))
    return out


def spread_rows(rows: Sequence[dict], limit: int | None) -> list[dict]:
    """``limit`` rows spread evenly over ``rows`` (all of them when ``limit`` is None or not fewer).

    A split is in user order and its first users need not be typical: on P5 Beauty the first 3,000 of
    22,363 test users score half the transition baseline's HR@10 of all (.0320 against .0660), and P5's
    "last id + 1" four times as much, because its item ids are numbered by first appearance over the users
    in order. Spread over the split, a quick evaluation estimates the whole one.
    """
    if limit is None or limit >= len(rows):
        return list(rows)
    return [rows[i * len(rows) // limit] for i in range(max(limit, 0))]


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
             constrained: bool = False, memory_budget: int | None = None,
             collectives: HostCollectives | None = None, topn_history: int = 0) -> dict:
    """Metrics for the model (and both baselines on ranking tasks); every rank returns the same dict.

    ``memory_budget``: bytes one generate call may use (default: measured on the model's device, see
    ``generation_memory``); batches of ``batch_size`` rows are split into calls that fit it.
    ``collectives``: the caller's ``distributed.HostCollectives`` (made here when not given).
    ``topn_history``: recent items in a top-N prompt; a model is evaluated with the prompts it was trained on.
    """
    unknown = set(tasks) - set(EVAL_TASKS)
    if unknown:
        raise ValueError(f"cannot evaluate {sorted(unknown)}: the tasks are {', '.join(EVAL_TASKS)}")
    if collectives is None:
        collectives = HostCollectives.for_world(world_size)
    rows = spread_rows(read_rows(data_dir, manifest, split), limit)
    batcher = TaskBatcher(codec, manifest["counts"]["items"], seed=seed, topn_history=topn_history)
    was_training = model.training
    model.eval()
    if memory_budget is None:
        memory_budget = device_budget(next(model.parameters()).device)
    results: dict = {"split": split, "users": len(rows), "num_beams": num_beams, "constrained": constrained,
                     "topn_history": topn_history, "batch_size": batch_size, "generation": {}}
    ranking = [t for t in tasks if t in RANKING_TASKS]
    if ranking:
        returned = min(TOP_K, num_beams)
        answer_tokens = _max_answer_tokens(codec, manifest["counts"]["items"])
        sequences = list(training_sequences(data_dir, manifest))
        baselines = {"popularity": Popularity(sequences), "transitions": Transitions(sequences)}
        results["invalid_answers"] = {}
        constraints = AnswerConstraints(batcher) if constrained else None  # beams spell only valid items
    for task in ranking:
        generation = _Generation(model, batcher, task, RowLimit(model, batch_size=batch_size, num_beams=num_beams,
                                                                answer_tokens=answer_tokens + 1, budget=memory_budget),
                                 collectives, synced, constraints, num_beams=num_beams, num_return_sequences=returned,
                                 max_new_tokens=answer_tokens, do_sample=False, early_stopping=True)
        mine = model_ranks(generation, rows[rank::world_size], batch_size=batch_size, show_progress=rank == 0,
                           num_batches=_batches_per_rank(len(rows), world_size, batch_size))
        gathered = sorted(_gather(mine, collectives), key=lambda entry: entry[0])
        results[task] = {"model": metrics.summarize([r for _, r, _ in gathered])}
        for name, baseline in baselines.items():
            results[task][name] = metrics.summarize(baseline_ranks(baseline, rows, task, seed))
        results["invalid_answers"][task] = sum(n for _, _, n in gathered) / max(len(gathered) * returned, 1)
        results["generation"][task] = _generation_summary(generation, collectives)
    if "explanation" in tasks:
        explained = explanation_rows(rows, data_dir, split)
        generation = _Generation(model, batcher, "explanation",
                                 RowLimit(model, batch_size=batch_size, num_beams=num_beams,
                                          answer_tokens=EXPLANATION_MAX_TOKENS + 1, budget=memory_budget),
                                 collectives, synced, None, num_beams=num_beams, num_return_sequences=1,
                                 max_new_tokens=EXPLANATION_MAX_TOKENS, do_sample=False)
        mine = model_explanations(generation, explained[rank::world_size], batch_size=batch_size,
                                  show_progress=rank == 0,
                                  num_batches=_batches_per_rank(len(explained), world_size, batch_size))
        texts = dict(_gather(mine, collectives))
        hypotheses = [texts[r["user"]] for r in explained]
        results["explanation"] = {"model": text_metrics.explanation_metrics([r["explanation"] for r in explained],
                                                                            hypotheses) if explained else {}}
        results["explanation_rows"] = len(explained)
        results["generation"]["explanation"] = _generation_summary(generation, collectives)
    model.train(was_training)
    return results


def _generation_summary(generation: _Generation, collectives: HostCollectives) -> dict:
    """Over all ranks: the longest prompt, the largest generate call and the out-of-memory halvings."""
    longest, largest, halvings = collectives.max([float(generation.longest_prompt), float(generation.largest_call),
                                                  float(generation.limit.halvings)])
    return {"longest_prompt_tokens": int(longest), "rows_per_call": int(largest), "oom_halvings": int(halvings)}


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
    generation = results.get("generation", {})
    if generation:
        lines.append("longest prompt in tokens (none cut): "
                     + ", ".join(f"{task} {g['longest_prompt_tokens']}" for task, g in generation.items()))
        lines.append(f"rows per generate call (batch {results['batch_size']}, fewer where the memory budget needs it): "
                     + ", ".join(f"{task} {g['rows_per_call']}" for task, g in generation.items()))
        halved = {task: g["oom_halvings"] for task, g in generation.items() if g["oom_halvings"]}
        if halved:
            lines.append("out of memory: rows per call halved " + ", ".join(f"{t} {n}x" for t, n in halved.items()))
    return "\n".join(lines)
