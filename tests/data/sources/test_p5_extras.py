"""P5 extras: negative_samples.txt replaces sampling; exp_splits.pkl (restricted unpickling) adds explanations."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from peapod_scale.data.errors import DataFormatError
from peapod_scale.data.prepare.dataset import prepare_dataset
from peapod_scale.data.sources.p5_extras import RestrictedUnpickler

FAST = {"item_index": "sequential", "max_history": 5, "neighbors": 0}
SEQUENCES = "1 1 2 3 4\n2 5 6 7\n3 1 5\n"  # user 3 is too short for leave-one-out


def write_p5(folder: Path, negatives: str | None = None, explanations=None, sequences: str = SEQUENCES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sequential_data.txt").write_text(sequences)
    maps = {"id2user": {str(u): f"U{u}" for u in range(1, 4)}, "id2item": {str(i): f"I{i}" for i in range(1, 10)}}
    (folder / "datamaps.json").write_text(json.dumps(maps))
    if negatives is not None:
        (folder / "negative_samples.txt").write_text(negatives)
    if explanations is not None:
        (folder / "exp_splits.pkl").write_bytes(pickle.dumps(explanations))
    return folder


def test_negatives_file_replaces_sampling(tmp_path):
    folder = write_p5(tmp_path / "p5", negatives="2 1 2 3\n1 5 6 7\n3 2 3 4\n")
    out = tmp_path / "out"
    manifest = prepare_dataset("p5", str(folder), str(out), num_negatives=2, **FAST)
    # sequential numbering: I1..I4 -> 1..4, I5..I7 -> 5..7 (items 8, 9 are in no sequence)
    test = pq.read_table(out / "test").to_pylist()
    assert [(r["user"], r["negatives"]) for r in test] == [(1, [5, 6]), (2, [1, 2])]
    assert [r["negatives"] for r in pq.read_table(out / "valid").to_pylist()] == [[5, 6], [1, 2]]
    assert str(folder / "negative_samples.txt") in [i["path"] for i in manifest["inputs"]]
    with pytest.raises(ValueError, match="fewer than --num-negatives=4"):
        prepare_dataset("p5", str(folder), str(tmp_path / "out2"), num_negatives=4, **FAST)


NEGATIVE_ERRORS = [  # (negative_samples.txt, line, field)
    ("1 5 4\n2 1 2\n3 2 3\n", 1, "negative"),  # user 1 interacted with item 4
    ("1 5 6\n2 1 x\n3 2 3\n", 2, "negative"),
    ("1 5 6\n1 7 8\n", 2, "user"),  # duplicate user line
    ("1 5 6\n2 1\n3 2 3\n", 2, "negative"),  # ragged
    ("1 5 5\n2 1 2\n3 2 3\n", 1, "negative"),  # listed twice
    ("1 5 6\n2 1 2\n", 1, "user"),  # user 3 has no line
    ("", 1, "user"),  # empty file
]


@pytest.mark.parametrize("negatives, line, field", NEGATIVE_ERRORS)
def test_bad_negatives_name_file_line_field(tmp_path, negatives, line, field):
    folder = write_p5(tmp_path / "p5", negatives=negatives)
    with pytest.raises(DataFormatError) as caught:
        prepare_dataset("p5", str(folder), str(tmp_path / "out"), num_negatives=1, **FAST)
    assert (caught.value.path, caught.value.line, caught.value.field) == (
        str(folder / "negative_samples.txt"), line, field)
    assert not (tmp_path / "out").exists()


def test_explanations_attach_to_their_interactions_and_count_unmatched(tmp_path):
    explanations = {
        "train": [{"reviewerID": "U1", "asin": "I2", "explanation": "Smells  great", "feature": "smell"}],
        "val": [{"reviewerID": "U1", "asin": "I3", "explanation": "Too sticky"},
                {"reviewerID": "U2", "asin": "I9", "explanation": "never bought"}],  # no such interaction
        "test": [{"reviewerID": "U2", "asin": "I7", "explanation": "Lasts all day"}],
    }
    folder = write_p5(tmp_path / "p5", explanations=explanations)
    out = tmp_path / "out"
    manifest = prepare_dataset("p5", str(folder), str(out), num_negatives=1, **FAST)
    assert manifest["tasks"] == ["sequential", "topn", "explanation"]
    assert manifest["skipped"] == {"too_short_for_leave_one_out": 1, "explanations_without_interaction": 1}
    train = pq.read_table(out / "train").to_pylist()
    assert [(r["user"], r["target"], r["explanation"]) for r in train] == [(1, 2, "Smells great")]
    assert pq.read_table(out / "valid").column("explanation").to_pylist() == ["Too sticky", ""]
    assert pq.read_table(out / "test").column("explanation").to_pylist() == ["", "Lasts all day"]
    assert manifest["task_rows"]["test"]["explanation"] == 1


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_pickle_with_a_global_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = write_p5(tmp_path / "p5", explanations={"train": [Evil()]})
    with pytest.raises(DataFormatError) as caught:
        prepare_dataset("p5", str(folder), str(tmp_path / "out"), num_negatives=1, **FAST)
    assert caught.value.path == str(folder / "exp_splits.pkl") and caught.value.field == "pickle"
    assert "refusing global" in str(caught.value) and "system" in str(caught.value)
    assert not (tmp_path / "pwned.txt").exists()
    assert not (tmp_path / "out").exists()


def test_restricted_unpickler_loads_plain_containers():
    import io
    data = {"train": [{"a": 1, "b": 2.5, "c": None, "d": (True, b"x")}], "val": [], "test": []}
    assert RestrictedUnpickler(io.BytesIO(pickle.dumps(data))).load() == data


@pytest.mark.parametrize("explanations, field", [
    ([1, 2], "pickle"),
    ({"train": [{"reviewerID": "U1", "asin": "I2"}]}, "explanation"),
    ({"train": "oops"}, "train"),
])
def test_malformed_explanations(tmp_path, explanations, field):
    folder = write_p5(tmp_path / "p5", explanations=explanations)
    with pytest.raises(DataFormatError) as caught:
        prepare_dataset("p5", str(folder), str(tmp_path / "out"), num_negatives=1, **FAST)
    assert caught.value.field == field


def test_truncated_pickle(tmp_path):
    folder = write_p5(tmp_path / "p5", explanations={"train": [{"reviewerID": "U1", "asin": "I2",
                                                                "explanation": "x" * 100}]})
    data = (folder / "exp_splits.pkl").read_bytes()
    (folder / "exp_splits.pkl").write_bytes(data[:20])
    with pytest.raises(DataFormatError, match="truncated"):
        prepare_dataset("p5", str(folder), str(tmp_path / "out"), num_negatives=1, **FAST)
