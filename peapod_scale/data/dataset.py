"""The dataset folder: its manifest, evaluation splits read whole, and the rank's training stream."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq

from peapod_scale.data.shard_stream import ShardStream
from peapod_scale.data.tasks import SOURCE_COLUMNS, SOURCE_OF, TaskBatches, TaskSchedule, TaskStream


def read_manifest(data_dir: str | Path) -> dict:
    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: create the dataset with `peapod-scale prepare --output {data_dir}`")
    return json.loads(path.read_text())


def split_files(data_dir: str | Path, manifest: dict, split: str) -> list[str]:
    if split not in manifest["splits"]:
        raise ValueError(f"{data_dir}: no split {split!r}; it has {', '.join(manifest['splits'])}")
    return [str(Path(data_dir) / name) for name in manifest["splits"][split]["files"]]


def read_rows(data_dir: str | Path, manifest: dict, split: str) -> list[dict]:
    """A whole (small) split as row dicts: evaluation splits hold one row per user."""
    rows: list[dict] = []
    for path in split_files(data_dir, manifest, split):
        rows.extend(pq.read_table(path).to_pylist())
    return rows


def training_sequences(data_dir: str | Path, manifest: dict) -> Iterator[list[int]]:
    """Each user's sequence without its validation and test items: what baselines may learn from."""
    for path in split_files(data_dir, manifest, "sequences"):
        for items in pq.read_table(path, columns=["items"]).column("items").to_pylist():
            yield items[:-2]


def task_stream(data_dir: str | Path, manifest: dict, weights: dict[str, float], batcher, batch_size: int,
                rank: int, world_size: int, seed: int, shuffle_buffer: int = 65_536, num_workers: int = 1,
                grad_accum: int = 1):
    """Endless ``(task, model batch)`` pairs for this rank, rendered and tokenized in the loader workers.

    ``batch_size`` is the micro-batch; with ``grad_accum`` and ``world_size`` it makes the global batch
    that every optimizer step takes from one global sequence, each rank its slice (see shard_stream.py), so
    every rank gets the same number of batches and the position resumes on another number of ranks.
    One row source per kind of row (see tasks.py).
    """

    sources = {}
    for source in dict.fromkeys(SOURCE_OF[task] for task in weights):
        if source not in manifest["splits"]:
            raise ValueError(f"{data_dir} has no {source!r} split (explanation training reads only the rows with "
                             f"text from it); re-create the dataset with `peapod-scale prepare ... --overwrite`")
        sources[source] = ShardStream(split_files(data_dir, manifest, source), batch_size, rank, world_size,
                                      seed=seed, window_rows=shuffle_buffer, columns=SOURCE_COLUMNS[source],
                                      name=f"{data_dir} {source}", grad_accum=grad_accum)
    dataset = TaskBatches(sources, TaskSchedule(weights, seed), batcher)
    return TaskStream(dataset, num_workers=num_workers)
