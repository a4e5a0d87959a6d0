"""A resumable training stream over Parquet shards: one global sequence of global batches, each rank its slice.

Why not ``datasets``' streaming shuffle: its shuffle buffer is not part of ``state_dict()``, so a
restart cannot resume at the exact next example, and a shuffled pass sleeps 5 s at its end. Here the
order of an epoch is a pure function of ``(seed, epoch)``, whatever the number of ranks:

1. the row groups of all shards are cut into windows of about ``window_rows`` rows;
2. the windows are permuted, then the rows inside each window (seeded by seed, epoch and window);
3. the permuted order is cut into global batches of ``micro-batch x accumulation x ranks`` rows, one
   per optimizer step; the remainder, fewer rows than one global batch, is left out of that epoch
   only (the next epoch's permutation leaves out others). Every rank therefore runs the same number
   of steps per epoch whatever the shard sizes, and no collective waits on a rank that ran out;
4. a global batch is a run of micro-batches of ``micro-batch`` rows: micro-step ``a`` of rank ``r``
   takes the ``a * ranks + r``-th of them. Reading them in that interleaved order gives back the
   permuted order itself, so the same global batch holds the same rows on 1, 2 or 4 ranks;
5. micro-batch ``n`` of a rank is built by loader worker ``(n - start) % num_workers``; PyTorch's
   loader takes batches from its workers round-robin, so the order does not depend on the worker count.

The position is therefore world-size free: ``(epoch, global batches consumed)`` plus the micro-steps
already taken inside the current global batch. ``load_state_dict`` on a new stream with the same
global batch, on any number of ranks and loader workers, continues at exactly the next global batch:
across the stop no example of the epoch is skipped or repeated over all ranks together. Each rank
reads every window (one window in memory per worker) and keeps its slice of it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

# the options a resumed stream must keep unchanged, and the flag that sets each
SAME_ON_RESUME = {"seed": "--seed", "shuffle_buffer": "--shuffle-buffer", "files": "--data (the same Parquet shards)"}


@dataclass(frozen=True)
class _Window:
    """Consecutive row groups of one file, read together and shuffled together."""

    path: str
    row_groups: tuple[int, ...]
    rows: int


def _windows(files: Sequence[str | Path], window_rows: int) -> tuple[list[_Window], str]:
    """The windows, and a fingerprint of the shards' names and row-group sizes (what fixes the order)."""
    windows: list[_Window] = []
    shape = []
    for path in files:
        metadata = pq.ParquetFile(path).metadata
        sizes = [metadata.row_group(index).num_rows for index in range(metadata.num_row_groups)]
        shape.append([Path(path).name, sizes])
        group: list[int] = []
        rows = 0
        for index, size in enumerate(sizes):
            group.append(index)
            rows += size
            if rows >= window_rows:
                windows.append(_Window(str(path), tuple(group), rows))
                group, rows = [], 0
        if rows:
            windows.append(_Window(str(path), tuple(group), rows))
    return windows, hashlib.sha256(json.dumps(shape).encode()).hexdigest()[:16]


class EpochOrder:
    """Where the k-th example of an epoch lives: (window, row inside the window's raw order)."""

    def __init__(self, windows: Sequence[_Window], seed: int, epoch: int):
        self.windows, self.seed, self.epoch = windows, seed, epoch
        self.order = np.random.default_rng([seed, epoch]).permutation(len(windows))
        self.starts = np.concatenate([[0], np.cumsum([windows[w].rows for w in self.order])])

    def permutation(self, window: int) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch, window]).permutation(self.windows[window].rows)


class ShardStream(IterableDataset):
    """One epoch of this rank's micro-batches (lists of row dicts); see the module docstring.

    ``read_batch(epoch, micro_batch)`` gives any micro-batch of this rank as an Arrow table, keeping
    the last window read (one window in memory), so several task streams can draw from it in any order.
    """

    def __init__(self, files: Sequence[str | Path], batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, window_rows: int = 65_536, columns: Sequence[str] | None = None,
                 name: str = "training", grad_accum: int = 1):
        if not files:
            raise ValueError(f"no Parquet shards to stream for the {name} rows")
        if batch_size < 1 or grad_accum < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size >= 1, grad_accum >= 1 and 0 <= rank < world_size (got {batch_size}, "
                             f"{grad_accum}, {rank}, {world_size})")
        self.windows, self.fingerprint = _windows(files, window_rows)
        self.total_rows = sum(w.rows for w in self.windows)
        self.batch_size, self.grad_accum, self.rank, self.world_size = batch_size, grad_accum, rank, world_size
        self.seed, self.window_rows = seed, window_rows
        self.columns = list(columns) if columns else None
        self.global_batch_size = batch_size * grad_accum * world_size
        self.global_batches_per_epoch = self.total_rows // self.global_batch_size
        if self.global_batches_per_epoch == 0:
            raise ValueError(f"{self.total_rows} {name} rows cannot fill one global batch of {self.global_batch_size} "
                             f"(micro-batch {batch_size} x accumulation {grad_accum} x {_ranks(world_size)}); lower "
                             "--micro-batch-size or --grad-accum")
        self.micro_batches_per_epoch = self.global_batches_per_epoch * grad_accum  # of this rank
        self.epoch, self.start_batch = 0, 0
        self._order: EpochOrder | None = None
        self._window, self._table, self._permutation = -1, None, np.empty(0, dtype=np.int64)

    def __getstate__(self) -> dict:  # loader workers start with an empty cache
        return {**self.__dict__, "_order": None, "_window": -1, "_table": None}

    def layout(self) -> dict:
        """What fixes which rows a global batch holds, as saved beside a position (see ``check_resumable``)."""
        return {"global_batch_size": self.global_batch_size, "micro_batch_size": self.batch_size,
                "grad_accum": self.grad_accum, "world_size": self.world_size, "seed": self.seed,
                "shuffle_buffer": self.window_rows, "files": self.fingerprint}

    def first_row(self, micro_batch: int) -> int:
        """Position in the epoch's order of the first row of this rank's micro-batch ``micro_batch``."""
        return (micro_batch * self.world_size + self.rank) * self.batch_size

    def _read(self, window: int) -> pa.Table:
        spec = self.windows[window]
        return pq.ParquetFile(spec.path).read_row_groups(list(spec.row_groups), columns=self.columns)

    def read_batch(self, epoch: int, micro_batch: int) -> pa.Table:
        """This rank's micro-batch ``micro_batch`` (0 <= it < micro_batches_per_epoch) of epoch ``epoch``."""
        if self._order is None or self._order.epoch != epoch:
            self._order = EpochOrder(self.windows, self.seed, epoch)
            self._window = -1
        order = self._order
        first = self.first_row(micro_batch)
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
        for batch in range(self.start_batch, self.micro_batches_per_epoch):
            if (batch - self.start_batch) % workers == worker:
                yield self.read_batch(self.epoch, batch).to_pylist()


def _ranks(count: int) -> str:
    return f"{count} rank{'s' if count != 1 else ''}"


def _ranks_text(state: Mapping) -> str:
    return (f"{state['global_batch_size']} (micro-batch {state['micro_batch_size']} x accumulation "
            f"{state['grad_accum']} x {_ranks(state['world_size'])})")


def _keep_global_batch(global_batch: int, micro_batch: int, world_size: int) -> str:
    """What to pass on ``world_size`` ranks to keep ``global_batch``, or which rank counts can keep it."""
    if global_batch % world_size:
        counts = [str(n) for n in range(1, global_batch + 1) if global_batch % n == 0]
        shown = ", ".join(counts[:8]) + (", ..." if len(counts) > 8 else "")
        return (f"{global_batch} does not divide over {_ranks(world_size)}: resume on a rank count that divides it "
                f"({shown})")
    per_rank = global_batch // world_size
    micro = max(m for m in range(1, min(micro_batch, per_rank) + 1) if per_rank % m == 0)
    return f"to keep {global_batch} on {_ranks(world_size)} pass --micro-batch-size {micro} --grad-accum {per_rank // micro}"


def check_resumable(saved: Mapping, current: Mapping, same: Mapping[str, str] = SAME_ON_RESUME) -> None:
    """Raise ValueError saying what changed when a saved position cannot continue on this stream.

    ``same`` maps the keys that must not change to the option that sets each; the global batch may be
    reached by another micro-batch x accumulation x ranks, but must stay the same size.
    """
    if "global_batch_size" not in saved:
        raise ValueError("cannot resume the data stream: the checkpoint holds a per-rank position (each of its "
                         f"{saved.get('world_size', '?')} ranks read its own contiguous part of the epoch, written "
                         "before the stream was one sequence of global batches); it cannot be continued without "
                         "skipping or repeating examples, so it is refused: resume it with the peapod-scale version "
                         "that wrote it, or start a new run")
    for key, option in same.items():
        if saved.get(key) != current[key]:
            raise ValueError(f"cannot resume the data stream: {key} was {saved.get(key)}, now {current[key]}; "
                             f"resume with the same {option}")
    if saved["global_batch_size"] != current["global_batch_size"]:
        raise ValueError(f"cannot resume the data stream: the global batch was {_ranks_text(saved)}, now "
                         f"{_ranks_text(current)}; "
                         + _keep_global_batch(saved["global_batch_size"], saved["micro_batch_size"],
                                              current["world_size"]))
    if saved.get("micro_step", 0) and any(saved[k] != current[k] for k in ("micro_batch_size", "grad_accum",
                                                                            "world_size")):
        raise ValueError(f"cannot resume the data stream: it stopped inside an optimizer step (micro-step "
                         f"{saved['micro_step']} of {saved['grad_accum']}) on {_ranks_text(saved)}; only a position "
                         f"between optimizer steps continues on another layout (now {_ranks_text(current)})")


def _batch_as_is(batch: list[dict]) -> list[dict]:
    return batch


class TrainStream:
    """Endless micro-batches of ONE split's raw rows over epochs, with a position that survives restarts.

    The trainer reads through ``tasks.TaskStream`` (several row sources, rendered prompts); this is the same
    reading without the rendering: the floor ``benchmarks/bench_data.py`` measures the task stream against, and
    the smallest loop that shows ShardStream's epoch and resume contract through real DataLoader workers.
    """

    def __init__(self, dataset: ShardStream, num_workers: int = 1):
        self.dataset, self.num_workers = dataset, num_workers
        self.epoch, self.batches_in_epoch = 0, 0  # batches_in_epoch: this rank's micro-batches

    def state_dict(self) -> dict:
        global_batches, micro_step = divmod(self.batches_in_epoch, self.dataset.grad_accum)
        return {"epoch": self.epoch, "global_batches": global_batches, "micro_step": micro_step,
                **self.dataset.layout()}

    def load_state_dict(self, state: dict) -> None:
        check_resumable(state, self.dataset.layout())
        self.epoch = state["epoch"]
        self.batches_in_epoch = state["global_batches"] * self.dataset.grad_accum + state["micro_step"]

    def __iter__(self) -> Iterator[list[dict]]:
        while True:
            self.dataset.epoch, self.dataset.start_batch = self.epoch, self.batches_in_epoch
            loader = DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers,
                                collate_fn=_batch_as_is)
            for batch in loader:
                self.batches_in_epoch += 1
                yield batch
            self.epoch, self.batches_in_epoch = self.epoch + 1, 0
