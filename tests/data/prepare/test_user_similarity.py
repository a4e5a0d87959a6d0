"""prepare's user embeddings (BPR on training interactions) and neighbour lists."""

import json

import numpy as np
import pyarrow.parquet as pq

from peapod_scale.data.prepare.dataset import prepare_dataset
from peapod_scale.data.prepare.user_similarity import (
    bpr_embeddings,
    read_neighbors,
    read_user_embeddings,
    top_neighbors,
    training_pairs,
)

from helpers import synthetic_ratings, write_udata


def test_training_pairs_leave_out_validation_and_test_items():
    offsets = np.array([0, 3, 7])
    items = np.array([5, 6, 7, 1, 2, 3, 4], dtype=np.int32)
    users, pairs = training_pairs(offsets, items)
    assert users.tolist() == [0, 1, 1] and pairs.tolist() == [5, 1, 2]


def test_neighbors_exclude_the_user_match_brute_force_and_ignore_block_size():
    vectors = np.random.default_rng(3).normal(size=(23, 5)).astype(np.float32)
    small, big = top_neighbors(vectors, 4, block_size=3), top_neighbors(vectors, 4, block_size=1000)
    assert np.array_equal(small, big) and small.shape == (23, 4)
    assert not (small == np.arange(23)[:, None]).any()
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    assert np.array_equal(small, np.argsort(-similarity, axis=1, kind="stable")[:, :4])


def test_fewer_users_than_neighbours_keeps_everyone_else():
    lists = top_neighbors(np.eye(3, dtype=np.float32), 20)
    assert lists.shape == (3, 2) and all(set(row) == {0, 1, 2} - {i} for i, row in enumerate(lists.tolist()))


def test_embeddings_are_seeded_and_blind_to_held_out_items():
    offsets = np.array([0, 5, 9, 14])
    items = np.array([1, 2, 3, 4, 5, 2, 3, 6, 7, 1, 3, 5, 8, 9], dtype=np.int32)
    first = bpr_embeddings(*training_pairs(offsets, items), 3, 9, 4, seed=1, epochs=3)
    again = bpr_embeddings(*training_pairs(offsets, items), 3, 9, 4, seed=1, epochs=3)
    changed = items.copy()
    changed[[3, 4, 7, 8, 12, 13]] = [9, 8, 9, 8, 9, 8]  # every user's validation and test item
    blind = bpr_embeddings(*training_pairs(offsets, changed), 3, 9, 4, seed=1, epochs=3)
    other = bpr_embeddings(*training_pairs(offsets, items), 3, 9, 4, seed=2, epochs=3)
    assert np.array_equal(first, again) and np.array_equal(first, blind) and not np.array_equal(first, other)


def test_bpr_neighbours_share_tastes():
    rows = synthetic_ratings(users=40)
    offsets, items = [0], []
    for user in range(1, 41):
        items += [i for u, i, _, _ in rows if u == user]
        offsets.append(len(items))
    offsets, items = np.array(offsets), np.array(items, dtype=np.int32)
    vectors = bpr_embeddings(*training_pairs(offsets, items), 40, 25, 8, seed=0, epochs=60, batch_size=64, lr=0.05)
    lists = top_neighbors(vectors, 5)
    same_group = (lists % 2 == np.arange(40)[:, None] % 2).mean()
    assert same_group > 0.8, same_group  # random lists would give about 0.5


def test_prepare_writes_listed_parquet_files(tmp_path):
    out = tmp_path / "data"
    manifest = prepare_dataset("movielens", str(write_udata(tmp_path, synthetic_ratings())), str(out),
                               num_negatives=3, neighbors=6, mf_dim=8)
    entry = manifest["user_similarity"]
    assert entry["num_neighbors"] == 6 and entry["mf_dim"] == 8
    assert json.loads((out / "manifest.json").read_text())["user_similarity"] == entry
    assert pq.read_schema(out / entry["neighbors"]).names == ["user", "neighbors"]
    lists, vectors = read_neighbors(out, manifest), read_user_embeddings(out, manifest)
    users = manifest["counts"]["users"]
    assert lists.shape == (users, 6) and vectors.shape == (users, 8) and vectors.dtype == np.float32
    assert not (lists == np.arange(1, users + 1)[:, None]).any() and lists.min() >= 1 and lists.max() <= users
    no_lists = prepare_dataset("movielens", str(tmp_path / "u.data"), str(tmp_path / "none"), num_negatives=3,
                               neighbors=0)
    assert "user_similarity" not in no_lists and not (tmp_path / "none" / "neighbors.parquet").exists()
