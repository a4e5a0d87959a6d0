"""`prepare --source amazon-reviews`: review JSON lines (plain or gzipped) -> splits with explanations."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from peapod_scale.data.errors import DataFormatError
from peapod_scale.data.prepare.dataset import prepare_dataset
from peapod_scale.data.sources.amazon import explanation_of

from helpers import SHARED_DATA

ALL_BEAUTY = SHARED_DATA / "reviews" / "All_Beauty_5.json.gz"
FAST = {"num_negatives": 0, "item_index": "sequential", "max_history": 5, "neighbors": 0}


def review(user, item, t, text="", summary="", **extra):
    return {"reviewerID": user, "asin": item, "overall": 5.0, "unixReviewTime": t,
            "reviewText": text, "summary": summary, **extra}


# Hand-checked: user A reviews a2 (t=1), a1 (t=5), a3 (t=5, later line), a4 (t=9): ties keep input order.
REVIEWS = [
    review("A", "a1", 5, "Great smell and it lasts all day. Would buy again."),
    review("B", "a1", 1, "ok", "Nice stuff"),
    review("A", "a2", 1, "Too short.", "Meh"),  # neither rule fits: no explanation
    review("A", "a3", 5, "word " * 30, "Works well enough"),  # run-on text: the summary
    review("B", "a2", 2, "This one broke after a week!"),
    review("A", "a4", 9, "I love the bottle design so much."),
    review("B", "a3", 3, "Cheap but it does the job?  Yes."),
]


def write_lines(path: Path, records, compress: bool) -> Path:
    data = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records).encode()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


@pytest.mark.parametrize("text, summary, expected", [
    ("Great smell and it lasts all day. Would buy again.", "", "Great smell and it lasts all day."),
    ("Nice.  Really   nice product overall, love it", "Good one", "Good one"),  # 1-token sentence
    ("It is fine!", "x", ""),  # 3 tokens, 1-word summary
    ("no end mark here, the whole text", "", "no end mark here, the whole text"),
    ("Version 2.0 works. Yes", "", ""),  # "2.0" is no sentence end; "Version 2.0 works." has 3 tokens
    ("a " * 26, "Five Stars", "Five Stars"),
])
def test_explanation_rule(text, summary, expected):
    assert explanation_of(text, summary) == expected


@pytest.mark.parametrize("compress", [False, True])
def test_reviews_become_chronological_interactions_with_explanations(tmp_path, compress):
    # the name says nothing: gzip is detected from the magic bytes
    path = write_lines(tmp_path / "reviews.data", REVIEWS, compress)
    out = tmp_path / "out"
    manifest = prepare_dataset("amazon-reviews", str(path), str(out), **FAST)
    assert manifest["counts"] == {"users": 2, "items": 4, "interactions": 7}
    assert manifest["tasks"] == ["sequential", "topn", "explanation"]
    assert pq.read_table(out / "users.parquet").to_pydict() == {"user": [1, 2], "original": ["A", "B"]}
    # sequential numbering by first appearance over users in order, each in time order
    assert pq.read_table(out / "items.parquet").column("original").to_pylist() == ["a2", "a1", "a3", "a4"]
    seqs = pq.read_table(out / "sequences").to_pylist()
    assert seqs == [{"user": 1, "items": [1, 2, 3, 4]}, {"user": 2, "items": [2, 1, 3]}]
    train = pq.read_table(out / "train").to_pylist()
    assert [(r["user"], r["target"], r["explanation"]) for r in train] == [
        (1, 2, "Great smell and it lasts all day.")]
    valid = pq.read_table(out / "valid").to_pylist()
    assert [(r["target"], r["explanation"]) for r in valid] == [(3, "Works well enough"),
                                                               (1, "This one broke after a week!")]
    test = pq.read_table(out / "test").to_pylist()
    assert [(r["target"], r["explanation"]) for r in test] == [(4, "I love the bottle design so much."),
                                                              (3, "Cheap but it does the job?")]
    assert manifest["task_rows"]["train"] == {"sequential": 1, "topn": 1, "explanation": 1}
    assert manifest["task_rows"]["valid"]["explanation"] == 2


def test_explanation_empty_string_when_none_and_movielens_has_no_column(tmp_path):
    records = [review("A", f"a{i}", i, "", "x") for i in range(4)]
    out = tmp_path / "out"
    manifest = prepare_dataset("amazon-reviews", str(write_lines(tmp_path / "r.json", records, False)),
                               str(out), **FAST)
    assert manifest["tasks"] == ["sequential", "topn"]
    assert pq.read_table(out / "test").column("explanation").to_pylist() == [""]


BAD = [  # (lines, line, field)
    (['{"reviewerID": "A"'], 1, "json"),
    ([review("A", "a1", 1), "not json at all"], 2, "json"),
    ([review("A", "a1", 1), review("", "a1", 2)], 2, "reviewerID"),
    ([review("A", "a1", 1), {"reviewerID": "A", "unixReviewTime": 3}], 2, "asin"),
    ([review("A", "a1", "yesterday")], 1, "unixReviewTime"),
    ([review("A", "a1", 1.5)], 1, "unixReviewTime"),
    ([review("A", "a1", 1, overall="five")], 1, "overall"),
    ([review("A", "a1", 1, reviewText=7)], 1, "reviewText"),
    (["[1, 2]"], 1, "json"),
    ([], 1, "reviewerID"),  # empty file
]


@pytest.mark.parametrize("lines, line, field", BAD)
def test_bad_reviews_name_file_line_field(tmp_path, lines, line, field):
    path = write_lines(tmp_path / "r.json.gz", lines, True)
    with pytest.raises(DataFormatError) as caught:
        prepare_dataset("amazon-reviews", str(path), str(tmp_path / "out"), **FAST)
    assert (caught.value.path, caught.value.line, caught.value.field) == (str(path), line, field)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json.gz"]


def test_truncated_gzip_is_an_error_not_a_silent_prefix(tmp_path):
    records = [review(f"U{i % 7}", f"a{i % 5}", i, "Some words to make the stream longer than a block.")
               for i in range(400)]
    path = write_lines(tmp_path / "r.json.gz", records, True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError) as caught:
        prepare_dataset("amazon-reviews", str(path), str(tmp_path / "out"), **FAST)
    assert caught.value.field == "gzip" and "truncated" in str(caught.value)
    assert 1 <= caught.value.line <= 401


@pytest.mark.skipif(not ALL_BEAUTY.is_file(), reason=f"All_Beauty_5.json.gz not found at {ALL_BEAUTY}")
def test_all_beauty(tmp_path):
    out = tmp_path / "beauty"
    manifest = prepare_dataset("amazon-reviews", str(ALL_BEAUTY), str(out), num_negatives=20, neighbors=0)
    assert manifest["counts"] == {"users": 991, "items": 85, "interactions": 5_269}
    assert manifest["tasks"] == ["sequential", "topn", "explanation"]
    assert manifest["splits"]["train"]["rows"] == 5_269 - 3 * 991
    test = pq.read_table(out / "test").to_pydict()
    assert sum(e != "" for e in test["explanation"]) == manifest["task_rows"]["test"]["explanation"] > 900
    assert all(len(e.split()) <= 25 for e in test["explanation"])
    originals = pq.read_table(out / "users.parquet").column("original").to_pylist()
    assert all(o.startswith("A") for o in originals)


@pytest.mark.parametrize("compress", [False, True])
def test_a_byte_order_mark_before_the_first_review_is_not_data(tmp_path, compress):
    plain = write_lines(tmp_path / "plain.json", REVIEWS, False).read_bytes()
    data = "\ufeff".encode() + plain
    (tmp_path / "marked.json").write_bytes(gzip.compress(data) if compress else data)
    expected = prepare_dataset("amazon-reviews", str(tmp_path / "plain.json"), str(tmp_path / "a"), **FAST)
    got = prepare_dataset("amazon-reviews", str(tmp_path / "marked.json"), str(tmp_path / "b"), **FAST)
    assert got["counts"] == expected["counts"]
    for table in ("users.parquet", "test"):
        assert pq.read_table(tmp_path / "b" / table).to_pylist() == pq.read_table(tmp_path / "a" / table).to_pylist()
