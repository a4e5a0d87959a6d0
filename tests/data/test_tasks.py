"""Task-alternated batches built in the loader workers: weights, schedule, order, resume, explanation rows."""

import itertools
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from peapod_scale.data import templates
from peapod_scale.data.batches import TaskBatcher, sample_negatives
from peapod_scale.data.dataset import read_manifest, task_stream
from peapod_scale.data.prepare.dataset import prepare_dataset
from peapod_scale.data.tasks import TaskSchedule, parse_task_weights
from peapod_scale.data.tokenizer import MAX_WHOLE_WORDS, load_codec

ALL = ["sequential", "topn", "explanation"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """12 users x 10 reviews over 15 items; every third review has no usable text (explanation "")."""
    root = tmp_path_factory.mktemp("tasks")
    lines = []
    for user in range(12):
        for k in range(10):
            text = "" if (user + k) % 3 == 0 else f"This item number {k} is very good for me."
            lines.append(json.dumps({"reviewerID": f"U{user}", "asin": f"a{(user * 3 + k) % 15}",
                                     "unixReviewTime": 1000 + k, "overall": 5.0, "reviewText": text, "summary": ""}))
    (root / "reviews.json").write_text("\n".join(lines) + "\n")
    prepare_dataset("amazon-reviews", str(root / "reviews.json"), str(root / "ds"), seed=0, num_negatives=5,
                    neighbors=0)
    return root / "ds"


def _stream(dataset, rank=0, world=2, workers=0, weights=None, batch=4, accum=1, seed=3):
    manifest = read_manifest(dataset)
    batcher = TaskBatcher(load_codec(dataset), manifest["counts"]["items"], topn_candidates=4, seed=seed)
    weights = weights or dict.fromkeys(ALL, 1.0)
    return task_stream(dataset, manifest, weights, batcher, batch, rank, world, seed, shuffle_buffer=16,
                       num_workers=workers, grad_accum=accum)


def _take(stream, n):
    return list(itertools.islice(iter(stream), n))


def _same(a, b):
    return len(a) == len(b) and all(ta == tb and ba.keys() == bb.keys() and all(torch.equal(ba[k], bb[k]) for k in ba)
                                    for (ta, ba), (tb, bb) in zip(a, b))


# -- options ---------------------------------------------------------------------------------------------------


def test_weights_parse_in_task_order_and_default_to_equal_over_tasks():
    assert parse_task_weights("sequential,topn", None, ALL) == {"sequential": 1.0, "topn": 1.0}
    weights = parse_task_weights("sequential,topn", "explanation=0.5, topn=1,sequential=2", ALL, tasks_is_default=True)
    assert list(weights.items()) == [("sequential", 2.0), ("topn", 1.0), ("explanation", 0.5)]
    assert parse_task_weights("sequential,topn", "sequential=1,topn=0", ALL, tasks_is_default=True) == {"sequential": 1.0}


@pytest.mark.parametrize("tasks, weights, message", [
    ("sequential,rating", None, "--tasks sequential,rating: unknown task 'rating'"),
    ("sequential,topn", "sequential=1,review=1", "--task-weights sequential=1,review=1: unknown task 'review'"),
    ("sequential,topn", "sequential=-1,topn=1", "weight of 'sequential' is negative"),
    ("sequential,topn", "sequential=0,topn=0", "sum to 0"),
    ("sequential,topn", "sequential,topn=1", "'sequential' is not TASK=WEIGHT"),
    ("sequential,topn", "sequential=abc", "'sequential=abc' is not TASK=WEIGHT"),
    ("sequential,topn", "sequential=1,sequential=2", "named twice"),
    ("sequential,explanation", None, "--tasks sequential,explanation: data/ml does not support explanation"),
    ("sequential,topn", "topn=1,explanation=1", "--task-weights topn=1,explanation=1: data/ml does not support"),
])
def test_bad_task_options_name_the_option_and_value(tasks, weights, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parse_task_weights(tasks, weights, ["sequential", "topn"], data="data/ml", tasks_is_default=True)


def test_explicit_tasks_must_agree_with_task_weights():
    with pytest.raises(ValueError, match="--tasks sequential and --task-weights topn=1 name different tasks"):
        parse_task_weights("sequential", "topn=1", ALL, tasks_is_default=False)


# -- schedule ----------------------------------------------------------------------------------------------------


def test_schedule_is_a_pure_function_of_seed_and_step_that_follows_the_weights():
    weights = {"sequential": 2.0, "topn": 1.0, "explanation": 1.0}
    one, other = TaskSchedule(weights, seed=5), TaskSchedule(weights, seed=5)
    tasks = [one.task(step) for step in range(2000)]
    assert tasks == [other.task(step) for step in reversed(range(2000))][::-1]
    counts = {task: tasks.count(task) for task in weights}
    assert abs(counts["sequential"] - 1000) <= 3 and abs(counts["topn"] - 500) <= 3
    for start in range(0, 2000, 20):  # every logging window of 20 steps sees every task
        assert set(tasks[start:start + 20]) == set(weights)
    assert [TaskSchedule(weights, seed=6).task(s) for s in range(2000)] != tasks


# -- the stream ----------------------------------------------------------------------------------------------------


def test_batches_are_tokenized_in_workers_and_independent_of_the_worker_count(dataset):
    in_process = _take(_stream(dataset, workers=0), 12)
    assert _same(in_process, _take(_stream(dataset, workers=2), 12))
    assert _same(in_process, _take(_stream(dataset, workers=1), 12))
    assert {task for task, _ in in_process} == set(ALL)
    for task, batch in in_process:
        assert set(batch) == {"input_ids", "attention_mask", "whole_word_ids", "user_ids", "task_ids", "labels"}
        assert batch["input_ids"].shape[0] == 4 and (batch["task_ids"] == ALL.index(task)).all()


def test_all_micro_steps_of_one_optimizer_step_share_its_task_on_every_rank(dataset):
    ranks = [[task for task, _ in _take(_stream(dataset, rank=rank, accum=3), 30)] for rank in range(2)]
    assert ranks[0] == ranks[1]
    steps = [ranks[0][i:i + 3] for i in range(0, 30, 3)]
    assert all(len(set(step)) == 1 for step in steps) and len({step[0] for step in steps}) > 1


def test_explanation_batches_hold_only_rows_with_text_and_ranks_split_them(dataset):
    manifest, codec = read_manifest(dataset), load_codec(dataset)
    rows = manifest["splits"]["train_explanation"]["rows"]
    assert rows == manifest["task_rows"]["train"]["explanation"] < manifest["splits"]["train"]["rows"]
    table = pq.read_table(dataset / manifest["splits"]["train_explanation"]["files"][0])
    with_text = {templates.explanation_prompt(u, t) for u, t in zip(table["user"].to_pylist(), table["target"].to_pylist())}
    per_epoch, prompts = rows // (2 * 4), []
    for rank in range(2):
        stream = _stream(dataset, rank=rank, weights={"explanation": 1.0})
        batches = _take(stream, per_epoch)
        assert stream.state_dict()["sources"] == {"train_explanation": {"epoch": 1, "global_batch": 0}}
        for _, batch in batches:
            assert ((batch["labels"] != -100).sum(1) > 1).all()  # some text before </s>
        prompts.append({text for _, b in batches for text in codec.decode(b["input_ids"].tolist())})
    assert len(prompts[0]) == len(prompts[1]) == per_epoch * 4 and not prompts[0] & prompts[1]
    assert prompts[0] | prompts[1] <= with_text


@pytest.mark.parametrize("stop_at, accum", [(5, 1), (23, 1), (7, 2)])  # mid-epoch, after the train source wrapped
def test_resume_continues_at_the_next_batch_with_another_worker_count(dataset, stop_at, accum):  # (7, 2): mid-step
    uninterrupted = _take(_stream(dataset, rank=1, workers=2, accum=accum), stop_at + 6)
    before = _stream(dataset, rank=1, workers=2, accum=accum)
    consumed = _take(before, stop_at)
    state = before.state_dict()
    assert (state["micro_batches"], state["global_steps"], state["micro_step"]) == (stop_at, *divmod(stop_at, accum))
    after = _stream(dataset, rank=1, workers=1, accum=accum)
    after.load_state_dict(json.loads(json.dumps(state)))  # it travels in a checkpoint
    assert _same(consumed + _take(after, 6), uninterrupted)


def _global_order(per_rank, accum):
    """The ranks' micro-batches in the global order: micro-step a of rank r is global slice a * ranks + r."""
    world = len(per_rank)
    return [per_rank[rank][step * accum + micro] for step in range(len(per_rank[0]) // accum)
            for micro in range(accum) for rank in range(world)]


def _ranks_run(dataset, world, accum, steps, workers, state=None):
    per_rank, states = [], []
    for rank in range(world):
        stream = _stream(dataset, rank=rank, world=world, workers=workers, batch=2, accum=accum)
        if state is not None:
            stream.load_state_dict(json.loads(json.dumps(state)))
        per_rank.append(_take(stream, steps * accum))
        states.append(stream.state_dict())
    assert all(other == states[0] for other in states)
    return _global_order(per_rank, accum), states[0]


@pytest.mark.parametrize("old_world, new_world, workers", [(2, 1, 2), (1, 2, 1)])
def test_resume_on_another_rank_count_continues_the_global_sequence(dataset, old_world, new_world, workers):
    """Global batch 8 (micro-batch 2 x accumulation 4 / 1 rank or 2 / 2 ranks), all three tasks: stopped at
    step 5 and resumed on the other rank count, every global step holds the uninterrupted run's batches."""
    accum, total = {1: 4, 2: 2}, 24
    uninterrupted, end = _ranks_run(dataset, 1, 4, total, 1)
    assert end["sources"]["train"]["epoch"] >= 1 and end["sources"]["train_explanation"]["epoch"] >= 1
    assert _same(_ranks_run(dataset, 2, 2, total, 1)[0], uninterrupted)  # the same global batches on 2 ranks
    before, state = _ranks_run(dataset, old_world, accum[old_world], 5, workers)
    assert (state["global_steps"], state["micro_step"], state["global_batch_size"]) == (5, 0, 8)
    after, _ = _ranks_run(dataset, new_world, accum[new_world], total - 5, workers, state)
    assert _same(before + after, uninterrupted)
    # and across the stop the first epoch of the train rows has each row once: 84 rows = 10 global batches + 4 left out
    manifest, codec = read_manifest(dataset), load_codec(dataset)
    table = pq.read_table(dataset / manifest["splits"]["train"]["files"][0])
    train_rows = set(zip(table["user"].to_pylist(), table["target"].to_pylist()))
    resumed = before + after
    steps = [resumed[i:i + 4] for i in range(0, len(resumed), 4)]  # 4 micro-batches of 2 rows per global step
    train_steps = [step for step in steps if step[0][0] != "explanation"]
    seen = [(user, int(label)) for step in train_steps[:10] for _, batch in step
            for user, label in zip(batch["user_ids"].tolist(), codec.decode(batch["labels"].clamp(min=0).tolist()))]
    assert len(seen) == len(set(seen)) == 80 and set(seen) <= train_rows


def test_a_global_batch_that_cannot_be_kept_is_refused(dataset):
    state = _stream(dataset, world=2, batch=2, accum=2).state_dict()
    with pytest.raises(ValueError, match="global batch was 8 .* now 12 .*3 ranks"):
        _stream(dataset, world=3, batch=2, accum=2).load_state_dict(state)


def test_a_per_rank_state_from_before_the_global_stream_is_refused(dataset):
    old = {"micro_batches": 6, "sources": {"train": {"epoch": 0, "batch": 4}, "train_explanation": {"epoch": 0, "batch": 2}},
           "seed": 3, "batch_size": 4, "world_size": 2, "task_weights": dict.fromkeys(ALL, 1.0), "grad_accum": 1}
    with pytest.raises(ValueError, match="per-rank position .* refused"):
        _stream(dataset).load_state_dict(old)


def test_resume_refuses_other_weights(dataset):
    state = _stream(dataset).state_dict()
    with pytest.raises(ValueError, match="task_weights"):
        _stream(dataset, weights={"sequential": 1.0, "topn": 2.0, "explanation": 1.0}).load_state_dict(state)


def test_a_dataset_without_the_explanation_split_is_explained(dataset, tmp_path):
    manifest = read_manifest(dataset)
    del manifest["splits"]["train_explanation"]
    batcher = TaskBatcher(load_codec(dataset), manifest["counts"]["items"])
    with pytest.raises(ValueError, match="no 'train_explanation' split.*prepare"):
        task_stream(dataset, manifest, {"explanation": 1.0}, batcher, 4, 0, 1, 0)


# -- the pieces the workers run ------------------------------------------------------------------------------------


def _reference_encode(codec, texts, max_length=None):
    """The per-row implementation the vectorised one replaced."""
    rows, words = [], []
    for encoding in codec.tokenizer.encode_batch(list(texts), add_special_tokens=False):
        ids = encoding.ids
        word_ids = [0 if w is None else min(w + 1, MAX_WHOLE_WORDS - 1) for w in encoding.word_ids]
        if max_length is not None and len(ids) > max_length - 1:
            ids, word_ids = ids[: max_length - 1], word_ids[: max_length - 1]
        rows.append(ids + [codec.eos_id])
        words.append(word_ids + [0])
    width = max(len(r) for r in rows)
    pad = lambda lists, value: torch.tensor([x + [value] * (width - len(x)) for x in lists])  # noqa: E731
    return {"input_ids": pad(rows, codec.pad_id), "attention_mask": pad([[1] * len(r) for r in rows], 0),
            "whole_word_ids": pad(words, 0)}


@pytest.mark.parametrize("max_length", [None, 6, 512])
def test_batch_encoding_matches_the_per_row_reference(dataset, max_length):
    codec = load_codec(dataset)
    texts = ["user_3 interacted with items 1 , 2 , 3 . Which item comes next ?", "", "Which item",
             "héllo wörld ∑ user_3 , , 12", "x " * 600]
    encoded, reference = codec.encode(texts, max_length=max_length), _reference_encode(codec, texts, max_length)
    for key in reference:
        assert torch.equal(encoded[key], reference[key]), key


def test_sampled_negatives_are_distinct_unseen_items():
    rng = np.random.default_rng(0)
    seen = np.array([[1, 2, 3, 0], [4, 5, 0, 0], [1, 2, 3, 4]])
    negatives = sample_negatives(seen, num_items=7, count=3, rng=rng)
    for row, items in zip(seen, negatives):
        assert len(items) == 3 and len(set(items)) == 3 and not set(items) & set(row.tolist())
        assert all(1 <= i <= 7 for i in items)
    crowded = sample_negatives(np.array([[1, 2, 3, 4, 5]]), num_items=7, count=3, rng=rng)
    assert sorted(crowded[0]) == [6, 7]  # only two unseen items exist


def _prompts(batcher, columns):
    return [text for task in ALL for text in batcher._sources(columns, task, 0)] + ["", "Which item"]


def _rows(dataset):
    manifest = read_manifest(dataset)
    return manifest, pq.read_table(dataset / manifest["splits"]["train_explanation"]["files"][0]).to_pydict()


def test_word_cache_gives_what_the_tokenizer_gives(dataset):
    manifest, table = _rows(dataset)
    columns = {**table, "history": [[1, 2, 3 + i % 5] for i in range(len(table["user"]))]}
    codec = load_codec(dataset)
    texts = _prompts(TaskBatcher(codec, manifest["counts"]["items"], topn_candidates=4), columns)
    for _ in range(2):  # the first call checks the cache against the tokenizer, the second uses it
        cached, plain = codec.encode(texts, max_length=24, cache_words=True), codec.encode(texts, max_length=24)
        assert all(torch.equal(cached[key], plain[key]) for key in plain)
    assert codec._words_are_local is True


def test_word_cache_switches_off_for_a_tokenizer_that_splits_inside_words(dataset):
    from tokenizers import pre_tokenizers

    manifest, table = _rows(dataset)
    columns = {**table, "history": [[11, 12] for _ in table["user"]]}
    codec = load_codec(dataset)
    codec.tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(),
                                                             pre_tokenizers.Digits(individual_digits=True)])
    texts = _prompts(TaskBatcher(codec, manifest["counts"]["items"], topn_candidates=4), columns)
    for _ in range(2):
        cached, plain = codec.encode(texts, cache_words=True), codec.encode(texts)
        assert all(torch.equal(cached[key], plain[key]) for key in plain)
    assert codec._words_are_local is False
