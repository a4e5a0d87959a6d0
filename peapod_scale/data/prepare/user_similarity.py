"""User embeddings by matrix factorisation and each user's most similar users, for ``--user-prompt neighbors``.

PeaPOD's released code reads 512-d user embeddings from a file nothing in it produces and builds a full
N x N similarity matrix (5 GB for 35 k users). Here ``prepare`` computes both from the TRAINING part of
each sequence only (items[:-2]; the validation and test items never leak into the prompt):

* embeddings: BPR (pairwise ranking: a user's item scores above a random item), Adam on minibatches,
  every random draw from one seeded generator, so the same data and seed give the same bytes;
* neighbours: cosine similarity computed for a block of users against all users at a time, the user
  itself excluded, top-n kept; memory is block x N, never N x N.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from peapod_scale.tools.progress import progress_bar

EMBEDDINGS_FILE = "user_embeddings.parquet"
NEIGHBORS_FILE = "neighbors.parquet"
_HELD_OUT = 2  # leave-one-out: the last two items of a sequence are validation and test


def training_pairs(offsets: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(0-based user, item) for every training interaction: each user's items[:-2]."""
    lengths = np.maximum(np.diff(offsets) - _HELD_OUT, 0)
    users = np.repeat(np.arange(len(lengths)), lengths)
    starts = np.repeat(offsets[:-1], lengths)
    within = np.arange(len(users)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return users, items[starts + within].astype(np.int64)


def bpr_embeddings(users: np.ndarray, items: np.ndarray, num_users: int, num_items: int, dim: int, seed: int,
                   epochs: int = 10, batch_size: int = 4096, lr: float = 0.01, weight_decay: float = 1e-4,
                   progress: bool = False) -> np.ndarray:
    """``[num_users, dim]`` float32 user factors (items are numbered 1..num_items)."""
    generator = torch.Generator().manual_seed(seed)
    user_factors = torch.nn.Embedding(num_users, dim, sparse=True)
    item_factors = torch.nn.Embedding(num_items + 1, dim, sparse=True)
    with torch.no_grad():
        user_factors.weight.copy_(torch.randn(num_users, dim, generator=generator) * 0.1)
        item_factors.weight.copy_(torch.randn(num_items + 1, dim, generator=generator) * 0.1)
    # Sparse updates: a step touches only its batch's rows (dense Adam over both tables was 5x slower).
    optimizer = torch.optim.SparseAdam([user_factors.weight, item_factors.weight], lr=lr)
    users_t, items_t = torch.from_numpy(users), torch.from_numpy(items)
    batches = -(-len(users_t) // batch_size)
    with progress_bar(epochs * batches, f"BPR {epochs} epochs", enabled=progress, unit="batch") as bar:
        for _ in range(epochs):
            _bpr_epoch(user_factors, item_factors, optimizer, users_t, items_t, num_items, batch_size, weight_decay,
                       generator)
            bar.update(batches)
    return user_factors.weight.detach().numpy().astype(np.float32)


def _bpr_epoch(user_factors: torch.nn.Embedding, item_factors: torch.nn.Embedding, optimizer: torch.optim.Optimizer,
               users_t: torch.Tensor, items_t: torch.Tensor, num_items: int, batch_size: int, weight_decay: float,
               generator: torch.Generator) -> None:
    """One pass over the training pairs in a random order, one random negative item per pair."""
    order = torch.randperm(len(users_t), generator=generator)
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        u, pos = user_factors(users_t[index]), item_factors(items_t[index])
        neg = item_factors(torch.randint(1, num_items + 1, (len(index),), generator=generator))
        margin = (u * (pos - neg)).sum(-1)
        regulariser = (u.square().sum() + pos.square().sum() + neg.square().sum()) / len(index)
        loss = -torch.nn.functional.logsigmoid(margin).mean() + weight_decay * regulariser
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def top_neighbors(embeddings: np.ndarray, n: int, block_size: int = 1024, progress: bool = False) -> np.ndarray:
    """``[N, n]`` 0-based indices of each row's n most cosine-similar other rows, most similar first."""
    vectors = torch.nn.functional.normalize(torch.from_numpy(embeddings).float(), dim=1)
    count = len(vectors)
    n = min(n, count - 1)
    out = np.empty((count, max(n, 0)), dtype=np.int64)
    with progress_bar(count, "neighbours", enabled=progress, unit="users", unit_scale=True) as bar:
        for start in range(0, count, block_size):
            block = vectors[start:start + block_size]
            similarity = block @ vectors.T  # [block, N]
            rows = torch.arange(len(block))
            similarity[rows, rows + start] = -float("inf")  # never the user itself
            out[start:start + len(block)] = torch.topk(similarity, n, dim=1).indices.numpy()
            bar.update(len(block))
    return out


def write_user_similarity(root: Path, offsets: np.ndarray, items: np.ndarray, num_items: int, *,
                          num_neighbors: int, mf_dim: int, seed: int, progress: bool = False) -> dict:
    """Write both Parquet files into ``root``; return the manifest entry (users numbered from 1)."""
    num_users = len(offsets) - 1
    users, user_items = training_pairs(offsets, items)
    embeddings = bpr_embeddings(users, user_items, num_users, num_items, mf_dim, seed, progress=progress)
    neighbors = top_neighbors(embeddings, num_neighbors, progress=progress) + 1
    ids = pa.array(np.arange(1, num_users + 1, dtype=np.int32))
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(embeddings.ravel()), mf_dim)
    width = neighbors.shape[1]
    lists = pa.ListArray.from_arrays(pa.array(np.arange(num_users + 1, dtype=np.int32) * width),
                                     pa.array(neighbors.ravel().astype(np.int32)),
                                     type=pa.list_(pa.field("user", pa.int32(), nullable=False)))
    for name, table in ((EMBEDDINGS_FILE, pa.table({"user": ids, "vector": vectors})),
                        (NEIGHBORS_FILE, pa.table({"user": ids, "neighbors": lists}))):
        pq.write_table(table, root / name, compression="zstd")
    return {"embeddings": EMBEDDINGS_FILE, "neighbors": NEIGHBORS_FILE, "method": "bpr", "mf_dim": mf_dim,
            "num_neighbors": width, "source": "training interactions (items[:-2])"}


def _read(dataset_dir: str | Path, manifest: dict, key: str, column: str) -> np.ndarray:
    entry = manifest.get("user_similarity")
    if not entry:
        raise FileNotFoundError(f"{dataset_dir}/manifest.json has no user embeddings or neighbour lists; re-run "
                                "`peapod-scale prepare` with --neighbors N (N > 0)")
    table = pq.read_table(Path(dataset_dir) / entry[key])
    if table.column("user").to_numpy().tolist() != list(range(1, table.num_rows + 1)):
        raise ValueError(f"{entry[key]}: users must be numbered 1..N in order")
    return np.stack(table.column(column).to_numpy(zero_copy_only=False)) if table.num_rows else np.empty((0, 0))


def read_user_embeddings(dataset_dir: str | Path, manifest: dict) -> np.ndarray:
    """``[U, mf_dim]`` float32, row k = user k + 1."""
    return _read(dataset_dir, manifest, "embeddings", "vector").astype(np.float32)


def read_neighbors(dataset_dir: str | Path, manifest: dict) -> np.ndarray:
    """``[U, n]`` int64 user ids (from 1), row k = user k + 1."""
    return _read(dataset_dir, manifest, "neighbors", "neighbors").astype(np.int64)
