"""A resumable training stream over Parquet shards, split by rank and by loader worker.

Why not ``datasets``' streaming shuffle: its shuffle buffer is not part of ``state_dict()``, so a
restart cannot resume at the exact next example, and a shuffled pass sleeps 5 s at its end. Here the
order of an epoch is a pure function of ``(seed, epoch)``:

1. the row groups of all shards are cut into windows of about ``window_rows`` rows;
2. the windows are permuted, then the rows inside each window (seeded by seed, epoch and window);
3. the permuted order is cut into ``world_size`` equal contiguous ranges, one per rank, each a whole
   number of batches, so every rank runs the same number of steps whatever the shard sizes (the
   remainder, fewer than ``world_size * batch_size`` rows, is left out of that epoch only: the next
   epoch's permutation leaves out others);
4. batch ``b`` of a rank is built by loader worker ``(b - start) % num_workers``; PyTorch's loader
   takes batches from its workers round-robin, so the batch order does not depend on the worker count.

The position is therefore just ``(epoch, batches consumed)``: ``load_state_dict`` on a new stream,
with the same or another number of workers, continues at exactly the next example. Memory is one
window per worker, whatever the dataset size.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow.parquet as pq
from torch.utils.data import DataLoader, IterableDataset, get_worker_info


@dataclass(frozen=True)
class _Window:
    """Consecutive row groups of one file, read together and shuffled together."""

    path: str
    row_groups: tuple[int, ...]
    rows: int


def _windows(files: Sequence[str | Path], window_rows: int) -> list[_Window]:
    windows: list[_Window] = []
    for path in files:
        metadata = pq.ParquetFile(path).metadata
        group: list[int] = []
        rows = 0
        for index in range(metadata.num_row_groups):
            group.append(index)
            rows += metadata.row_group(index).num_rows
            if rows >= window_rows:
                windows.append(_Window(str(path), tuple(group), rows))
                group, rows = [], 0
        if rows:
            windows.append(_Window(str(path), tuple(group), rows))
    return windows


class EpochOrder:
    """Where the k-th example of an epoch lives: (window, row inside the window's raw order)."""

    def __init__(self, windows: Sequence[_Window], seed: int, epoch: int):
        self.windows, self.seed, self.epoch = windows, seed, epoch
        self.order = np.random.default_rng([seed, epoch]).permutation(len(windows))
        self.starts = np.concatenate([[0], np.cumsum([windows[w].rows for w in self.order])])

    def locate(self, position: int) -> tuple[int, int]:
        """(window, index into that window's row permutation) of the example at ``position``."""
        slot = bisect.bisect_right(self.starts, position) - 1
        return int(self.order[slot]), int(position - self.starts[slot])

    def permutation(self, window: int) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch, window]).permutation(self.windows[window].rows)


class ShardStream(IterableDataset):
    """One epoch of this rank's batches (lists of row dicts); see the module docstring."""

    def __init__(self, files: Sequence[str | Path], batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, window_rows: int = 65_536, columns: Sequence[str] | None = None):
        if not files:
            raise ValueError("no Parquet shards to stream")
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size (got {batch_size}, {rank}, {world_size})")
        self.windows = _windows(files, window_rows)
        self.total_rows = sum(w.rows for w in self.windows)
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.columns = list(columns) if columns else None
        self.steps_per_epoch = self.total_rows // (world_size * batch_size)
        if self.steps_per_epoch == 0:
            raise ValueError(f"{self.total_rows} training rows cannot fill one batch of {batch_size} on each of "
                             f"{world_size} ranks; lower --micro-batch-size")
        self.epoch, self.start_batch = 0, 0

    def _read(self, window: int) -> list[dict]:
        spec = self.windows[window]
        table = pq.ParquetFile(spec.path).read_row_groups(list(spec.row_groups), columns=self.columns)
        return table.to_pylist()

    def __iter__(self) -> Iterator[list[dict]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        order = EpochOrder(self.windows, self.seed, self.epoch)
        first = self.rank * self.steps_per_epoch * self.batch_size
        cached_window, cached_rows, permutation = -1, [], np.empty(0, dtype=np.int64)
        for batch in range(self.start_batch, self.steps_per_epoch):
            if (batch - self.start_batch) % workers != worker:
                continue
            rows = []
            for position in range(first + batch * self.batch_size, first + (batch + 1) * self.batch_size):
                window, index = order.locate(position)
                if window != cached_window:
                    cached_window, cached_rows, permutation = window, self._read(window), order.permutation(window)
                rows.append(cached_rows[permutation[index]])
            yield rows


def _batch_as_is(batch: list[dict]) -> list[dict]:
    return batch


class TrainStream:
    """Endless batches over epochs with a position that survives restarts: ``state_dict()``."""

    def __init__(self, dataset: ShardStream, num_workers: int = 1):
        self.dataset, self.num_workers = dataset, num_workers
        self.epoch, self.batches_in_epoch = 0, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch, "seed": self.dataset.seed,
                "batch_size": self.dataset.batch_size, "world_size": self.dataset.world_size}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        for key in ("seed", "batch_size", "world_size"):
            if state[key] != mine[key]:
                raise ValueError(f"cannot resume the data stream: {key} was {state[key]}, now {mine[key]}")
        self.epoch, self.batches_in_epoch = state["epoch"], state["batches_in_epoch"]

    def __iter__(self) -> Iterator[list[dict]]:
        while True:
            self.dataset.epoch, self.dataset.start_batch = self.epoch, self.batches_in_epoch
            loader = DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers,
                                collate_fn=_batch_as_is)
            for batch in loader:
                self.batches_in_epoch += 1
                yield batch
            self.epoch, self.batches_in_epoch = self.epoch + 1, 0
