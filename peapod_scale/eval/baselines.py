"""Trivial baselines computed on the same split as the model, always reported beside it.

Both learn from the training part of each sequence only (everything before the validation item).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Iterable, Sequence


class Popularity:
    def __init__(self, training_sequences: Iterable[Sequence[int]]):
        self.counts = Counter(item for sequence in training_sequences for item in sequence)
        self.ranking = [item for item, _ in sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))]

    def recommend(self, history: Sequence[int], k: int) -> list[int]:
        return self.ranking[:k]

    def rank_candidates(self, history: Sequence[int], candidates: Sequence[int], k: int) -> list[int]:
        return sorted(candidates, key=lambda item: (-self.counts.get(item, 0), item))[:k]


class Transitions:
    """Items that most often follow the user's last item in the training sequences; popularity breaks ties."""

    def __init__(self, training_sequences: Iterable[Sequence[int]]):
        sequences = [list(s) for s in training_sequences]
        self.popularity = Popularity(sequences)
        self.following: dict[int, Counter] = defaultdict(Counter)
        for sequence in sequences:
            for current, nxt in zip(sequence, sequence[1:]):
                self.following[current][nxt] += 1

    def _key(self, last: int | None):
        following = self.following.get(last, Counter())
        return lambda item: (-following.get(item, 0), -self.popularity.counts.get(item, 0), item)

    def recommend(self, history: Sequence[int], k: int) -> list[int]:
        last = history[-1] if history else None
        following = self.following.get(last, Counter())
        ranked = sorted(following, key=self._key(last))[:k]
        for item in self.popularity.ranking:
            if len(ranked) >= k:
                break
            if item not in following:
                ranked.append(item)
        return ranked

    def rank_candidates(self, history: Sequence[int], candidates: Sequence[int], k: int) -> list[int]:
        return sorted(candidates, key=self._key(history[-1] if history else None))[:k]


class NextIds:
    """"Last id + 1, + 2, ...": the items numbered right after the user's last item.

    It learns nothing; it scores well only where item numbers carry the interaction order (P5's
    sequential indexing numbers each user's items consecutively), so it measures that leak: with
    random item ids it sits at chance.
    """

    def __init__(self, num_items: int):
        self.num_items = num_items

    def _distance(self, last: int | None):
        """Steps forward from the last item to ``item``, wrapping past the last number (1..num_items)."""
        start = last if last else 0
        return lambda item: ((item - start - 1) % self.num_items, item)

    def recommend(self, history: Sequence[int], k: int) -> list[int]:
        start = history[-1] if history else 0
        return [(start + step) % self.num_items + 1 for step in range(min(k, self.num_items))]

    def rank_candidates(self, history: Sequence[int], candidates: Sequence[int], k: int) -> list[int]:
        return sorted(candidates, key=self._distance(history[-1] if history else None))[:k]
