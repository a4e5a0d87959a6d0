"""The sharded user table on real gloo ranks: lookup and fused update equal a dense reference on the touched rows,
leave the others untouched, and its shards reload on another number of ranks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import REPO, env, free_port

pytest.importorskip("torchrec", reason="--user-table sharded needs torchrec and fbgemm-gpu(-cpu)")

from peapod_scale.model.user_table import initial_rows  # noqa: E402 - after the skip: needs torchrec

WORKER = Path(__file__).with_name("user_table_ranks.py")
ROWS, DIM, LR, EPS = 23, 4, 0.1, 1e-8


def run_ranks(ranks: int, out: Path, mode: str, shards: Path) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    shards.mkdir(parents=True, exist_ok=True)
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(out), mode, str(shards)], cwd=REPO,
                              env={**env(), "RANK": str(r), "WORLD_SIZE": str(ranks), "LOCAL_RANK": str(r),
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(ranks)]
    for proc in procs:
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(ranks)]


def rowwise_adagrad(table: torch.Tensor, ids: torch.Tensor, grads: torch.Tensor, ranks: int = 2
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """FBGEMM's row-wise Adagrad by hand: per touched row, the gradient g summed over its lookups and averaged
    over the ranks (as DDP averages a dense one); accumulator += mean(g^2); row -= lr g / (sqrt(accumulator) + eps)."""
    summed = torch.zeros_like(table).index_add_(0, ids, grads) / ranks
    touched = torch.unique(ids)
    momentum = torch.zeros(table.shape[0])
    momentum[touched] = summed[touched].pow(2).mean(1)
    updated = table.clone()
    updated[touched] -= LR * summed[touched] / (momentum[touched].sqrt() + EPS)[:, None]
    return updated, momentum


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    root = tmp_path_factory.mktemp("user_table")
    return run_ranks(2, root / "out", "update", root / "shards"), root / "shards"


def test_rows_split_in_two_and_start_from_the_seed_whatever_the_rank_count(two_ranks):
    results, _ = two_ranks
    assert [r["range"] for r in results] == [(0, 12), (12, 23)]
    assert torch.equal(results[0]["before"], initial_rows(5, 0, ROWS, DIM, 1.0))
    assert torch.equal(initial_rows(5, 7, 20, DIM, 1.0), initial_rows(5, 0, ROWS, DIM, 1.0)[7:20])


def test_lookup_and_update_equal_the_dense_reference_on_touched_rows_only(two_ranks):
    results, _ = two_ranks
    before = results[0]["before"]
    for r in results:
        assert torch.equal(r["vectors"], before[r["ids"]])  # the lookup, from the other rank's rows too
    ids = torch.cat([r["ids"] for r in results])
    grads = torch.cat([r["weights"] for r in results])  # d(sum(v * w))/dv = w, summed over ranks and repeats
    expected, _ = rowwise_adagrad(before, ids, grads)
    after = results[0]["after"]
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-6)
    untouched = torch.ones(ROWS, dtype=torch.bool)
    untouched[ids] = False
    assert torch.equal(after[untouched], before[untouched]) and not torch.equal(after[~untouched], before[~untouched])


@pytest.mark.parametrize("ranks", [1, 2])
def test_shards_reload_on_any_number_of_ranks_with_their_accumulators(two_ranks, tmp_path, ranks):
    results, shards = two_ranks
    loaded = run_ranks(ranks, tmp_path / "out", "load", shards)
    ids = torch.cat([r["ids"] for r in results])
    _, momentum = rowwise_adagrad(results[0]["before"], ids, torch.cat([r["weights"] for r in results]))
    for r in loaded:
        assert torch.equal(r["loaded"], results[0]["after"])  # not the other seed's rows
        start, end = r["range"]
        torch.testing.assert_close(r["momentum"], momentum[start:end], rtol=1e-5, atol=1e-7)


def test_a_missing_shard_is_named(two_ranks, tmp_path):
    _, shards = two_ranks
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "user_table_rank00000.safetensors").write_bytes((shards / "user_table_rank00000.safetensors").read_bytes())
    with pytest.raises(AssertionError, match="a shard is missing"):
        run_ranks(1, tmp_path / "out", "load", partial)
