"""Random item re-indexing leaves no "next id" signal; P5's sequential numbering is full of it.

Every user here watches a run of consecutive items of one chain. P5's numbering (order of first
appearance) then makes each test target the last history id + 1; after `prepare`'s default random
re-indexing that happens no more often than chance (about 1 in the number of items).
"""

import pytest

from peapod_scale.data.dataset import read_manifest, read_rows
from peapod_scale.data.prepare.dataset import prepare_dataset

from helpers import write_udata

USERS, RUN = 150, 6


def _chain_ratings():
    return [(user, user + step, 4, 1000 + step) for user in range(1, USERS + 1) for step in range(RUN)]


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("chain")
    return root, write_udata(root, _chain_ratings())


def _next_id_share(root, path, item_index):
    data = root / item_index
    prepare_dataset("movielens", str(path), str(data), item_index=item_index, num_negatives=5, neighbors=0)
    manifest = read_manifest(data)
    rows = read_rows(data, manifest, "test")
    assert len(rows) == USERS
    return sum(r["target"] == r["history"][-1] + 1 for r in rows) / len(rows), manifest["counts"]["items"]


def test_random_index_leaves_the_next_id_at_chance_level(raw):
    share, items = _next_id_share(*raw, "random")
    assert items == USERS + RUN - 1
    # chance: 1 in ~items, i.e. ~1 of the 150 targets; 6 or more would have probability < 1e-3
    assert share * USERS <= 5, f"{share:.1%} of test targets are the last history id + 1 (chance {1 / items:.1%})"


def test_sequential_index_gives_the_answer_away(raw):
    share, _ = _next_id_share(*raw, "sequential")
    assert share == 1.0
