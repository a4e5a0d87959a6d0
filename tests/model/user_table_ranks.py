"""One rank of the sharded user table tests (tests/model/test_user_table.py): run as RANK/WORLD_SIZE processes.

    python user_table_ranks.py OUT update|load SHARDS_DIR

``update``: looks the rank's ids up, backpropagates fixed weights through them (the fused optimizer updates the
touched rows), writes the whole table before and after, the vectors it got, and its shard into SHARDS_DIR.
``load``: a table with another seed loads SHARDS_DIR's shards (any number of ranks wrote them) and writes the
whole table.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from peapod_scale.model.user_table import ShardedUserTable, shard_file

ROWS, DIM, LR = 23, 4, 0.1
IDS = {0: [1, 7, 7, 22, 3], 1: [7, 12, 3, 3, 20, 9]}  # duplicates, and rows on both halves of the table


def main(out: Path, mode: str, shards: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if mode == "update":
        table = ShardedUserTable(ROWS, DIM, lr=LR, seed=5)
        before = table.full_weight()
        ids = torch.tensor([i for r in range(rank, 2, world) for i in IDS[r]])  # 1 rank: both ranks' ids
        vectors = table.lookup(ids)
        weights = torch.arange(1, vectors.numel() + 1, dtype=torch.float32).view_as(vectors) / 10 * (rank + 1)
        (vectors * weights).sum().backward()
        after = table.full_weight()
        table.save_shard(shards, rank)
        torch.save({"before": before, "after": after, "vectors": vectors.detach(), "ids": ids, "weights": weights,
                    "range": (table.start, table.end)}, out / f"rank{rank}.pt")
    else:
        table = ShardedUserTable(ROWS, DIM, lr=LR, seed=99)
        table.load_shards(sorted(shards.glob(shard_file(0).replace("00000", "*"))))
        torch.save({"loaded": table.full_weight(), "momentum": table._local("momentum").clone(),
                    "range": (table.start, table.end)}, out / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
