"""The user embedding table sharded row-wise over the ranks (TorchRec), updated only where a step touched it.

Why not a parameter under ZeRO: a batch touches B users, but ZeRO's flat buffers reduce, step and checkpoint
the whole table every step, and AdamW's momentum and weight decay move every row whether or not its user was in
the batch (at a million users 97 % of the parameters and two thirds of every step). TorchRec's
``EmbeddingCollection`` sharded ``row_wise`` gives each rank ``rows / ranks`` rows; a lookup sends each id to
the rank that owns it and the vectors back (all-to-all), and the backward applies FBGEMM's fused row-wise
Adagrad to the touched rows inside the backward itself (``apply_optimizer_in_backward``), so no gradient for
the table is ever materialised or reduced. FBGEMM has no Adam on CPU; row-wise Adagrad (one accumulator per
row) is what such tables use.

The table is outside the DeepSpeed engine: ``lookup`` is a collective (every rank calls it once per forward,
in lock-step, as the training loop does), and its output carries the autograd edge back into TorchRec, so
``engine.backward(loss)`` updates the rows. Each rank saves its own rows and accumulators with their row
offset (``save_shard``); ``load_shards`` reads whichever saved rows fall in this rank's range, so a checkpoint
written by N ranks loads on M. Initial values are drawn per block of rows from the seed, so they do not
depend on the number of ranks either.

``torchrec`` and ``fbgemm_gpu`` are optional (``--user-table sharded``): imported when a table is built.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file


TABLE = "users"
FEATURE = "user"
_INIT_BLOCK = 65_536  # rows drawn from one generator: the initial table is the same on any number of ranks


def shard_file(rank: int) -> str:
    return f"user_table_rank{rank:05d}.safetensors"


@contextlib.contextmanager
def _root_logger_kept():
    """TorchRec logs through the root logger's module functions (``logging.warning``), which give a root logger
    without handlers a stderr one; removed again, so that every later line of the program is not printed twice."""
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        yield
    finally:
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)


def engine_problem() -> str | None:
    """Why the sharded table cannot be built here (None: it can): torchrec or FBGEMM missing or broken."""
    try:
        with _root_logger_kept():
            import fbgemm_gpu  # noqa: F401 - a build for another torch fails here, not at the first lookup
            import torchrec  # noqa: F401
    except Exception as error:  # noqa: BLE001 - ImportError, or OSError from a library built for another torch
        return (f"--user-table sharded needs torchrec and FBGEMM ({type(error).__name__}: {error}); "
                "scripts/setup_venv.sh installs them where torch is 2.13 (scripts/constraints-sharded.txt)")
    return None


class ShardedUserTable:
    """``num_rows x dim`` fp32 rows, row-wise over the default process group, row-wise Adagrad in the backward."""

    def __init__(self, num_rows: int, dim: int, *, lr: float, seed: int, init_std: float = 1.0, eps: float = 1e-8,
                 device: torch.device | None = None):
        if not dist.is_initialized():
            raise ValueError("--user-table sharded needs torch.distributed (it is started for every training run)")
        self.num_rows, self.dim, self.lr = num_rows, dim, lr
        self.device = device or torch.device("cpu")
        with _root_logger_kept():
            self._build(seed, init_std, eps)

    def _build(self, seed: int, init_std: float, eps: float) -> None:
        # lazy, inside _root_logger_kept: fbgemm_gpu's import gives the root logger a handler
        from torchrec import EmbeddingCollection, EmbeddingConfig, KeyedJaggedTensor
        from torchrec.distributed.embedding import EmbeddingCollectionSharder
        from torchrec.distributed.model_parallel import DistributedModelParallel
        from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
        from torchrec.optim import RowWiseAdagrad
        from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

        self._features = KeyedJaggedTensor
        num_rows, dim, lr = self.num_rows, self.dim, self.lr
        world = dist.get_world_size()
        collection = EmbeddingCollection(
            tables=[EmbeddingConfig(name=TABLE, embedding_dim=dim, num_embeddings=num_rows, feature_names=[FEATURE])],
            device=torch.device("meta"))  # nothing allocated before the plan says which rows live here
        apply_optimizer_in_backward(RowWiseAdagrad, collection.parameters(), {"lr": lr, "eps": eps})
        planner = EmbeddingShardingPlanner(
            topology=Topology(world_size=world, compute_device=self.device.type),
            constraints={TABLE: ParameterConstraints(sharding_types=["row_wise"])})
        sharders = [EmbeddingCollectionSharder()]
        plan = planner.collective_plan(collection, sharders, dist.GroupMember.WORLD)
        self.module = DistributedModelParallel(collection, device=self.device, plan=plan, sharders=sharders)
        self.start, self.end = self._row_range()
        self.reset(seed, init_std)

    # -- this rank's rows -----------------------------------------------------------------------------------------
    def _sharded(self, kind: str):
        if kind == "weight":
            return next(v for k, v in self.module.state_dict().items() if k.endswith(f"{TABLE}.weight"))
        state = self.module.fused_optimizer.state_dict()["state"]
        return next(iter(next(iter(state.values())).values()))  # the row-wise Adagrad accumulator

    def _local(self, kind: str) -> torch.Tensor:
        """This rank's rows of the weight (``[rows, dim]``) or of the accumulator (``[rows]``): views, written in
        place to load them."""
        shards = self._sharded(kind).local_shards()
        if shards:
            return shards[0].tensor
        return torch.empty(0, self.dim) if kind == "weight" else torch.empty(0)

    def _row_range(self) -> tuple[int, int]:
        shards = self._sharded("weight").local_shards()
        if not shards:
            return 0, 0
        start = shards[0].metadata.shard_offsets[0]
        return start, start + shards[0].metadata.shard_sizes[0]

    def reset(self, seed: int, init_std: float) -> None:
        """N(0, init_std) rows drawn block by block from ``seed``; accumulators at 0."""
        with torch.no_grad():
            self._local("weight").copy_(initial_rows(seed, self.start, self.end, self.dim, init_std))
            self._local("momentum").zero_()

    def set_rows(self, rows: torch.Tensor) -> None:
        """Copy this rank's slice of a full ``[num_rows, dim]`` table (e.g. prepare's MF embeddings)."""
        with torch.no_grad():
            self._local("weight").copy_(rows[self.start:self.end])

    # -- lookup (a collective) --------------------------------------------------------------------------------------
    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids`` of any shape -> ``[*ids.shape, dim]`` fp32 vectors; the backward updates those rows."""
        flat = ids.reshape(-1).to(self.device, torch.long)
        features = self._features.from_lengths_sync(keys=[FEATURE], values=flat,
                                                       lengths=torch.ones_like(flat, dtype=torch.int32))
        vectors = self.module(features)[FEATURE].values()
        return vectors.view(*ids.shape, self.dim)

    # -- the whole table --------------------------------------------------------------------------------------------
    def full_weight(self) -> torch.Tensor:
        """Every row, on every rank (a collective): for saving the model and for evaluation."""
        local = self._local("weight").detach()
        sizes = [torch.zeros(1, dtype=torch.long) for _ in range(dist.get_world_size())]
        dist.all_gather(sizes, torch.tensor([local.shape[0]]))
        most = int(max(s.item() for s in sizes))
        padded = torch.zeros(most, self.dim, dtype=local.dtype, device=local.device)
        padded[: local.shape[0]] = local
        gathered = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(gathered, padded)
        return torch.cat([g[: int(s.item())] for g, s in zip(gathered, sizes)]).cpu()

    # -- checkpoints ------------------------------------------------------------------------------------------------
    def save_shard(self, folder: Path, rank: int) -> Path:
        """This rank's rows and accumulators, with their offset, as ``user_table_rank<R>.safetensors``."""
        path = Path(folder) / shard_file(rank)
        save_file({"weight": self._local("weight").detach().cpu().contiguous(),
                   "momentum": self._local("momentum").detach().cpu().contiguous()}, str(path),
                  metadata={"row_offset": str(self.start), "num_rows": str(self.num_rows), "dim": str(self.dim)})
        return path

    def load_shards(self, paths: list[Path]) -> None:
        """This rank's rows from the shards a checkpoint holds, whatever number of ranks wrote them."""
        weight, momentum = self._local("weight"), self._local("momentum")
        filled = 0
        for path in paths:
            with safe_open(str(path), framework="pt") as shard:
                meta = shard.metadata() or {}
                if int(meta.get("num_rows", -1)) != self.num_rows or int(meta.get("dim", -1)) != self.dim:
                    raise ValueError(f"{path}: a table of {meta.get('num_rows')} x {meta.get('dim')} rows, this run "
                                     f"has {self.num_rows} x {self.dim}")
                offset = int(meta["row_offset"])
                rows = shard.get_slice("weight").get_shape()[0]
                low, high = max(offset, self.start), min(offset + rows, self.end)
                if low >= high:
                    continue
                with torch.no_grad():
                    weight[low - self.start:high - self.start].copy_(
                        shard.get_slice("weight")[low - offset:high - offset])
                    momentum[low - self.start:high - self.start].copy_(
                        shard.get_slice("momentum")[low - offset:high - offset])
                filled += high - low
        if filled != self.end - self.start:
            raise ValueError(f"user table shards {', '.join(p.name for p in paths)} cover {filled} of rows "
                             f"{self.start}..{self.end - 1} of this rank: a shard is missing")


def initial_rows(seed: int, start: int, end: int, dim: int, std: float) -> torch.Tensor:
    """Rows ``start..end-1`` of the N(0, std) table the seed defines (block b from its own generator)."""
    out = torch.empty(end - start, dim)
    for block in range(start // _INIT_BLOCK, -(-end // _INIT_BLOCK)):
        first = block * _INIT_BLOCK
        generator = torch.Generator().manual_seed(seed * 1_000_003 + block)
        values = torch.randn(_INIT_BLOCK, dim, generator=generator) * std
        low, high = max(first, start), min(first + _INIT_BLOCK, end)
        out[low - start:high - start] = values[low - first:high - first]
    return out
