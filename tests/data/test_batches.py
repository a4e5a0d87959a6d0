"""TaskBatcher never cuts a prompt silently: without a limit every candidate reaches the encoder; with
one, cut rows are counted and a warning says so."""

import warnings

import pytest

from peapod_scale.data.batches import TaskBatcher, evaluation_candidates
from peapod_scale.data.templates import topn_prompt

from helpers import prepare_small

ITEMS = 5000


@pytest.fixture(scope="module")
def long_rows(tmp_path_factory):
    """Top-N rows with 300 candidates out of 5,000 items: ~1,000 tokens with this dataset's vocabulary."""
    _, _, codec = prepare_small(tmp_path_factory.mktemp("long"), users=12)
    rows = [{"user": u, "history": [1], "target": 7 * u, "negatives": list(range(11 * u, 11 * u + 299 * 13, 13))}
            for u in (1, 2, 3)]
    return codec, rows


def test_long_topn_prompts_reach_the_encoder_whole(long_rows):
    codec, rows = long_rows
    batcher = TaskBatcher(codec, ITEMS, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batch = batcher(rows, "topn", with_labels=False)
    whole = codec.encode([topn_prompt(r["user"], evaluation_candidates(r, 1)) for r in rows])
    assert batch["input_ids"].shape[1] > 512  # longer than the limit the batcher used to cut at
    assert batch["input_ids"].tolist() == whole["input_ids"].tolist()
    for row, text in zip(rows, codec.decode(batch["input_ids"].tolist())):
        assert [int(w) for w in text.split("?")[-1].replace(",", " ").split()] == evaluation_candidates(row, 1)
    assert batcher.cut_rows == {}


def test_a_limit_cuts_with_a_warning_and_counts_the_rows(long_rows):
    codec, rows = long_rows
    batcher = TaskBatcher(codec, ITEMS, max_source_length=200)
    with pytest.warns(UserWarning, match=r"3 of 3 topn prompts of a batch were cut from up to \d+ to max_source_length "
                                         r"200 tokens.*last candidates"):
        batch = batcher(rows, "topn", with_labels=False)
    assert batch["input_ids"].shape[1] == 200 and (batch["input_ids"][:, -1] == codec.eos_id).all()
    short = [{**rows[0], "negatives": rows[0]["negatives"][:3]}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning per task; the count goes on
        batcher(rows[:2] + short, "topn", with_labels=False)
    assert batcher.cut_rows == {"topn": 5}
    assert batcher(short, "topn", with_labels=False)["input_ids"].shape[1] < 200  # a short prompt is left alone
    assert batcher.cut_rows == {"topn": 5}


def test_topn_history_shows_the_last_items_in_training_and_evaluation_prompts(long_rows):
    codec, rows = long_rows
    history = [5, 9, 13, 17]
    evaluation_row = {**rows[0], "history": history, "negatives": rows[0]["negatives"][:9]}
    training_row = {key: evaluation_row[key] for key in ("user", "history", "target")}
    batcher = TaskBatcher(codec, ITEMS, topn_candidates=10, seed=1, topn_history=3)
    for row in (evaluation_row, training_row):
        prompt = batcher.sources([row], "topn")[0]
        assert prompt.startswith(f"user_{row['user']} interacted with items 9 13 17 . Which of these")
        assert len(prompt.split("?")[-1].split()) == 10  # the candidates are still all there
    plain = TaskBatcher(codec, ITEMS, topn_candidates=10, seed=1).sources([evaluation_row], "topn")[0]
    assert plain == topn_prompt(rows[0]["user"], evaluation_candidates(evaluation_row, 1))  # 0: POD's prompt
    with pytest.raises(ValueError, match="topn_history -1"):
        TaskBatcher(codec, ITEMS, topn_history=-1)
