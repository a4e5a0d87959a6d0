import itertools
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from peapod_scale.data.shard_stream import ShardStream, TrainStream


@pytest.fixture
def shards(tmp_path):
    """Three shards of unequal size (37, 50, 73 rows) in row groups of 10; ids 0..159."""
    files, start = [], 0
    for index, rows in enumerate((37, 50, 73)):
        path = tmp_path / f"part-{index}.parquet"
        pq.write_table(pa.table({"id": list(range(start, start + rows))}), path, row_group_size=10)
        files.append(path)
        start += rows
    return files


def _ids(batches):
    return [row["id"] for batch in batches for row in batch]


def _rank_batches(files, rank, world, workers, batch=4, seed=3, epoch_batches=None, **kwargs):
    dataset = ShardStream(files, batch, rank, world, seed=seed, window_rows=20, **kwargs)
    stream = iter(TrainStream(dataset, num_workers=workers))
    return dataset, [next(stream) for _ in range(epoch_batches or dataset.micro_batches_per_epoch)]


@pytest.mark.parametrize("workers", [1, 2])
def test_every_example_once_per_epoch_and_equal_steps_per_rank(shards, workers):
    per_rank = [_rank_batches(shards, rank, 2, workers) for rank in range(2)]
    assert {dataset.micro_batches_per_epoch for dataset, _ in per_rank} == {20}  # 160 rows / (2 ranks x 4)
    ids = _ids(per_rank[0][1]) + _ids(per_rank[1][1])
    assert sorted(ids) == list(range(160))
    assert all(len(batch) == 4 for _, batches in per_rank for batch in batches)


def test_remainder_is_left_out_but_never_duplicated(shards):
    per_rank = [_rank_batches(shards, rank, 3, 1, batch=7) for rank in range(3)]
    ids = _ids(per_rank[0][1]) + _ids(per_rank[1][1]) + _ids(per_rank[2][1])
    assert len(ids) == len(set(ids)) == 7 * 3 * (160 // 21)


def test_order_is_shuffled_deterministic_and_changes_with_the_epoch(shards):
    _, two_epochs = _rank_batches(shards, 0, 1, 1, epoch_batches=80)
    first, second = _ids(two_epochs[:40]), _ids(two_epochs[40:])
    assert sorted(first) == sorted(second) == list(range(160))
    assert first != list(range(160)) and first != second
    _, again = _rank_batches(shards, 0, 1, 2, epoch_batches=40)
    assert _ids(again) == first
    _, other_seed = _rank_batches(shards, 0, 1, 1, seed=4, epoch_batches=40)
    assert _ids(other_seed) != first


@pytest.mark.parametrize("stop_at", [7, 38])  # mid-epoch, and just before an epoch boundary
def test_resume_continues_at_the_next_example_with_another_worker_count(shards, stop_at):
    _, uninterrupted = _rank_batches(shards, 1, 2, 2, epoch_batches=stop_at + 10)
    dataset = ShardStream(shards, 4, 1, 2, seed=3, window_rows=20)
    before = TrainStream(dataset, num_workers=2)
    consumed = list(itertools.islice(iter(before), stop_at))
    state = before.state_dict()

    after = TrainStream(ShardStream(shards, 4, 1, 2, seed=3, window_rows=20), num_workers=1)
    after.load_state_dict(state)
    resumed = list(itertools.islice(iter(after), 10))
    assert consumed + resumed == uninterrupted


# -- one global sequence of global batches -------------------------------------------------------------------------


def _stream(files, rank, world, batch, accum, workers=1):
    return TrainStream(ShardStream(files, batch, rank, world, seed=3, window_rows=20, grad_accum=accum),
                       num_workers=workers)


def _global_order(per_rank: list[list[list[dict]]], accum: int) -> list[list[int]]:
    """The ranks' micro-batches in the global order: micro-step a of rank r is global slice a * ranks + r."""
    world, slices = len(per_rank), []
    for step in range(len(per_rank[0]) // accum):
        for micro in range(step * accum, (step + 1) * accum):
            slices.extend([row["id"] for row in per_rank[rank][micro]] for rank in range(world))
    return slices


def _run(files, world, batch, accum, micro_batches, workers=1, state=None):
    """Every rank's next ``micro_batches``, optionally from ``state``; returns them and rank 0's state after."""
    per_rank, states = [], []
    for rank in range(world):
        stream = _stream(files, rank, world, batch, accum, workers)
        if state is not None:
            stream.load_state_dict(json.loads(json.dumps(state)))  # it travels in a checkpoint
        per_rank.append(list(itertools.islice(iter(stream), micro_batches)))
        states.append(stream.state_dict())
    assert all(s == states[0] for s in states)  # the position is the same on every rank
    return per_rank, states[0]


def test_the_same_global_batches_on_one_or_two_ranks(shards):
    one, _ = _run(shards, 1, 4, 4, 40)   # global batch 16 on 1 rank: 10 optimizer steps = one epoch
    two, _ = _run(shards, 2, 4, 2, 20)   # 16 on 2 ranks
    four, _ = _run(shards, 2, 8, 1, 10)  # 16 on 2 ranks, another micro-batch
    ids = _global_order(one, 4)
    assert _global_order(two, 2) == ids
    assert [sum(ids[i:i + 2], []) for i in range(0, 40, 2)] == _global_order(four, 1)
    assert sorted(sum(ids, [])) == list(range(160))  # 160 rows = 10 global batches of 16 exactly


@pytest.mark.parametrize("old_world, new_world, workers", [(2, 1, 1), (1, 2, 2)])
@pytest.mark.parametrize("stop_step", [3, 9])  # mid-epoch, and one step before its end
def test_resume_on_another_rank_count_neither_skips_nor_repeats(shards, old_world, new_world, workers, stop_step):
    """Global batch 24 (160 rows: 6 steps an epoch, 16 rows left out); stop after ``stop_step`` steps."""
    accum = {1: 6, 2: 3}
    uninterrupted = _global_order(_run(shards, 1, 4, 6, 6 * 12)[0], 6)  # two epochs
    before, state = _run(shards, old_world, 4, accum[old_world], stop_step * accum[old_world], workers)
    assert (state["epoch"], state["global_batches"], state["micro_step"]) == divmod(stop_step, 6) + (0,)
    rest = (12 - stop_step) * accum[new_world]
    after, _ = _run(shards, new_world, 4, accum[new_world], rest, workers, state)
    seen = _global_order(before, accum[old_world]) + _global_order(after, accum[new_world])
    assert seen == uninterrupted  # the same examples in the same global order
    for epoch in (sum(seen[:36], []), sum(seen[36:], [])):
        assert len(epoch) == len(set(epoch)) == 144


def test_a_global_batch_that_cannot_be_kept_says_what_changed_and_what_to_pass(shards):
    state = _stream(shards, 0, 2, 8, 4).state_dict()  # 64 = 8 x 4 x 2 ranks
    with pytest.raises(ValueError, match=r"global batch was 64 \(micro-batch 8 x accumulation 4 x 2 ranks\), "
                                         r"now 48 \(micro-batch 8 x accumulation 2 x 3 ranks\); 64 does not divide "
                                         r"over 3 ranks: resume on a rank count that divides it \(1, 2, 4, 8, 16, 32, 64\)$"):
        _stream(shards, 0, 3, 8, 2).load_state_dict(state)
    with pytest.raises(ValueError, match=r"now 32 .*1 rank\); to keep 64 on 1 rank pass --micro-batch-size 8 "
                                         "--grad-accum 8"):
        _stream(shards, 0, 1, 8, 4).load_state_dict(state)
    _stream(shards, 0, 1, 8, 8).load_state_dict(state)  # what the message says works


def test_resume_refuses_another_seed_shuffle_buffer_or_shards(shards, tmp_path):
    state = _stream(shards, 0, 2, 4, 1).state_dict()
    with pytest.raises(ValueError, match="seed was 3, now 4; resume with the same --seed"):
        TrainStream(ShardStream(shards, 4, 0, 2, seed=4, window_rows=20)).load_state_dict(state)
    with pytest.raises(ValueError, match="shuffle_buffer was 20, now 30; resume with the same --shuffle-buffer"):
        TrainStream(ShardStream(shards, 4, 0, 2, seed=3, window_rows=30)).load_state_dict(state)
    with pytest.raises(ValueError, match="files was .*--data"):
        TrainStream(ShardStream(shards[:2], 4, 0, 2, seed=3, window_rows=20)).load_state_dict(state)


def test_a_position_inside_an_optimizer_step_resumes_only_on_the_same_layout(shards):
    stream = _stream(shards, 0, 2, 4, 2)
    list(itertools.islice(iter(stream), 3))
    state = stream.state_dict()
    assert (state["global_batches"], state["micro_step"]) == (1, 1)
    with pytest.raises(ValueError, match=r"inside an optimizer step \(micro-step 1 of 2\)"):
        _stream(shards, 0, 1, 4, 4).load_state_dict(state)
    _stream(shards, 0, 2, 4, 2).load_state_dict(state)


def test_a_per_rank_state_from_before_the_global_stream_is_refused(shards):
    old = {"epoch": 0, "batches_in_epoch": 5, "seed": 3, "batch_size": 4, "world_size": 2}  # the old state_dict()
    with pytest.raises(ValueError, match="per-rank position .*2 ranks.* refused"):
        _stream(shards, 0, 2, 4, 1).load_state_dict(old)


def test_a_batch_larger_than_the_data_is_explained(shards):
    with pytest.raises(ValueError, match=r"global batch of 200 \(micro-batch 100 x accumulation 1 x 2 ranks\).*"
                                         "micro-batch-size"):
        ShardStream(shards, 100, 0, 2)
