"""prepare's user embeddings (BPR on training interactions) and neighbour lists."""

import json
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from peapod_scale.data.prepare import user_similarity
from peapod_scale.data.prepare.dataset import prepare_dataset
from peapod_scale.data.prepare.user_similarity import (
    bpr_embeddings,
    find_neighbors,
    read_neighbors,
    read_user_embeddings,
    top_neighbors,
    training_pairs,
    write_user_similarity,
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
    assert entry["num_neighbors"] == 6 and entry["mf_dim"] == 8 and entry["neighbor_search"] == "exact"
    assert json.loads((out / "manifest.json").read_text())["user_similarity"] == entry
    assert pq.read_schema(out / entry["neighbors"]).names == ["user", "neighbors"]
    lists, vectors = read_neighbors(out, manifest), read_user_embeddings(out, manifest)
    users = manifest["counts"]["users"]
    assert lists.shape == (users, 6) and vectors.shape == (users, 8) and vectors.dtype == np.float32
    assert not (lists == np.arange(1, users + 1)[:, None]).any() and lists.min() >= 1 and lists.max() <= users
    no_lists = prepare_dataset("movielens", str(tmp_path / "u.data"), str(tmp_path / "none"), num_negatives=3,
                               neighbors=0)
    assert "user_similarity" not in no_lists and not (tmp_path / "none" / "neighbors.parquet").exists()


# The approximate search (FAISS IVF-Flat). faiss is optional: without it these skip, and "auto" searches exactly.

def clustered(count, dim, clusters, spread, seed):
    """Users around ``clusters`` random directions, ``spread`` the noise around them."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    return (centres[rng.integers(0, clusters, count)] + spread * rng.normal(size=(count, dim))).astype(np.float32)


def recall(found, exact):
    return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found.tolist(), exact.tolist())])


def test_ann_equals_exact_where_the_answer_is_unambiguous():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 16))
    vectors = (np.repeat(centres, 6, axis=0) + 0.05 * rng.normal(size=(240, 16))).astype(np.float32)
    exact = top_neighbors(vectors, 5)
    assert (exact // 6 == np.arange(240)[:, None] // 6).all()  # each user's 5 cluster mates
    for seed in range(3):  # 10 lists, 2 probed: a small part of the data, still every mate
        assert np.array_equal(top_neighbors(vectors, 5, method="ann", seed=seed, nlist=10, nprobe=2), exact)


def test_ann_recall_against_exact():
    pytest.importorskip("faiss")
    vectors = clustered(20_000, 64, clusters=200, spread=1.5, seed=1)  # overlapping: 8 probes give 0.77
    lists, search = find_neighbors(vectors, 20, method="ann", seed=0)
    nlist, nprobe = user_similarity.ivf_parameters(20_000)
    assert search == f"ivf-flat nlist={nlist} nprobe={nprobe} seed=0" and nprobe < nlist / 4
    score = recall(lists, top_neighbors(vectors, 20))
    assert score >= 0.9, score


def test_ann_is_deterministic_whatever_the_thread_count():
    faiss = pytest.importorskip("faiss")
    vectors = clustered(6_000, 32, clusters=60, spread=0.8, seed=2)
    threads = faiss.omp_get_max_threads()
    try:
        runs = []
        for count in (1, 2, 1):
            faiss.omp_set_num_threads(count)
            runs.append(top_neighbors(vectors, 10, method="ann", seed=5, nlist=80, nprobe=4))
    finally:
        faiss.omp_set_num_threads(threads)
    assert all(run.tobytes() == runs[0].tobytes() for run in runs)
    assert not np.array_equal(runs[0], top_neighbors(vectors, 10))  # 4 of 80 lists: approximate, yet repeatable


def test_ann_lists_are_full_distinct_and_never_the_user():
    pytest.importorskip("faiss")
    vectors = clustered(300, 8, clusters=30, spread=0.3, seed=3)
    # 100 lists of about 3 users, 1 probed: almost every row is short and is filled by the exact search
    lists = top_neighbors(vectors, 10, method="ann", nlist=100, nprobe=1)
    wider = top_neighbors(vectors, 10, method="ann", nlist=10, nprobe=2)
    for found in (lists, wider):
        assert found.shape == (300, 10) and found.min() >= 0 and found.max() < 300
        assert not (found == np.arange(300)[:, None]).any()
        assert all(len(set(row)) == 10 for row in found.tolist())
    assert np.array_equal(lists, top_neighbors(vectors, 10))
    tiny = top_neighbors(clustered(5, 8, clusters=2, spread=0.3, seed=4), 20, method="ann")
    assert tiny.shape == (5, 4) and all(set(row) == set(range(5)) - {i} for i, row in enumerate(tiny.tolist()))


def test_auto_is_exact_below_the_threshold_and_ann_above(monkeypatch):
    pytest.importorskip("faiss")
    vectors = clustered(2_000, 16, clusters=20, spread=0.5, seed=6)
    lists, search = find_neighbors(vectors, 8, method="auto")
    assert search == "exact" and np.array_equal(lists, top_neighbors(vectors, 8, method="exact"))
    assert user_similarity.neighbor_search_method("auto", user_similarity.AUTO_ANN_FROM - 1) == "exact"
    assert user_similarity.neighbor_search_method("auto", user_similarity.AUTO_ANN_FROM) == "ann"
    monkeypatch.setattr(user_similarity, "AUTO_ANN_FROM", 1_000)
    assert find_neighbors(vectors, 8, method="auto")[1].startswith("ivf-flat nlist=")
    with pytest.raises(ValueError, match="exact, ann, auto"):
        top_neighbors(vectors, 8, method="hnsw")


def test_ann_without_faiss_says_how_to_install_it_and_auto_falls_back(monkeypatch, capsys):
    vectors = clustered(200, 8, clusters=4, spread=0.5, seed=7)
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` fail as if it were not installed
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        top_neighbors(vectors, 5, method="ann")
    monkeypatch.setattr(user_similarity, "AUTO_ANN_FROM", 100)
    lists, search = find_neighbors(vectors, 5, method="auto")
    assert search == "exact" and np.array_equal(lists, top_neighbors(vectors, 5))
    warning = capsys.readouterr().err
    assert "faiss is not installed" in warning and warning.count("\n") == 1


def test_write_user_similarity_records_the_search_and_repeats_its_bytes(tmp_path):
    pytest.importorskip("faiss")
    rng = np.random.default_rng(8)
    lengths = rng.integers(5, 12, 400)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    items = rng.integers(1, 51, offsets[-1]).astype(np.int32)
    entries = []
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        entries.append(write_user_similarity(tmp_path / run, offsets, items, 50, num_neighbors=7, mf_dim=8, seed=3,
                                             neighbor_search="ann"))
    nlist, nprobe = user_similarity.ivf_parameters(400)
    assert entries[0] == entries[1]
    assert entries[0]["neighbor_search"] == f"ivf-flat nlist={nlist} nprobe={nprobe} seed=3"
    for name in (entries[0]["embeddings"], entries[0]["neighbors"]):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
