"""User embeddings by matrix factorisation and each user's most similar users, for ``--user-prompt neighbors``.

PeaPOD's released code reads 512-d user embeddings from a file nothing in it produces and builds a full
N x N similarity matrix (5 GB for 35 k users). Here ``prepare`` computes both from the TRAINING part of
each sequence only (items[:-2]; the validation and test items never leak into the prompt):

* embeddings: BPR (pairwise ranking: a user's item scores above a random item), Adam on minibatches,
  every random draw from one seeded generator, so the same data and seed give the same bytes;
* neighbours: the n most cosine-similar other users (never the user itself). Below ``AUTO_ANN_FROM`` users
  exactly: a block of users against all users at a time, top-n kept; memory is block x N, never N x N, but
  time is N^2 (about two hours at a million users). From there on (``neighbor_search="auto"``) approximately,
  with a FAISS inverted-file index (IVF-Flat, inner product on unit vectors): users are grouped by a seeded
  spherical k-means, and each user is compared exactly with the users of the ``NPROBE`` groups nearest to it
  only (minutes at a million users, recall@20 about 0.94); a user whose probed groups hold fewer than n others
  gets the exact answer. IVF rather than an HNSW graph: at 100 k users HNSW took 10 s to build and 9 s to
  search for recall 0.91, IVF 5 s + 5 s for 0.92; and HNSW inserts users from several threads in an order
  their timing decides, whereas IVF's seeded k-means and exhaustive scan of each probed group give the same
  bytes for the same embeddings and seed, whatever the thread count. faiss-cpu is a dependency of the package,
  imported only by the approximate search; where it is missing (a machine that installed without it) ``auto``
  searches exactly, saying so.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from peapod_scale.tools.progress import progress_bar

EMBEDDINGS_FILE = "user_embeddings.parquet"
NEIGHBORS_FILE = "neighbors.parquet"
_HELD_OUT = 2  # leave-one-out: the last two items of a sequence are validation and test
METHODS = ("exact", "ann", "auto")
# ``auto`` searches exactly below this many users. Measured on 2 cores (bench_neighbors.py --search, BPR
# embeddings, benchmarks/results/bench_neighbors_search.jsonl): the IVF search overtakes the exact one between
# 10 k users (0.7-1.1x) and 20 k (1.4-1.5x, 1-3 s each), but saves seconds at most up to 50 k (1.8x: 7-14 s
# exact) while losing 6 % of the neighbours; exact lists cost too little there to give up.
AUTO_ANN_FROM = 50_000
# IVF settings, measured on the same embeddings (64-d, n = 20). About 4 sqrt(N) lists: the coarse assignment
# (nlist dot products a user) stays small beside the scan of the probed lists; 8 sqrt(N) lists needed as many
# candidates for the same recall and their k-means took 4x longer. Probing 96 lists gave recall@20 0.95 at
# 100 k and 0.94 at 1 M users (64: 0.91 at both, too close to 0.9; 128: 0.96 for 1.3x the time).
NPROBE = 96
_KMEANS_ITERATIONS = 10
_KMEANS_POINTS_PER_LIST = 64  # k-means trains on a seeded sample of this many users per list
_MIN_POINTS_PER_LIST = 39  # faiss's own minimum for a list's k-means training (fewer: it warns)
_SEARCH_CHUNK = 16_384  # users searched per faiss call: the progress bar's step


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


def top_neighbors(embeddings: np.ndarray, n: int, block_size: int = 1024, progress: bool = False, *,
                  method: str = "exact", seed: int = 0, nlist: int | None = None,
                  nprobe: int | None = None) -> np.ndarray:
    """``[N, n]`` 0-based indices of each row's n most cosine-similar other rows, most similar first.

    ``method``: "exact" (the default, so that existing callers keep exact lists), "ann" (the IVF index, for
    millions of users) or "auto" (exact below ``AUTO_ANN_FROM`` rows). ``seed`` seeds ANN's k-means;
    ``nlist`` and ``nprobe`` override ANN's settings (benchmarks tune them). Every row gets exactly
    min(n, N - 1) distinct other rows either way.
    """
    return find_neighbors(embeddings, n, block_size, progress, method=method, seed=seed, nlist=nlist,
                          nprobe=nprobe)[0]


def find_neighbors(embeddings: np.ndarray, n: int, block_size: int = 1024, progress: bool = False, *,
                   method: str = "auto", seed: int = 0, nlist: int | None = None,
                   nprobe: int | None = None) -> tuple[np.ndarray, str]:
    """``top_neighbors``' lists and a description of the search that ran ("exact" or "ivf-flat nlist=...
    nprobe=... seed=..."), which the manifest records: with "auto" the caller cannot know it in advance."""
    vectors = torch.nn.functional.normalize(torch.from_numpy(embeddings).float(), dim=1)
    count = len(vectors)
    n = max(min(n, count - 1), 0)
    if neighbor_search_method(method, count) == "exact" or n == 0:
        return _exact_neighbors(vectors, np.arange(count), n, block_size, progress), "exact"
    nlist, nprobe = ivf_parameters(count, nlist, nprobe)
    lists = _ivf_neighbors(vectors, n, seed, nlist, nprobe, block_size, progress)
    return lists, f"ivf-flat nlist={nlist} nprobe={nprobe} seed={seed}"


def neighbor_search_method(method: str, count: int) -> str:
    """"exact" or "ann": what ``method`` means for ``count`` users.

    "auto" needs faiss only above the threshold, so a small dataset prepares without it; above it, a
    missing faiss costs time (the exact search), not the run, and says so on one stderr line.
    """
    if method not in METHODS:
        raise ValueError(f"neighbour search {method!r}: expected one of {', '.join(METHODS)}")
    if method != "auto":
        return method
    if count < AUTO_ANN_FROM:
        return "exact"
    try:
        _import_faiss()
    except ImportError:
        print(f"warning: faiss is not installed, so the neighbours of {count:,} users are searched exactly "
              "(N^2 time); `pip install faiss-cpu` for the approximate search", file=sys.stderr)
        return "exact"
    return "ann"


def ivf_parameters(count: int, nlist: int | None = None, nprobe: int | None = None) -> tuple[int, int]:
    """(nlist, nprobe) for ``count`` users: about 4 sqrt(N) lists, but at least ``_MIN_POINTS_PER_LIST``
    users per list (k-means needs them), and never more probes than lists."""
    if nlist is None:
        nlist = max(1, min(round(4 * math.sqrt(count)), count // _MIN_POINTS_PER_LIST))
    nlist = max(1, min(nlist, count))
    nprobe = max(1, min(NPROBE if nprobe is None else nprobe, nlist))
    return nlist, nprobe


def _import_faiss():
    """faiss, imported here and not at the top of the module: it is an optional dependency that only the
    approximate search needs, and importing it costs time every ``prepare`` of a small dataset would pay."""
    try:
        import faiss
    except ImportError as error:
        raise ImportError("the approximate neighbour search (neighbor_search='ann') needs faiss: "
                          "pip install faiss-cpu") from error
    return faiss


def _exact_neighbors(vectors: torch.Tensor, rows: np.ndarray, n: int, block_size: int,
                     progress: bool) -> np.ndarray:
    """``[len(rows), n]``: the exact lists of ``rows`` only (all rows, or those ANN left short; benchmarks
    also take the exact answer for a sample of users from here)."""
    out = np.empty((len(rows), n), dtype=np.int64)
    with progress_bar(len(rows), "neighbours", enabled=progress, unit="users", unit_scale=True) as bar:
        for start in range(0, len(rows), block_size):
            index = torch.from_numpy(rows[start:start + block_size])
            similarity = vectors[index] @ vectors.T  # [block, N]
            similarity[torch.arange(len(index)), index] = -float("inf")  # never the user itself
            out[start:start + len(index)] = torch.topk(similarity, n, dim=1).indices.numpy()
            bar.update(len(index))
    return out


def _ivf_neighbors(vectors: torch.Tensor, n: int, seed: int, nlist: int, nprobe: int, block_size: int,
                   progress: bool) -> np.ndarray:
    """The IVF-Flat search; rows whose probed lists held fewer than n other users get the exact answer.

    Deterministic by construction: the k-means sample and initial centroids come from ``seed``, every user
    lies in exactly one list, and a probed list is scanned exhaustively, each query by one thread; so the
    same vectors and seed give the same lists whatever faiss's thread count.
    """
    faiss = _import_faiss()
    data = np.ascontiguousarray(vectors.numpy(), dtype=np.float32)
    count, dim = data.shape
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.cp.niter = _KMEANS_ITERATIONS
    index.cp.spherical = True  # centroids on the unit sphere, like the users: inner product is cosine
    index.cp.max_points_per_centroid = _KMEANS_POINTS_PER_LIST
    index.cp.min_points_per_centroid = 1  # ivf_parameters keeps enough users per list; no warning to print
    index.train(data)
    index.add(data)
    index.nprobe = nprobe
    # Users are searched list by list: neighbouring queries then probe mostly the same lists, which stay in
    # the cache (1 M users: 25 % faster than in user order). A query's answer does not depend on its batch.
    from faiss.contrib.inspect_tools import get_invlist
    by_list = np.concatenate([get_invlist(index.invlists, i)[0] for i in range(nlist)])
    searched = np.zeros(count, dtype=bool)
    searched[by_list] = True
    short = np.flatnonzero(~searched).tolist()  # none expected; but every row must be filled, so: exact
    out = np.empty((count, n), dtype=np.int64)
    with progress_bar(count, f"neighbours (IVF, {nprobe} of {nlist} lists)", enabled=progress, unit="users",
                      unit_scale=True) as bar:
        for start in range(0, len(by_list), _SEARCH_CHUNK):
            rows = by_list[start:start + _SEARCH_CHUNK]
            found = index.search(data[rows], n + 1)[1]  # n + 1: the user itself is usually among them
            keep = (found != rows[:, None]) & (found >= 0)  # -1: the probed lists held fewer users
            complete = keep.sum(axis=1) >= n
            kept_first = np.argsort(~keep, axis=1, kind="stable")[:, :n]  # in faiss's order
            out[rows] = np.take_along_axis(found, kept_first, axis=1)
            short.extend(rows[~complete].tolist())
            bar.update(len(rows))
    if short:
        short = np.sort(np.array(short, dtype=np.int64))
        out[short] = _exact_neighbors(vectors, short, n, block_size, progress=False)
    return out


def write_user_similarity(root: Path, offsets: np.ndarray, items: np.ndarray, num_items: int, *,
                          num_neighbors: int, mf_dim: int, seed: int, progress: bool = False,
                          neighbor_search: str = "auto") -> dict:
    """Write both Parquet files into ``root``; return the manifest entry (users numbered from 1).

    The entry names the neighbour search that ran, since under "auto" it depends on the number of users
    and on whether faiss is installed, and approximate lists differ from exact ones.
    """
    num_users = len(offsets) - 1
    users, user_items = training_pairs(offsets, items)
    embeddings = bpr_embeddings(users, user_items, num_users, num_items, mf_dim, seed, progress=progress)
    neighbors, search = find_neighbors(embeddings, num_neighbors, progress=progress, method=neighbor_search,
                                       seed=seed)
    neighbors = neighbors + 1
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
            "num_neighbors": width, "neighbor_search": search, "source": "training interactions (items[:-2])"}


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
