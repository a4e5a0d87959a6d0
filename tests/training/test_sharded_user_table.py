"""--user-table sharded in real training: 2 gloo ranks under ZeRO-2 and ZeRO-3, each rank's rows and accumulators in
every checkpoint, kill -9 and the exact continuation, a damaged shard skipped by name, another number of ranks, and a
model folder that holds the whole table as a dense one (what evaluate, export and recommend read)."""

import shutil

import pytest
import torch
from safetensors.torch import load_file

from peapod_scale.model.peapod import PeaPOD
from peapod_scale.training import checkpoint as checkpointing

import helpers
from helpers import Job, losses, train_args

pytest.importorskip("torchrec", reason="--user-table sharded needs torchrec and fbgemm-gpu(-cpu)")
pytestmark = pytest.mark.distributed

SHARDED = ("--user-table", "sharded", "--user-lr", "0.05")
SHARDS = ["user_table_rank00000.safetensors", "user_table_rank00001.safetensors"]


def whole_table(tag_dir) -> torch.Tensor:
    """The rows of every shard of a checkpoint, in row order."""
    shards = [load_file(str(p)) for p in sorted(tag_dir.glob(checkpointing.shard_pattern()))]
    return torch.cat([s["weight"] for s in shards])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(dataset, run) of the uninterrupted 10-step 2-rank ZeRO-2 run with the sharded table."""
    return helpers.reference(tmp_path_factory, *SHARDED)


@pytest.fixture(scope="module")
def survived(reference, tmp_path_factory) -> dict:
    """Killed (kill -9 of the whole job) in the middle of a step after the checkpoint of step 3, then to the end."""
    data, _ = reference
    run_dir = tmp_path_factory.mktemp("sharded-killed") / "run"
    args = train_args(data, run_dir, *SHARDED)
    killed_at = helpers.kill_after_checkpoint(args, run_dir)
    return {"run": run_dir, "killed_at": killed_at, "codes": Job(args).wait()}


def test_each_rank_saves_its_rows_and_the_checkpoint_records_them(reference):
    _, run_dir = reference
    tag_dir = run_dir / "checkpoints" / "step9"
    files = checkpointing.read_meta(tag_dir)["files"]
    assert set(SHARDS) <= set(files)
    shards = [load_file(str(tag_dir / name)) for name in SHARDS]
    assert [s["weight"].shape[0] for s in shards] == [16, 15]  # 30 users + the unused row 0, over 2 ranks
    assert all(s["momentum"].shape == (s["weight"].shape[0],) for s in shards)
    assert (shards[0]["momentum"] > 0).any()  # the accumulators of the rows that trained
    log = (run_dir / "train.log").read_text()
    assert "user table: 31 x 64 sharded row-wise over 2 rank(s)" in log


def test_the_model_folder_holds_the_whole_table_as_a_dense_model(reference):
    _, run_dir = reference
    model = PeaPOD.from_pretrained(run_dir / "model")
    assert model.config.user_table == "dense"
    assert torch.equal(model.user_prompt.users.weight.detach(), whole_table(run_dir / "checkpoints" / "step10"))


def test_kill_9_then_the_same_command_continues_the_uninterrupted_losses(reference, survived):
    _, uninterrupted = reference
    assert survived["codes"] == [0, 0] and survived["killed_at"] >= 4
    want, got = losses(uninterrupted), losses(survived["run"])
    assert sorted(got) == list(range(1, helpers.STEPS + 1))
    for step in range(1, helpers.STEPS + 1):
        assert got[step] == pytest.approx(want[step], rel=1e-4), step
    assert torch.equal(whole_table(survived["run"] / "checkpoints" / "step10"),
                       whole_table(uninterrupted / "checkpoints" / "step10"))


def test_a_missing_or_damaged_shard_skips_that_checkpoint_naming_the_file(reference, tmp_path):
    _, run_dir = reference
    copy = helpers.copy_run(run_dir, tmp_path / "run")
    (copy / "checkpoints" / "step10" / SHARDS[1]).unlink()
    point = checkpointing.find_resume("auto", copy, overwrite=False)
    assert point.tag_dir.name == "step9"
    assert f"{SHARDS[1]} is missing" in point.skipped[0]
    shard = copy / "checkpoints" / "step9" / SHARDS[0]
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ValueError, match=f"{SHARDS[0]} is truncated"):
        checkpointing.find_resume("auto", copy, overwrite=False)


def test_two_ranks_rows_reload_on_one_rank(reference, tmp_path):
    """The 2-rank step-9 checkpoint continued on 1 rank (the global batch kept): its rows re-shard as they load."""
    data, run_dir = reference
    helpers.run(train_args(data, tmp_path / "one", *SHARDED, "--grad-accum", "4", "--resume",
                           str(run_dir / "checkpoints" / "step9"), steps=9), ranks=1)
    model = PeaPOD.from_pretrained(tmp_path / "one" / "model")  # no step trained: the table as loaded
    assert torch.equal(model.user_prompt.users.weight.detach(), whole_table(run_dir / "checkpoints" / "step9"))
    assert "this run has 1: loading its universal checkpoint" in (tmp_path / "one" / "train.log").read_text()


def test_zero3_trains_the_pool_prompt_with_the_sharded_table(reference, tmp_path):
    data, _ = reference
    helpers.run(train_args(data, tmp_path / "z3", *SHARDED, "--deepspeed", "ds_configs/z3.json", steps=6))
    assert set(SHARDS) <= set(checkpointing.read_meta(tmp_path / "z3" / "checkpoints" / "step6")["files"])
    model = PeaPOD.from_pretrained(tmp_path / "z3" / "model")
    assert torch.equal(model.user_prompt.users.weight.detach(), whole_table(tmp_path / "z3" / "checkpoints" / "step6"))
    shutil.rmtree(tmp_path / "z3")
