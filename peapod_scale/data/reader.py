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

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
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

    def permutation(self, window: int) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch, window]).permutation(self.windows[window].rows)


class ShardStream(IterableDataset):
    """One epoch of this rank's batches (lists of row dicts); see the module docstring.

    ``read_batch(epoch, batch)`` gives any batch of this rank as an Arrow table, keeping the last
    window read (one window in memory), so several task streams can draw from it in any order.
    """

    def __init__(self, files: Sequence[str | Path], batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, window_rows: int = 65_536, columns: Sequence[str] | None = None,
                 name: str = "training"):
        if not files:
            raise ValueError(f"no Parquet shards to stream for the {name} rows")
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size (got {batch_size}, {rank}, {world_size})")
        self.windows = _windows(files, window_rows)
        self.total_rows = sum(w.rows for w in self.windows)
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.columns = list(columns) if columns else None
        self.steps_per_epoch = self.total_rows // (world_size * batch_size)
        if self.steps_per_epoch == 0:
            raise ValueError(f"{self.total_rows} {name} rows cannot fill one batch of {batch_size} on each of "
                             f"{world_size} ranks; lower --micro-batch-size")
        self.epoch, self.start_batch = 0, 0
        self._order: EpochOrder | None = None
        self._window, self._table, self._permutation = -1, None, np.empty(0, dtype=np.int64)

    def __getstate__(self) -> dict:  # loader workers start with an empty cache
        return {**self.__dict__, "_order": None, "_window": -1, "_table": None}

    def _read(self, window: int) -> pa.Table:
        spec = self.windows[window]
        return pq.ParquetFile(spec.path).read_row_groups(list(spec.row_groups), columns=self.columns)

    def read_batch(self, epoch: int, batch: int) -> pa.Table:
        """Batch ``batch`` (0 <= batch < steps_per_epoch) of this rank in epoch ``epoch``."""
        if self._order is None or self._order.epoch != epoch:
            self._order = EpochOrder(self.windows, self.seed, epoch)
            self._window = -1
        order = self._order
        first = (self.rank * self.steps_per_epoch + batch) * self.batch_size
        positions = np.arange(first, first + self.batch_size)
        slots = np.searchsorted(order.starts, positions, side="right") - 1
        parts = []
        for slot in np.unique(slots):  # a batch spans one window, sometimes two
            window = int(order.order[slot])
            if window != self._window:
                self._window, self._table, self._permutation = window, self._read(window), order.permutation(window)
            parts.append(self._table.take(self._permutation[positions[slots == slot] - order.starts[slot]]))
        return parts[0] if len(parts) == 1 else pa.concat_tables(parts)

    def __iter__(self) -> Iterator[list[dict]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for batch in range(self.start_batch, self.steps_per_epoch):
            if (batch - self.start_batch) % workers == worker:
                yield self.read_batch(self.epoch, batch).to_pylist()


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
