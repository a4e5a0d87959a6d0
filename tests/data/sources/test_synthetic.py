"""--source synthetic: seeded, deterministic, Zipf popularity, graph walks, templated reviews."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from peapod_scale.config.prepare import PrepareConfig
from peapod_scale.data.prepare.dataset import prepare_dataset, run_prepare
from peapod_scale.data.sources import synthetic


def parquet_bytes(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}


def test_shape_popularity_and_sequential_structure(monkeypatch):
    monkeypatch.setattr(synthetic, "CHUNK_USERS", 128)  # several chunks
    raw = synthetic.generate_synthetic(500, 300, 12_000, seed=3)
    assert len(raw.items) == 12_000 and raw.offsets[-1] == 12_000 and len(raw.user_keys) == 500
    assert np.diff(raw.offsets).min() >= synthetic.MIN_LENGTH
    assert raw.items.dtype == np.int64 and pa.types.is_dictionary(raw.texts.type)  # no Python objects
    counts = np.bincount(raw.items, minlength=300)
    assert counts[:10].sum() > 5 * counts[-100:].sum()  # Zipf: the head dominates the tail
    # consecutive items of a user follow the item graph far more often than chance
    graph = synthetic._popular(np.random.default_rng([3, synthetic._STREAM, 1]),
                               np.cumsum(1 / np.arange(1, 301) / (1 / np.arange(1, 301)).sum()),
                               300 * synthetic.SUCCESSORS).reshape(300, -1)
    same_user = np.ones(len(raw.items) - 1, dtype=bool)
    same_user[raw.offsets[1:-1] - 1] = False
    prev, nxt = raw.items[:-1][same_user], raw.items[1:][same_user]
    followed = (graph[prev] == nxt[:, None]).any(axis=1).mean()
    assert followed > synthetic.FOLLOW * 0.9
    texts = raw.texts.cast(pa.string()).to_pylist()[:50]
    assert all(t.endswith(".") and len(t.split()) >= 4 for t in texts)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    shape = (60, 40, 600)
    a, b, c = (tmp_path / n for n in "abc")
    for out, seed in ((a, 1), (b, 1), (c, 2)):
        prepare_dataset("synthetic", None, str(out), seed=seed, num_negatives=5, neighbors=0,
                        **dict(zip(("num_users", "num_items", "num_interactions"), shape)))
    assert parquet_bytes(a) == parquet_bytes(b) != parquet_bytes(c)


def test_cli_writes_the_standard_format_with_explanations(tmp_path):
    args = PrepareConfig.from_args(["--source", "synthetic", "--output", str(tmp_path / "out"), "--num-users", "30",
                              "--num-items", "20", "--num-interactions", "300", "--num-negatives", "3",
                              "--neighbors", "0"])
    manifest = run_prepare(args)
    assert manifest["counts"]["interactions"] == 300 and manifest["counts"]["users"] == 30
    assert manifest["synthetic"] == {"num_users": 30, "num_items": 20, "num_interactions": 300}
    assert manifest["tasks"] == ["sequential", "topn", "explanation"]
    test = pq.read_table(tmp_path / "out" / "test")
    assert test.schema.field("explanation").type == pa.string()
    assert all(len(n) == 3 and t not in n for t, n in zip(test.column("target").to_pylist(),
                                                          test.column("negatives").to_pylist()))


def test_too_few_interactions_is_refused(tmp_path):
    with pytest.raises(ValueError, match="3 interactions per user"):
        prepare_dataset("synthetic", None, str(tmp_path / "out"), num_users=10, num_items=5, num_interactions=29)
