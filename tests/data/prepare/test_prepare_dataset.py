"""The `prepare` stage: raw MovieLens / P5 files -> leave-one-out Parquet splits + manifest."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from peapod_scale.config.prepare import PrepareConfig
from peapod_scale.data.errors import DataFormatError
from peapod_scale.data.prepare.dataset import prepare_dataset, run_prepare
from peapod_scale.data.sources.default_data import movielens_100k

from helpers import SHARED_DATA

P5_BEAUTY = SHARED_DATA / "p5" / "beauty"

# (user, item, rating, timestamp) in input order. Hand-checked outcome with --item-index sequential:
#   user 20 has 2 ratings: skipped. Kept users by first appearance: 10 -> 1, 30 -> 2, 40 -> 3.
#   user 10 in time order: 101 (t10), 102 (t30), 103 (t30, later line), 100 (t50), 104 (t90)
#   user 30: 100, 300, 301, 302;  user 40: 401 (t1), 100 (t2), 400 (t3)
#   items by first appearance: 101 1, 102 2, 103 3, 100 4, 104 5, 300 6, 301 7, 302 8, 401 9, 400 10
RATINGS = [
    (20, 200, 3, 100), (10, 100, 4, 50), (30, 100, 2, 10), (10, 101, 5, 10), (10, 102, 3, 30),
    (30, 300, 1, 20), (10, 103, 3, 30), (20, 201, 4, 200), (30, 301, 5, 30), (40, 400, 2, 3),
    (10, 104, 2, 90), (30, 302, 3, 40), (40, 401, 4, 1), (40, 100, 1, 2),
]
SEQUENCES = {1: [1, 2, 3, 4, 5], 2: [4, 6, 7, 8], 3: [9, 4, 10]}
ITEM_ORIGINALS = ["101", "102", "103", "100", "104", "300", "301", "302", "401", "400"]
INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
SMALL = {"max_history": 2, "num_negatives": 3, "item_index": "sequential"}


def write_movielens(folder: Path, fmt: str, ratings=RATINGS) -> Path:
    if fmt == "u.data":
        text = "".join("\t".join(map(str, r)) + "\n" for r in ratings)
    elif fmt == "ratings.dat":
        text = "".join("::".join(map(str, r)) + "\r\n" for r in ratings)  # CRLF, as Windows tools write
    else:
        text = INTER_HEADER + "".join(f"{u}\t{i}\t{r}\t{t}.0\n" for u, i, r, t in ratings)
    path = folder / fmt
    path.write_text(text, newline="")
    return path


def read_split(root: Path, manifest: dict, split: str) -> list[dict]:
    files = manifest["splits"][split]["files"]
    return [row for name in files for row in pq.read_table(root / name).to_pylist()]


def parquet_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}


def random_ratings(users: int, items: int, seed: int = 0) -> list[tuple[int, int, int, int]]:
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(1, users + 1):
        for item in rng.choice(np.arange(1, items + 1), size=int(rng.integers(1, 12)), replace=False):
            rows.append((user, int(item), int(rng.integers(1, 6)), int(rng.integers(0, 10**6))))
    return [rows[i] for i in rng.permutation(len(rows))]


@pytest.mark.parametrize("fmt", ["u.data", "ratings.dat", "ml.inter"])
def test_split_contents_are_hand_checked(tmp_path, fmt):
    out = tmp_path / "out"
    manifest = prepare_dataset("movielens", str(write_movielens(tmp_path, fmt)), str(out), **SMALL)

    assert manifest["counts"] == {"users": 3, "items": 10, "interactions": 12}
    assert manifest["skipped"] == {"too_short_for_leave_one_out": 1}
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert pq.read_table(out / "users.parquet").to_pydict() == {"user": [1, 2, 3], "original": ["10", "30", "40"]}
    assert pq.read_table(out / "items.parquet").to_pydict() == {"item": list(range(1, 11)), "original": ITEM_ORIGINALS}
    assert read_split(out, manifest, "sequences") == [{"user": u, "items": s} for u, s in SEQUENCES.items()]
    # train: t = items[:-2], rows for positions i >= 1, history = at most 2 items before t[i]; written in a
    # shuffled order (test_train_rows_are_written_in_a_seeded_random_order), so compared as a set here
    in_order = lambda rows: sorted(rows, key=lambda r: (r["user"], r["history"], r["target"]))  # noqa: E731
    assert in_order(read_split(out, manifest, "train")) == [
        {"user": 1, "history": [1], "target": 2},
        {"user": 1, "history": [1, 2], "target": 3},
        {"user": 2, "history": [4], "target": 6},
    ]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "negatives"} for r in rows]  # noqa: E731
    valid, test = read_split(out, manifest, "valid"), read_split(out, manifest, "test")
    assert strip(valid) == [
        {"user": 1, "history": [2, 3], "target": 4},
        {"user": 2, "history": [4, 6], "target": 7},
        {"user": 3, "history": [9], "target": 4},
    ]
    assert strip(test) == [
        {"user": 1, "history": [3, 4], "target": 5},
        {"user": 2, "history": [6, 7], "target": 8},
        {"user": 3, "history": [9, 4], "target": 10},
    ]
    for row_valid, row_test in zip(valid, test):
        assert row_valid["negatives"] == row_test["negatives"]
        assert len(set(row_valid["negatives"])) == 3
        assert not set(row_valid["negatives"]) & set(SEQUENCES[row_valid["user"]])
        assert set(row_valid["negatives"]) <= set(range(1, 11))
    rows = {name: split["rows"] for name, split in manifest["splits"].items()}
    assert rows == {"train": 3, "valid": 3, "test": 3, "sequences": 3}


def test_three_formats_give_identical_shards(tmp_path):
    shards = []
    for fmt in ("u.data", "ratings.dat", "ml.inter"):
        out = tmp_path / f"out-{fmt}"
        prepare_dataset("movielens", str(write_movielens(tmp_path, fmt)), str(out), **SMALL)
        shards.append(parquet_bytes(out))
    assert shards[0] == shards[1] == shards[2]
    assert len(shards[0]) == 8  # users, items, 4 splits, user_embeddings, neighbors


def test_negatives_never_seen_seeded_per_user_and_independent_of_sharding(tmp_path):
    path = write_movielens(tmp_path, "u.data", random_ratings(users=60, items=40))
    options = {"num_negatives": 20, "item_index": "random"}
    base = prepare_dataset("movielens", str(path), str(tmp_path / "a"), seed=7, **options)
    sharded = prepare_dataset("movielens", str(path), str(tmp_path / "b"), seed=7, rows_per_shard=7, **options)
    other = prepare_dataset("movielens", str(path), str(tmp_path / "c"), seed=8, **options)

    sequences = {r["user"]: set(r["items"]) for r in read_split(tmp_path / "a", base, "sequences")}
    valid = read_split(tmp_path / "a", base, "valid")
    assert len(valid) == base["counts"]["users"] == len(sequences)
    for row, test_row in zip(valid, read_split(tmp_path / "a", base, "test")):
        negatives = row["negatives"]
        assert len(negatives) == len(set(negatives)) == 20
        assert not set(negatives) & sequences[row["user"]]
        assert all(1 <= n <= base["counts"]["items"] for n in negatives)
        assert test_row["negatives"] == negatives
    assert len(sharded["splits"]["valid"]["files"]) > 1
    assert read_split(tmp_path / "b", sharded, "valid") == valid
    assert read_split(tmp_path / "c", other, "valid") != valid


def test_train_rows_are_written_in_a_seeded_random_order(tmp_path):
    """Not user after user: the stream shuffles only within ~65k-row windows, so a user-ordered train split
    would train on one block of users at a time. The order is a function of --seed, whatever the sharding."""
    path = write_movielens(tmp_path, "u.data", random_ratings(users=80, items=60, seed=4))
    base = prepare_dataset("movielens", str(path), str(tmp_path / "a"), seed=7, num_negatives=5)
    sharded = prepare_dataset("movielens", str(path), str(tmp_path / "b"), seed=7, num_negatives=5, rows_per_shard=9)
    other = prepare_dataset("movielens", str(path), str(tmp_path / "c"), seed=8, num_negatives=5)
    train = read_split(tmp_path / "a", base, "train")
    users = [r["user"] for r in train]
    assert len(train) > 200 and len(sharded["splits"]["train"]["files"]) > 1
    same_user_next = sum(a == b for a, b in zip(users, users[1:])) / (len(users) - 1)
    assert same_user_next < 0.1  # user-ordered rows: ~0.8 here; shuffled: about 1 / 80
    # no drift of users along the order (user-ordered rows: correlation ~1)
    assert abs(np.corrcoef(np.arange(len(users)), users)[0, 1]) < 0.3
    assert read_split(tmp_path / "b", sharded, "train") == train
    assert read_split(tmp_path / "c", other, "train") != train


def test_same_input_and_options_give_byte_identical_shards(tmp_path):
    path = write_movielens(tmp_path, "u.data", random_ratings(users=40, items=30, seed=3))
    first = prepare_dataset("movielens", str(path), str(tmp_path / "a"), num_negatives=5, rows_per_shard=16)
    second = prepare_dataset("movielens", str(path), str(tmp_path / "b"), num_negatives=5, rows_per_shard=16)
    assert first["splits"] == second["splits"] and len(first["splits"]["train"]["files"]) > 1
    assert parquet_bytes(tmp_path / "a") == parquet_bytes(tmp_path / "b")
    for manifest in (first, second):  # every file the manifest names is there, with its row count
        for split in manifest["splits"].values():
            assert sum(pq.read_metadata(tmp_path / "a" / f).num_rows for f in split["files"]) == split["rows"]


def test_item_index_random_and_sequential_are_bijections(tmp_path):
    path = write_movielens(tmp_path, "u.data", random_ratings(users=50, items=80, seed=5))
    results = {}
    for index in ("sequential", "random"):
        out = tmp_path / index
        manifest = prepare_dataset("movielens", str(path), str(out), num_negatives=5, item_index=index)
        items = pq.read_table(out / "items.parquet").to_pydict()
        count = manifest["counts"]["items"]
        assert items["item"] == list(range(1, count + 1))
        assert len(set(items["original"])) == count
        sequences = read_split(out, manifest, "sequences")
        assert {i for r in sequences for i in r["items"]} == set(range(1, count + 1))
        name = dict(zip(items["item"], items["original"]))
        results[index] = (sequences, [[name[i] for i in r["items"]] for r in sequences])
    # the same interactions under both numberings; only the numbers differ
    assert results["sequential"][1] == results["random"][1]
    assert results["sequential"][0] != results["random"][0]
    first_seen = list(dict.fromkeys(i for r in results["sequential"][0] for i in r["items"]))
    assert first_seen == sorted(first_seen)


def test_cli_counts_skipped_users_and_prints_summary(tmp_path, capsys):
    path = write_movielens(tmp_path, "u.data", RATINGS + [(50, 100, 3, 1), (60, 101, 3, 1), (60, 102, 3, 2)])
    args = PrepareConfig.from_args(["--source", "movielens", "--input", str(path), "--output", str(tmp_path / "out"),
                              "--num-negatives", "2", "--item-index", "sequential"])
    manifest = run_prepare(args)
    assert manifest["skipped"] == {"too_short_for_leave_one_out": 3}
    assert manifest["counts"]["users"] == 3
    printed = capsys.readouterr().out.splitlines()
    assert next(line for line in printed if "too short for leave one out" in line).split()[-1] == "3"
    assert next(line for line in printed if line.split()[:1] == ["train"]).split()[1:] == ["3", "1"]
    with pytest.raises(SystemExit):
        PrepareConfig.from_args(["--source", "movielens", "--output", "x", "--max-history", "0"])


MALFORMED = [  # (source, file or folder name, content, line, field)
    ("movielens", "u.data", "1\t2\t5\t10\n1\t3\t5\t11\n1\tx7\t5\t12\n", 3, "item"),
    ("movielens", "u.data", "1\t2\t5\t10\n1\t3\t5\n", 2, "timestamp"),
    ("movielens", "u.data", "1\t2\t5\t10\n\n1\t3\t5\t11\n", 2, "user"),  # empty line inside
    ("movielens", "ratings.dat", "1::2::5::10\r\n1.5::3::5::11\r\n", 2, "user"),
    ("movielens", "ml.inter", INTER_HEADER + "1\t2\tgood\t3\n", 2, "rating"),
    ("movielens", "u.data", "", 1, "user"),
    ("p5", "p5", "1 1 2 3\n2 4 x 5\n", 2, "item"),
    ("p5", "p5", "1 1 2 3\n2\r\n", 2, "items"),  # a user without items
    ("p5", "p5", "1 1 2 3\n2 4 99 5\n", 2, "item"),  # 99 is not in datamaps
    ("p5", "p5", "1 1 2 3\n7 4 5\n", 2, "user"),  # 7 is not in datamaps
    ("p5", "p5", "1 1 2 3\n1 4 5\n", 2, "user"),  # the same user twice
    ("p5", "p5", "", 1, "user"),
]


def write_p5(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sequential_data.txt").write_text(text, newline="")
    maps = {"id2user": {str(u): f"U{u}" for u in range(1, 4)}, "id2item": {str(i): f"I{i}" for i in range(1, 8)}}
    (folder / "datamaps.json").write_text(json.dumps(maps))
    return folder


@pytest.mark.parametrize("source, name, content, line, field", MALFORMED)
def test_malformed_input_names_file_line_field_and_leaves_nothing(tmp_path, source, name, content, line, field):
    work = tmp_path / "work"
    work.mkdir()
    if source == "p5":
        path = write_p5(work / name, content)
        named = path / "sequential_data.txt"
    else:
        path = named = work / name
        path.write_text(content, newline="")
    with pytest.raises(DataFormatError) as caught:
        prepare_dataset(source, str(path), str(tmp_path / "out"), num_negatives=1)
    assert str(caught.value).startswith(f"{named}:{line}: field '{field}': ")
    assert (caught.value.line, caught.value.field) == (line, field)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]  # no output, no temporary folder


def test_failure_while_writing_leaves_no_temporary_folder(tmp_path):
    path = write_movielens(tmp_path, "u.data")
    with pytest.raises(ValueError, match="lower --num-negatives"):  # user 1 leaves only 5 of 10 items
        prepare_dataset("movielens", str(path), str(tmp_path / "out"), num_negatives=6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u.data"]


def test_existing_output_is_refused_without_overwrite(tmp_path):
    path = write_movielens(tmp_path, "u.data")
    out = tmp_path / "out"
    prepare_dataset("movielens", str(path), str(out), **SMALL)
    before = parquet_bytes(out)
    with pytest.raises(FileExistsError, match="--overwrite"):
        prepare_dataset("movielens", str(path), str(out), **{**SMALL, "max_history": 1})
    assert parquet_bytes(out) == before

    manifest = prepare_dataset("movielens", str(path), str(out), overwrite=True, **{**SMALL, "max_history": 1})
    assert manifest["max_history"] == 1
    assert read_split(out, manifest, "valid")[0]["history"] == [3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "u.data"]  # old copy removed

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a prepared dataset"):
        prepare_dataset("movielens", str(path), str(precious), overwrite=True, **SMALL)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_p5_keeps_file_ids_and_datamaps_originals(tmp_path):
    # lines out of id order, user 2 too short; CRLF endings and a trailing blank line are fine
    folder = write_p5(tmp_path / "p5", "3 5 6 7 1\r\n1 1 2 3 4\r\n2 5 6\r\n\r\n")
    out = tmp_path / "out"
    manifest = prepare_dataset("p5", str(folder), str(out), num_negatives=2, item_index="sequential", max_history=3)
    assert manifest["counts"] == {"users": 2, "items": 7, "interactions": 8}
    assert manifest["skipped"] == {"too_short_for_leave_one_out": 1}
    assert [i["path"] for i in manifest["inputs"]] == [str(folder / name) for name in ("sequential_data.txt",
                                                                                       "datamaps.json")]
    assert pq.read_table(out / "users.parquet").to_pydict() == {"user": [1, 2], "original": ["U1", "U3"]}
    # sequential numbering walks users in input order: user 3's line comes first
    originals = pq.read_table(out / "items.parquet").column("original").to_pylist()
    assert originals == [f"I{i}" for i in (5, 6, 7, 1, 2, 3, 4)]
    assert read_split(out, manifest, "sequences") == [{"user": 1, "items": [4, 5, 6, 7]},
                                                      {"user": 2, "items": [1, 2, 3, 4]}]
    assert [(r["history"], r["target"]) for r in read_split(out, manifest, "test")] == [([4, 5, 6], 7), ([1, 2, 3], 4)]


@pytest.mark.skipif(not (P5_BEAUTY / "sequential_data.txt").is_file(), reason=f"P5 Beauty not found at {P5_BEAUTY}")
def test_p5_beauty(tmp_path):
    started = time.perf_counter()
    out = tmp_path / "beauty"
    # neighbors=0: the user-similarity step has its own tests and would dominate the time here
    manifest = prepare_dataset("p5", str(P5_BEAUTY), str(out), item_index="sequential", neighbors=0)
    assert time.perf_counter() - started < 60
    assert manifest["counts"] == {"users": 22_363, "items": 12_101, "interactions": 198_502}
    assert manifest["skipped"] == {"too_short_for_leave_one_out": 0}
    rows = {name: split["rows"] for name, split in manifest["splits"].items()}
    assert rows == {"train": 198_502 - 3 * 22_363, "valid": 22_363, "test": 22_363, "sequences": 22_363}
    # "sequential" reproduces the file's own ids; users keep theirs
    first_line = (P5_BEAUTY / "sequential_data.txt").read_text().splitlines()[0].split()
    sequences = pq.read_table(out / manifest["splits"]["sequences"]["files"][0])
    assert sequences.slice(0, 1).to_pylist() == [{"user": 1, "items": [int(i) for i in first_line[1:]]}]
    maps = json.loads((P5_BEAUTY / "datamaps.json").read_text())
    users = pq.read_table(out / "users.parquet").to_pydict()
    assert users["original"][:3] == [maps["id2user"][str(u)] for u in (1, 2, 3)]
    test = pq.read_table(out / "test", columns=["target", "negatives"]).slice(0, 200).to_pydict()
    assert all(len(set(n)) == 99 and t not in n for t, n in zip(test["target"], test["negatives"]))


def test_default_movielens_100k(tmp_path):
    try:
        path = movielens_100k()
    except RuntimeError as exc:  # e.g. no network to fetch the RecBole wheel
        pytest.skip(f"MovieLens-100K unavailable: {exc}")
    out = tmp_path / "ml"
    manifest = prepare_dataset("movielens", None, str(out), neighbors=0)
    assert json.loads((out / "manifest.json").read_text()) == manifest
    if manifest["tokenizer"] is not None:  # the tokenizer hook wrote its file into the dataset
        assert (out / manifest["tokenizer"]).is_file()
    assert manifest["inputs"][0]["path"] == str(path.resolve())
    assert manifest["counts"] == {"users": 943, "items": 1_682, "interactions": 100_000}
    rows = {name: split["rows"] for name, split in manifest["splits"].items()}
    assert rows == {"train": 100_000 - 3 * 943, "valid": 943, "test": 943, "sequences": 943}


@pytest.mark.parametrize("exception", [KeyboardInterrupt, OSError])
def test_interrupted_write_keeps_the_old_dataset_and_leaves_no_partial_one(tmp_path, monkeypatch, exception):
    """A Ctrl-C or a full disk after some shards are written: no half-written folder anywhere, and
    with --overwrite the previous complete dataset is still there, byte for byte."""
    import peapod_scale.data.prepare.dataset as prepare_module

    path = write_movielens(tmp_path, "u.data")
    out = tmp_path / "out"
    prepare_dataset("movielens", str(path), str(out), neighbors=0, **SMALL)
    before = parquet_bytes(out)
    real_write, written = prepare_module._write_parquet, []

    def fail_on_fourth(table, target):
        if len(written) == 3:
            raise exception("interrupted mid-write")
        written.append(target)
        real_write(table, target)

    monkeypatch.setattr(prepare_module, "_write_parquet", fail_on_fourth)
    with pytest.raises(exception):
        prepare_dataset("movielens", str(path), str(out), overwrite=True, neighbors=0,
                        **{**SMALL, "max_history": 1})
    assert len(written) == 3 and all(".tmp-" in str(p) for p in written)  # it did write, elsewhere
    assert parquet_bytes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "u.data"]


def test_train_explanation_holds_exactly_the_train_rows_with_text_deterministically(tmp_path):
    reviews = [{"reviewerID": f"U{u}", "asin": f"a{(u * 5 + k) % 9}", "unixReviewTime": 100 + k,
                "reviewText": "" if (u * k) % 4 == 1 else f"Item {k} works well for me.", "summary": ""}
               for u in range(8) for k in range(7)]
    path = tmp_path / "reviews.json"
    path.write_text("".join(json.dumps(r) + "\n" for r in reviews))
    first = prepare_dataset("amazon-reviews", str(path), str(tmp_path / "a"), num_negatives=2, rows_per_shard=3,
                            neighbors=0)
    second = prepare_dataset("amazon-reviews", str(path), str(tmp_path / "b"), num_negatives=2, rows_per_shard=3,
                             neighbors=0)
    assert parquet_bytes(tmp_path / "a") == parquet_bytes(tmp_path / "b")
    train = read_split(tmp_path / "a", first, "train")
    with_text = read_split(tmp_path / "a", first, "train_explanation")
    expected = [{"user": r["user"], "target": r["target"], "explanation": r["explanation"]} for r in train if r["explanation"]]
    assert with_text == expected and 0 < len(expected) < len(train)
    assert first["splits"]["train_explanation"]["rows"] == first["task_rows"]["train"]["explanation"] == len(expected)


BOM = "\ufeff"  # what Notepad and Excel put at the start of a "UTF-8" file


@pytest.mark.parametrize("fmt", ["u.data", "ratings.dat", "ml.inter", "p5"])
def test_a_byte_order_mark_at_the_start_is_not_data(tmp_path, fmt):
    """Every text file of the MovieLens and P5 sources may start with a UTF-8 byte-order mark."""
    plain, marked = tmp_path / "plain", tmp_path / "marked"
    for folder in (plain, marked):
        folder.mkdir()
    if fmt == "p5":
        paths = [write_p5(folder, "1 1 2 3\r\n2 4 5 6\n") for folder in (plain, marked)]
        negatives = "1 4 5\n2 1 2\n"
        for folder in paths:
            (folder / "negative_samples.txt").write_text(negatives)
        for name in ("sequential_data.txt", "datamaps.json", "negative_samples.txt"):
            (marked / name).write_bytes(BOM.encode() + (marked / name).read_bytes())
    else:
        paths = [write_movielens(folder, fmt) for folder in (plain, marked)]
        paths[1].write_bytes(BOM.encode() + paths[1].read_bytes())
    options = {"num_negatives": 2} if fmt == "p5" else SMALL
    expected = prepare_dataset("p5" if fmt == "p5" else "movielens", str(paths[0]), str(tmp_path / "a"), **options)
    got = prepare_dataset("p5" if fmt == "p5" else "movielens", str(paths[1]), str(tmp_path / "b"), **options)
    assert parquet_bytes(tmp_path / "b") == parquet_bytes(tmp_path / "a")
    assert got["counts"] == expected["counts"]


def test_cli_refuses_an_existing_output_with_one_error_line(tmp_path, capsys):
    from peapod_scale import cli

    path = write_movielens(tmp_path, "u.data")
    command = ["prepare", "--source", "movielens", "--input", str(path), "--output", str(tmp_path / "out"),
               "--num-negatives", "3", "--neighbors", "0"]
    assert cli.main(command) == 0
    before = parquet_bytes(tmp_path / "out")
    capsys.readouterr()
    assert cli.main(command) == 2
    printed = capsys.readouterr()
    assert printed.err == (f"peapod-scale prepare: error: output folder {tmp_path / 'out'} already exists; pass "
                           "--overwrite to replace it (the old one is replaced only once the new one is complete) "
                           "or choose another --output\n")
    assert printed.out == ""
    assert parquet_bytes(tmp_path / "out") == before
