"""Dataset filters applied to raw sequences before numbering.

``k_core`` keeps the largest sub-dataset in which every user and every item has at least K
interactions (the "5-core" of the Amazon and P5 data). Dropping a sparse item can push a user below
K and vice versa, so user and item filtering alternate until nothing changes; the result does not
depend on the order the filters run in (the K-core is unique). Interactions are counted with
repetition, as the Amazon 5-core dumps do.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa

from peapod_scale.data.sources.base import RawSequences


def _k_core_mask(owner: np.ndarray, item_index: np.ndarray, num_users: int, num_items: int, k: int) -> tuple[np.ndarray, int]:
    """Boolean mask of the interactions in the K-core, and how many filtering rounds it took."""
    keep = np.ones(len(owner), dtype=bool)
    rounds = 0
    while True:
        rounds += 1
        per_user = np.bincount(owner[keep], minlength=num_users)
        per_item = np.bincount(item_index[keep], minlength=num_items)
        next_keep = keep & (per_user[owner] >= k) & (per_item[item_index] >= k)
        if np.array_equal(next_keep, keep):
            return keep, rounds
        keep = next_keep


def k_core(raw: RawSequences, k: int) -> tuple[RawSequences, int]:
    """Raw sequences restricted to their K-core (order kept), and the number of rounds taken.

    Removed users and interactions are added to ``skipped`` so the summary reports them.
    """
    lengths = np.diff(raw.offsets)
    num_users = len(lengths)
    owner = np.repeat(np.arange(num_users), lengths)
    _, item_index = np.unique(raw.items, return_inverse=True)
    keep, rounds = _k_core_mask(owner, item_index.ravel(), num_users, int(item_index.max(initial=-1)) + 1, k)
    new_lengths = np.bincount(owner[keep], minlength=num_users)
    kept_users = new_lengths > 0
    skipped = dict(raw.skipped)
    skipped["k_core_users"] = int((~kept_users).sum())
    skipped["k_core_interactions"] = int((~keep).sum())
    return replace(
        raw,
        user_keys=raw.user_keys[kept_users],
        offsets=np.concatenate([[0], np.cumsum(new_lengths[kept_users])]).astype(np.int64),
        items=raw.items[keep],
        texts=None if raw.texts is None else raw.texts.filter(pa.array(keep)),
        negatives=None if raw.negatives is None else raw.negatives[kept_users],
        skipped=skipped,
    ), rounds
