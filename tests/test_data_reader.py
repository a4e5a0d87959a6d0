import itertools

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from peapod_scale.data.reader import ShardStream, TrainStream


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
    return dataset, [next(stream) for _ in range(epoch_batches or dataset.steps_per_epoch)]


@pytest.mark.parametrize("workers", [1, 2])
def test_every_example_once_per_epoch_and_equal_steps_per_rank(shards, workers):
    per_rank = [_rank_batches(shards, rank, 2, workers) for rank in range(2)]
    assert {dataset.steps_per_epoch for dataset, _ in per_rank} == {20}  # 160 rows / (2 ranks x 4)
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


def test_resume_refuses_a_different_layout(shards):
    state = TrainStream(ShardStream(shards, 4, 0, 2)).state_dict()
    with pytest.raises(ValueError, match="world_size"):
        TrainStream(ShardStream(shards, 4, 0, 4)).load_state_dict(state)


def test_a_batch_larger_than_the_data_is_explained(shards):
    with pytest.raises(ValueError, match="micro-batch-size"):
        ShardStream(shards, 100, 0, 2)
