"""Raw rows -> one-task model batches: render the task's template, tokenise, add whole-word ids.

POD trains on task-alternated batches: every batch holds a single task, so the task prompt and the
loss per task are clean. Top-N training candidates are the target plus sampled items the user has not
touched in its visible history, drawn from a generator seeded per step so every run is repeatable.

Training batches arrive as columns (lists per field, straight from Arrow) and run in the loader
workers, so the per-row Python work is kept to the template f-strings: negatives are drawn for the
whole batch at once and the tokenizer is called once per batch (``TextCodec.encode``).
"""

from __future__ import annotations

import warnings
from itertools import chain
from typing import Mapping, Sequence

import numpy as np
import torch

from peapod_scale.data import templates
from peapod_scale.data.tokenizer import TextCodec

Columns = Mapping[str, Sequence]


def as_columns(rows: Sequence[dict]) -> dict[str, list]:
    return {key: [row[key] for row in rows] for key in rows[0]} if rows else {}


def _padded(lists: Sequence[Sequence[int]], extra: Sequence[int]) -> np.ndarray:
    """[B, longest + 1] matrix of each list followed by its ``extra`` item, right-padded with 0 (no item)."""
    lengths = np.fromiter((len(x) + 1 for x in lists), dtype=np.int64, count=len(lists))
    values = np.fromiter(chain.from_iterable(chain(x, (e,)) for x, e in zip(lists, extra)), dtype=np.int64,
                         count=int(lengths.sum()))
    out = np.zeros((len(lists), int(lengths.max(initial=1))), dtype=np.int64)
    row = np.repeat(np.arange(len(lists)), lengths)
    out[row, np.arange(len(values)) - np.repeat(np.cumsum(lengths) - lengths, lengths)] = values
    return out


def sample_negatives(seen: np.ndarray, num_items: int, count: int, rng: np.random.Generator) -> list[list[int]]:
    """Per row, up to ``count`` distinct items in 1..num_items outside the row of ``seen`` (0 = padding).

    One vectorised draw of 2·count + 8 items per row, rejecting seen items and repeats; a row that
    keeps fewer than ``count`` (a user who saw most items) falls back to drawing one item at a time.
    """
    rows, draws = len(seen), 2 * count + 8
    drawn = rng.integers(1, num_items + 1, size=(rows, draws))
    bad = (drawn[:, :, None] == seen[:, None, :]).any(2)
    bad |= ((drawn[:, :, None] == drawn[:, None, :]) & np.tri(draws, k=-1, dtype=bool)).any(2)  # repeats
    first_good = np.argsort(bad, axis=1, kind="stable")[:, :count]
    enough = (~bad).sum(1) >= count
    out = [drawn[i, first_good[i]].tolist() for i in range(rows)] if count else [[] for _ in range(rows)]
    for i in np.flatnonzero(~enough):
        blocked = set(seen[i].tolist()) - {0}
        wanted, out[i] = min(count, num_items - len(blocked)), []
        while len(out[i]) < wanted:
            item = int(rng.integers(1, num_items + 1))
            if item not in blocked:
                blocked.add(item)
                out[i].append(item)
    return out


class TaskBatcher:
    """Model batches of one task. Prompts are never cut unless ``max_source_length`` asks for it.

    T5's relative position buckets put no bound on the encoder length, and a cut prompt loses its
    end, which for top-N is the last candidates (100 candidates of multi-piece ids in a pretrained
    T5 vocabulary need ~400-530 tokens). With a limit, every cut row is counted per task in
    ``cut_rows`` and a warning says how many were cut and to what length.
    """

    def __init__(self, codec: TextCodec, num_items: int, topn_candidates: int = 50, seed: int = 0,
                 max_source_length: int | None = None, topn_history: int = 0):
        if max_source_length is not None and max_source_length < 2:
            raise ValueError(f"max_source_length {max_source_length}: a prompt needs at least one token and </s>")
        if topn_history < 0:
            raise ValueError(f"topn_history {topn_history}: the number of recent items shown must be 0 or more")
        self.codec, self.num_items, self.topn_candidates = codec, num_items, topn_candidates
        self.seed, self.max_source_length, self.topn_history = seed, max_source_length, topn_history
        self.cut_rows: dict[str, int] = {}
        codec.index_numbers(num_items)  # item numbers tokenized once, shared by the forked loader workers

    def _training_candidates(self, columns: Columns, step: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, step])
        targets = columns["target"]
        seen = _padded(columns["history"], targets)
        lists = [negatives + [int(t)] for negatives, t in
                 zip(sample_negatives(seen, self.num_items, self.topn_candidates - 1, rng), targets)]
        if len({len(c) for c in lists}) == 1:  # the usual case: one shuffle of a [B, K] matrix
            return rng.permuted(np.array(lists, dtype=np.int64), axis=1).tolist()
        return [rng.permutation(c).tolist() for c in lists]

    def _sources(self, columns: Columns, task: str, step: int) -> list[str]:
        users = columns["user"]
        if task == "sequential":
            return [templates.sequential_prompt(u, h) for u, h in zip(users, columns["history"])]
        if task == "topn":
            if "negatives" in columns:  # evaluation rows carry their fixed candidates
                candidate_lists = [evaluation_candidates({"user": u, "target": t, "negatives": n}, self.seed)
                                   for u, t, n in zip(users, columns["target"], columns["negatives"])]
            else:
                candidate_lists = self._training_candidates(columns, step)
            recent = self._recent(columns["history"])
            return [templates.topn_prompt(u, c, h) for u, c, h in zip(users, candidate_lists, recent)]
        if task == "explanation":
            return [templates.explanation_prompt(u, t) for u, t in zip(users, columns["target"])]
        raise ValueError(f"unknown task {task!r}; tasks are {', '.join(templates.TASKS)}")

    def _recent(self, histories: Sequence[Sequence[int]]) -> list[Sequence[int]]:
        """The last ``topn_history`` items of each history (none when 0): the same rows in training and evaluation."""
        keep = self.topn_history
        return [list(h)[-keep:] if keep else () for h in histories]

    def sources(self, rows: Sequence[dict], task: str, step: int = 0) -> list[str]:
        return self._sources(as_columns(rows), task, step)

    def encode_columns(self, columns: Columns, task: str, step: int = 0,
                       with_labels: bool = True) -> dict[str, torch.Tensor]:
        """The model batch of one task from column lists (``user``, ``history``, ``target``, ...)."""
        batch = self._encode_prompts(self._sources(columns, task, step), task)
        size = len(columns["user"])
        batch["user_ids"] = torch.as_tensor(np.asarray(columns["user"], dtype=np.int64))
        batch["task_ids"] = torch.full((size,), templates.TASK_IDS[task], dtype=torch.long)
        if with_labels:
            if task == "explanation":  # free text: the word cache is for generated prompts and item numbers
                batch["labels"] = self.codec.labels(columns["explanation"])
            else:
                batch["labels"] = self.codec.labels([templates.item_target(t) for t in columns["target"]], cache_words=True)
        return batch

    def _encode_prompts(self, prompts: list[str], task: str) -> dict[str, torch.Tensor]:
        batch = self.codec.encode(prompts, cache_words=True)
        limit = self.max_source_length
        if limit is None or batch["input_ids"].shape[1] <= limit:
            return batch
        lengths = batch["attention_mask"].sum(1)
        cut = int((lengths > limit).sum())
        if task not in self.cut_rows:  # once per task; cut_rows keeps counting
            warnings.warn(f"{cut} of {len(prompts)} {task} prompts of a batch were cut from up to {int(lengths.max())} "
                          f"to max_source_length {limit} tokens: the model does not see their end"
                          + (" (the last candidates)" if task == "topn" else "") + "; later cuts are counted in cut_rows",
                          stacklevel=3)
        self.cut_rows[task] = self.cut_rows.get(task, 0) + cut
        return self.codec.encode(prompts, max_length=limit, cache_words=True)

    def __call__(self, rows: Sequence[dict], task: str, step: int = 0, with_labels: bool = True) -> dict[str, torch.Tensor]:
        return self.encode_columns(as_columns(rows), task, step, with_labels)


def evaluation_candidates(row: dict, seed: int) -> list[int]:
    """The held-out item among the user's fixed negatives, in an order fixed by (seed, user)."""
    candidates = list(row["negatives"]) + [row["target"]]
    np.random.default_rng([seed, row["user"]]).shuffle(candidates)
    return candidates
