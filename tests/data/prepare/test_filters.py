"""--min-interactions K: the K-core filter, iterated until stable."""

from __future__ import annotations

import numpy as np
import pytest

from peapod_scale.data.prepare.dataset import prepare_dataset
from peapod_scale.data.prepare.filters import k_core
from peapod_scale.data.sources.movielens import read_movielens

from helpers import write_udata


def naive_k_core(pairs: list[tuple[int, int]], k: int) -> list[tuple[int, int]]:
    """Reference: drop every interaction of an under-K user or item, repeat until nothing changes."""
    while True:
        users = {u: sum(1 for a, _ in pairs if a == u) for u, _ in pairs}
        items = {i: sum(1 for _, b in pairs if b == i) for _, i in pairs}
        kept = [(u, i) for u, i in pairs if users[u] >= k and items[i] >= k]
        if kept == pairs:
            return kept
        pairs = kept


def test_k_core_needs_several_rounds(tmp_path):
    # A: 1 2; B: 1 2 3; C: 3 4. Item 4 goes, then C (one left), then item 3 (one left, B's).
    rows = [(10, 1), (10, 2), (20, 1), (20, 2), (20, 3), (30, 3), (30, 4)]
    raw, rounds = k_core(read_movielens(write_udata(tmp_path / "u.data", rows)), 2)
    assert rounds == 4  # three that remove something, one that finds it stable
    assert raw.user_keys.tolist() == [10, 20]
    assert raw.items.tolist() == [1, 2, 1, 2]
    assert raw.offsets.tolist() == [0, 2, 4]
    assert raw.skipped == {"k_core_users": 1, "k_core_interactions": 3}


@pytest.mark.parametrize("seed", range(4))
def test_k_core_matches_a_naive_reference(tmp_path, seed):
    rng = np.random.default_rng(seed)
    rows = [(int(u), int(i)) for u, i in zip(rng.integers(1, 40, 400), rng.zipf(1.6, 400) % 50)]
    raw, _ = k_core(read_movielens(write_udata(tmp_path / "u.data", rows)), 4)
    got = sorted((int(u), int(i)) for k, u in enumerate(raw.user_keys)
                 for i in raw.items[raw.offsets[k]:raw.offsets[k + 1]])
    expected = sorted(naive_k_core(rows, 4))
    assert got == expected and len(expected) > 0
    lengths = np.diff(raw.offsets)
    _, per_item = np.unique(raw.items, return_counts=True)
    assert lengths.min() >= 4 and per_item.min() >= 4


def test_prepare_min_interactions_reports_what_it_removed(tmp_path, capsys):
    rows = [(u, i) for u in range(1, 7) for i in range(1, 6)] + [(7, 1), (7, 2), (7, 9), (8, 9)]
    path = write_udata(tmp_path / "u.data", rows)
    manifest = prepare_dataset("movielens", str(path), str(tmp_path / "out"), num_negatives=0,
                               neighbors=0, min_interactions=3)
    # item 9 has two interactions: it goes, which leaves user 7 with two and user 8 with none
    assert manifest["counts"] == {"users": 6, "items": 5, "interactions": 30}
    assert manifest["skipped"] == {"too_short_for_leave_one_out": 0, "k_core_users": 2,
                                   "k_core_interactions": 4}
    assert manifest["min_interactions"] == 3
