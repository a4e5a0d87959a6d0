"""Constrained decoding: beam search may only spell answers that are real items.

An unconstrained model can generate a number that is no item (or no number at all), which the
evaluation counts as a miss. A prefix trie over the token ids of the valid answers, consulted by
``generate(prefix_allowed_tokens_fn=...)`` at every step, makes every finished beam an answer from the
list: all items for sequential recommendation, the row's own candidates for top-N.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

from peapod_scale.data import templates
from peapod_scale.data.batches import evaluation_candidates

_END = -1  # key marking "a complete answer ends here" (never a token id)


class AnswerTrie:
    """Token-id prefix tree of the answers; each answer is its ids as the labels spell them (``</s>`` last)."""

    def __init__(self, answers: Iterable[Sequence[int]]):
        self.root: dict = {}
        for answer in answers:
            node = self.root
            for token in answer:
                node = node.setdefault(int(token), {})
            node[_END] = True

    def next_tokens(self, prefix: Sequence[int]) -> list[int]:
        """Tokens that extend ``prefix`` towards some answer; [] when the prefix leaves the trie."""
        node = self.root
        for token in prefix:
            node = node.get(int(token))
            if node is None:
                return []
        return [t for t in node if t != _END]


def answer_ids(codec, items: Iterable[int]) -> list[list[int]]:
    encoded = codec.encode([templates.item_target(i) for i in items])
    return [ids[mask.bool()].tolist() for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"])]


class PrefixConstraint:
    """``prefix_allowed_tokens_fn`` for one generation batch: row b of the batch uses ``tries[b]``.

    The decoder's first token is its start token, not part of the answer. A finished beam (past
    ``</s>``) is only padded by beam search, so there it allows padding.
    """

    def __init__(self, tries: Sequence[AnswerTrie], pad_id: int):
        self.tries, self.pad_id = tries, pad_id

    def __call__(self, batch_id: int, input_ids: torch.Tensor) -> list[int]:
        allowed = self.tries[batch_id].next_tokens(input_ids[1:].tolist())
        return allowed or [self.pad_id]


class AnswerConstraints:
    """Builds the constraint for a batch of evaluation rows; the all-items trie is built once."""

    def __init__(self, batcher):
        self.codec, self.num_items, self.seed = batcher.codec, batcher.num_items, batcher.seed
        self._all_items: AnswerTrie | None = None

    def for_rows(self, rows: Sequence[dict], task: str) -> PrefixConstraint:
        if task == "sequential":
            if self._all_items is None:
                self._all_items = AnswerTrie(answer_ids(self.codec, range(1, self.num_items + 1)))
            tries = [self._all_items] * len(rows)
        elif task == "topn":
            tries = [AnswerTrie(answer_ids(self.codec, evaluation_candidates(r, self.seed))) for r in rows]
        else:
            raise ValueError(f"constrained decoding has no answer list for task {task!r}")
        return PrefixConstraint(tries, self.codec.pad_id)
