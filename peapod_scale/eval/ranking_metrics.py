"""Ranking metrics for leave-one-out evaluation: one held-out item per user."""

from __future__ import annotations

import math
from typing import Iterable, Sequence

CUTOFFS = (1, 5, 10)


def hit_rank(ranked: Sequence[int | None], target: int) -> int | None:
    """0-based rank of ``target`` in ``ranked``; None if absent.

    ``None`` marks an answer that is not a valid item: it is a miss that keeps its place, so it uses
    up a rank slot (dropping it would move the answers behind it up and inflate HR@1/5 and NDCG, and
    make unconstrained numbers incomparable with constrained ones, which never have such answers).
    A valid item already ranked above is the same answer again: it counts once and takes no slot.
    """
    seen: set[int] = set()
    position = 0
    for item in ranked:
        if item is not None:
            if item in seen:
                continue
            if item == target:
                return position
            seen.add(item)
        position += 1
    return None


def hit_ratio(rank: int | None, k: int) -> float:
    return float(rank is not None and rank < k)


def ndcg(rank: int | None, k: int) -> float:
    """With one relevant item the ideal DCG is 1, so NDCG@k is 1/log2(rank + 2) inside the cut-off."""
    return 1.0 / math.log2(rank + 2) if rank is not None and rank < k else 0.0


def summarize(ranks: Iterable[int | None]) -> dict[str, float]:
    """Mean HR@1/5/10 and NDCG@5/10 over users."""
    ranks = list(ranks)
    if not ranks:
        raise ValueError("no users to evaluate")
    out = {f"HR@{k}": sum(hit_ratio(r, k) for r in ranks) / len(ranks) for k in CUTOFFS}
    out.update({f"NDCG@{k}": sum(ndcg(r, k) for r in ranks) / len(ranks) for k in (5, 10)})
    return out
