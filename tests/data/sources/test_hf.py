"""`prepare --source hf`: a dataset written with `datasets` itself (save_to_disk folder, Parquet, CSV)
gives the same shards as the same reviews through --source amazon-reviews; bad values name input, row
and column; offline, a hub name is one error line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest

from peapod_scale.config.prepare import DEFAULT_COLUMNS, parse_columns
from peapod_scale.data.errors import DataFormatError
from peapod_scale.data.prepare.dataset import prepare_dataset

FAST = {"num_negatives": 1, "item_index": "sequential", "max_history": 5, "neighbors": 0}
AMAZON_COLUMNS = {"user": "reviewerID", "item": "asin", "time": "unixReviewTime", "text": "reviewText",
                  "summary": "summary"}
# user A: a2 (t=1), a1 (t=5), a3 (t=5, later row), a4 (t=9); B: a1, a2, a3, a7 (t=4), a6 (t=6);
# C has 2 rows (too short for leave-one-out), so a5 goes with it
REVIEWS = {
    "reviewerID": ["A", "B", "A", "A", "B", "C", "A", "B", "C", "B", "B"],
    "asin": ["a1", "a1", "a2", "a3", "a2", "a1", "a4", "a3", "a5", "a6", "a7"],
    "unixReviewTime": [5, 1, 1, 5, 2, 4, 9, 3, 5, 6, 4],
    "reviewText": ["Great smell and it lasts all day. Would buy again.", "ok", "Too short.", "word " * 30,
                   "This one broke after a week!", None, "I love the bottle design so much.",
                   "Cheap but it does the job?  Yes.", "Fine.", None, "Smells like a summer garden, truly."],
    "summary": ["", "Nice stuff", "Meh", "Works well enough", None, "x", "", "", "Okay then", "Two words", None],
}


def shard_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}


@pytest.fixture(scope="module")
def hf_inputs(tmp_path_factory):
    """The same reviews as a save_to_disk folder, a Parquet file, a CSV file (with a byte-order mark)
    and JSON lines for --source amazon-reviews; the datasets cache inside the test's folder."""
    root = tmp_path_factory.mktemp("hf")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", str(root / "cache"))
        reviews = datasets.Dataset.from_dict(REVIEWS)
        reviews.save_to_disk(str(root / "saved"))
        reviews.to_parquet(str(root / "reviews.parquet"))
        reviews.to_csv(str(root / "plain.csv"), index=False)
        (root / "reviews.csv").write_text("\ufeff" + (root / "plain.csv").read_text(encoding="utf-8"), encoding="utf-8")
        rows = [dict(zip(REVIEWS, values)) for values in zip(*REVIEWS.values())]
        (root / "reviews.json").write_text("".join(json.dumps({k: v for k, v in r.items() if v is not None}) + "\n"
                                                   for r in rows))
        yield root


@pytest.fixture()
def hf_cache(hf_inputs, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(hf_inputs / "cache"))
    return hf_inputs


@pytest.fixture(scope="module")
def amazon_reference(hf_inputs):
    out = hf_inputs / "reference"
    return prepare_dataset("amazon-reviews", str(hf_inputs / "reviews.json"), str(out), **FAST), out


@pytest.mark.parametrize("name", ["saved", "reviews.parquet", "reviews.csv"])
def test_hf_dataset_gives_the_shards_of_the_same_reviews_as_json_lines(hf_cache, amazon_reference, tmp_path, name):
    reference, reference_out = amazon_reference
    out = tmp_path / "out"
    manifest = prepare_dataset("hf", str(hf_cache / name), str(out), columns=AMAZON_COLUMNS, **FAST)
    assert shard_bytes(out) == shard_bytes(reference_out)  # users, items, every split, explanations
    assert manifest["counts"] == reference["counts"] == {"users": 2, "items": 6, "interactions": 9}
    assert manifest["skipped"] == reference["skipped"] == {"too_short_for_leave_one_out": 1}
    assert manifest["tasks"] == ["sequential", "topn", "explanation"]
    assert manifest["hf"] == {"input": str(hf_cache / name), "config": None, "split": None, "columns": AMAZON_COLUMNS}
    assert manifest["inputs"] and all(Path(entry["path"]).is_file() for entry in manifest["inputs"])
    assert pq.read_table(out / "users.parquet").column("original").to_pylist() == ["A", "B"]


def test_columns_parse_with_defaults_and_time_can_be_left_out():
    assert parse_columns("") == DEFAULT_COLUMNS
    assert parse_columns("user=reviewerID, item=asin,time=,text=reviewText") == {
        "user": "reviewerID", "item": "asin", "text": "reviewText"}
    for bad in ("usr=a", "user", "item="):
        with pytest.raises(ValueError):
            parse_columns(bad)


def test_integer_and_classlabel_ids_timestamps_splits_and_row_order(hf_cache, tmp_path):
    features = datasets.Features({"u": datasets.ClassLabel(names=["ann", "bob"]), "i": datasets.Value("int64"),
                                  "t": datasets.Value("timestamp[s]")})
    rows = {"u": [1, 0, 1, 0, 1, 0], "i": [30, 10, 20, 11, 10, 12], "t": [30, 3, 20, 2, 10, 1]}
    part = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"train": part.select(range(4)), "test": part.select(range(4, 6))}).save_to_disk(
        str(tmp_path / "dd"))
    manifest = prepare_dataset("hf", str(tmp_path / "dd"), str(tmp_path / "by_time"),
                               columns={"user": "u", "item": "i", "time": "t"}, **FAST)
    sequences = pq.read_table(tmp_path / "by_time" / "sequences").to_pylist()
    items = pq.read_table(tmp_path / "by_time" / "items.parquet").column("original").to_pylist()
    users = pq.read_table(tmp_path / "by_time" / "users.parquet").column("original").to_pylist()
    assert users == ["bob", "ann"]  # ClassLabel names, by first appearance over both splits in order
    assert [[items[i - 1] for i in row["items"]] for row in sequences] == [["10", "20", "30"], ["12", "11", "10"]]
    assert manifest["counts"]["interactions"] == 6

    prepare_dataset("hf", str(tmp_path / "dd"), str(tmp_path / "rows"), columns={"user": "u", "item": "i"}, **FAST)
    sequences = pq.read_table(tmp_path / "rows" / "sequences").to_pylist()
    items = pq.read_table(tmp_path / "rows" / "items.parquet").column("original").to_pylist()
    assert [[items[i - 1] for i in row["items"]] for row in sequences] == [["30", "20", "10"], ["10", "11", "12"]]

    with pytest.raises(ValueError, match="no split 'valid'"):
        prepare_dataset("hf", str(tmp_path / "dd"), str(tmp_path / "x"), columns={"user": "u", "item": "i"},
                        hf_split="valid", **FAST)
    with pytest.raises(ValueError, match="no user has the 3 interactions"):  # test split: 1 row per user
        prepare_dataset("hf", str(tmp_path / "dd"), str(tmp_path / "x"), columns={"user": "u", "item": "i"},
                        hf_split="test", **FAST)


def replaced(column: str, row: int, value) -> dict:
    """REVIEWS' column with the value of one row (1-based) replaced."""
    values = list(REVIEWS[column])
    values[row - 1] = value
    return {column: values}


BAD = [  # (columns replacing REVIEWS' ones, field, row; 0 = no row: a plain ValueError naming the column)
    (replaced("reviewerID", 3, None), "reviewerID", 3),
    (replaced("asin", 4, " "), "asin", 4),
    ({"unixReviewTime": [float(t) for t in REVIEWS["unixReviewTime"]][:4] + [float("nan")] +
      [float(t) for t in REVIEWS["unixReviewTime"]][5:]}, "unixReviewTime", 5),
    (replaced("unixReviewTime", 9, None), "unixReviewTime", 9),
    ({"asin": [float(i) for i in range(len(REVIEWS["asin"]))]}, "asin", 0),  # float ids: refused by type
    ({"unixReviewTime": ["5"] * len(REVIEWS["asin"])}, "unixReviewTime", 0),
]


@pytest.mark.parametrize("replace, field, row", BAD)
def test_bad_values_name_input_row_and_column_and_leave_nothing(hf_cache, tmp_path, replace, field, row):
    path = tmp_path / "bad.parquet"
    datasets.Dataset.from_dict({**REVIEWS, **replace}).to_parquet(str(path))
    with pytest.raises(ValueError) as caught:
        prepare_dataset("hf", str(path), str(tmp_path / "out"), columns=AMAZON_COLUMNS, **FAST)
    if row:
        assert isinstance(caught.value, DataFormatError)
        assert str(caught.value).startswith(f"{path}:{row}: field '{field}': ")
    else:
        assert f"column '{field}'" in str(caught.value) and str(path) in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.parquet"]


def test_csv_rows_are_reported_as_file_lines(hf_cache, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("user_id,item_id,timestamp\nu1,i1,1\n,i2,2\n")
    with pytest.raises(DataFormatError, match=rf"^{path}:3: field 'user_id': missing"):
        prepare_dataset("hf", str(path), str(tmp_path / "out"), **FAST)


def test_a_missing_column_lists_the_dataset_columns(hf_cache, tmp_path):
    with pytest.raises(ValueError, match=r"no column 'timestamp' .*its columns are reviewerID, asin, unixReviewTime"):
        prepare_dataset("hf", str(hf_cache / "saved"), str(tmp_path / "out"),
                        columns={"user": "reviewerID", "item": "asin", "time": "timestamp"}, **FAST)
    with pytest.raises(ValueError, match="--columns: only for --source hf"):
        prepare_dataset("movielens", str(hf_cache / "reviews.json"), str(tmp_path / "out"), columns=AMAZON_COLUMNS)


def test_cli_offline_reads_parquet_and_a_hub_name_is_one_error_line(hf_inputs, tmp_path):
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tmp_path / "cache"), "HF_HOME": str(tmp_path / "home")}

    def prepare(*args):
        return subprocess.run([sys.executable, "-m", "peapod_scale.cli", "prepare", "--source", "hf", *args,
                               "--num-negatives", "1", "--neighbors", "0"],
                              capture_output=True, text=True, timeout=300, env=env)

    done = prepare("--input", str(hf_inputs / "reviews.parquet"), "--output", str(tmp_path / "out"),
                   "--columns", "user=reviewerID,item=asin,time=unixReviewTime,text=reviewText,summary=summary")
    assert done.returncode == 0, done.stderr
    assert f"prepared hf -> {tmp_path / 'out'}" in done.stdout
    assert "columns user=reviewerID,item=asin,time=unixReviewTime,text=reviewText,summary=summary" in done.stdout
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["counts"]["users"] == 2

    hub = prepare("--input", "nobody/no-such-dataset", "--output", str(tmp_path / "hub"))
    assert hub.returncode == 2
    assert hub.stderr.startswith("peapod-scale prepare: error: --source hf could not load nobody/no-such-dataset")
    assert len(hub.stderr.strip().splitlines()) == 1 and "Traceback" not in hub.stderr
    assert not (tmp_path / "hub").exists()
