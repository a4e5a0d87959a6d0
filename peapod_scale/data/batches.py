"""Raw rows -> one-task model batches: render the task's template, tokenise, add whole-word ids.

POD trains on task-alternated batches: every batch holds a single task, so the task prompt and the
loss per task are clean. Top-N training candidates are the target plus sampled items the user has not
touched in its visible history, drawn from a generator seeded per step so every run is repeatable.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from . import templates
from .tokenizer import TextCodec


class TaskBatcher:
    def __init__(self, codec: TextCodec, num_items: int, topn_candidates: int = 20, seed: int = 0,
                 max_source_length: int = 512):
        self.codec, self.num_items, self.topn_candidates = codec, num_items, topn_candidates
        self.seed, self.max_source_length = seed, max_source_length

    def _sample_candidates(self, row: dict, rng: np.random.Generator) -> list[int]:
        seen = set(row["history"]) | {row["target"]}
        negatives: list[int] = []
        wanted = min(self.topn_candidates - 1, self.num_items - len(seen))
        while len(negatives) < wanted:
            item = int(rng.integers(1, self.num_items + 1))
            if item not in seen:
                seen.add(item)
                negatives.append(item)
        candidates = negatives + [row["target"]]
        rng.shuffle(candidates)
        return candidates

    def sources(self, rows: Sequence[dict], task: str, step: int = 0) -> list[str]:
        if task == "sequential":
            return [templates.sequential_prompt(r["user"], r["history"]) for r in rows]
        if task == "topn":
            if "negatives" in rows[0]:  # evaluation rows carry their fixed candidates
                candidate_lists = [evaluation_candidates(r, self.seed) for r in rows]
            else:
                rng = np.random.default_rng([self.seed, step])
                candidate_lists = [self._sample_candidates(r, rng) for r in rows]
            return [templates.topn_prompt(r["user"], c) for r, c in zip(rows, candidate_lists)]
        if task == "explanation":
            return [templates.explanation_prompt(r["user"], r["target"]) for r in rows]
        raise ValueError(f"unknown task {task!r}; tasks are {', '.join(templates.TASKS)}")

    def __call__(self, rows: Sequence[dict], task: str, step: int = 0, with_labels: bool = True) -> dict[str, torch.Tensor]:
        batch = self.codec.encode(self.sources(rows, task, step), max_length=self.max_source_length)
        batch["user_ids"] = torch.tensor([r["user"] for r in rows], dtype=torch.long)
        batch["task_ids"] = torch.full((len(rows),), templates.TASK_IDS[task], dtype=torch.long)
        if with_labels:
            targets = [r["explanation"] if task == "explanation" else templates.item_target(r["target"]) for r in rows]
            batch["labels"] = self.codec.labels(targets)
        return batch


def evaluation_candidates(row: dict, seed: int) -> list[int]:
    """The held-out item among the user's fixed negatives, in an order fixed by (seed, user)."""
    candidates = list(row["negatives"]) + [row["target"]]
    np.random.default_rng([seed, row["user"]]).shuffle(candidates)
    return candidates
