"""Training rows streamed from the Parquet shards with Hugging Face ``datasets``, split by rank."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # shards are local; never ask the hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")


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


def _rows_as_list(rows: list[dict]) -> list[dict]:
    return rows


def batch_stream(data_dir: str | Path, manifest: dict, batch_size: int, rank: int, world_size: int,
                 seed: int, shuffle_buffer: int = 10_000, num_workers: int = 1) -> Iterator[list[dict]]:
    """Endless batches of raw training rows for this rank, reshuffled every epoch.

    It never ends, so every rank runs exactly the trainer's number of steps and no collective waits
    on a rank whose shard ran out first.
    """
    from datasets import load_dataset
    from datasets.distributed import split_dataset_by_node
    from torch.utils.data import DataLoader

    files = split_files(data_dir, manifest, "train")
    stream = load_dataset("parquet", data_files=files, split="train", streaming=True)
    stream = stream.shuffle(seed=seed, buffer_size=shuffle_buffer)
    stream = split_dataset_by_node(stream, rank=rank, world_size=world_size)
    loader = DataLoader(stream, batch_size=batch_size, collate_fn=_rows_as_list, num_workers=num_workers,
                        drop_last=True, persistent_workers=False)
    epoch = 0
    while True:
        stream.set_epoch(epoch)
        yield from loader
        epoch += 1
