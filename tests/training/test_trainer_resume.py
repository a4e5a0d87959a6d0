"""--resume on another number of ranks: 2 -> 1 and 1 -> 2 at ZeRO-2 and ZeRO-3, through DeepSpeed's universal
checkpoint behind the same --resume; the examples and the losses stay the uninterrupted run's.

Exact resume on the same number of ranks (kill -9, signals, a damaged newest checkpoint) is in
test_checkpointing.py and test_preemption.py; these runs are real 1- and 2-rank DeepSpeed jobs too.
"""

import pytest

from peapod_scale.training import checkpoint as checkpointing

import helpers
from helpers import losses, train_args

pytestmark = pytest.mark.distributed


# -- another number of ranks: 2 -> 1 and 1 -> 2 at ZeRO-2 and ZeRO-3 ----------------------------------------------

# dropout off: with the same global batch (4 x 2 accumulation x 2 ranks = 4 x 4 x 1 rank) and the same examples
# in the same micro-batches, a run on another number of ranks takes the same steps as the uninterrupted one
RANK_CHANGE = ("--dropout", "0", "--save-every", "4", "--keep-last", "0", "--num-workers", "1")
ONE_RANK = ("--grad-accum", "4")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """(dataset, run) of the uninterrupted 12-step 2-rank ZeRO-2 run with checkpoints at 4, 8 and 12."""
    return helpers.reference(tmp_path_factory, *RANK_CHANGE, steps=12)


@pytest.fixture(scope="module", params=["z2", "z3"])
def rank_changes(request, two_ranks, tmp_path_factory) -> dict:
    """ZeRO-2: the reference's step 4 continued on 1 rank to 8 (2 -> 1), then on 2 ranks to 12 (1 -> 2).
    ZeRO-3: 1 rank to 4, 2 ranks to 8 (1 -> 2), 1 rank to 12 (2 -> 1)."""
    data, reference = two_ranks
    run_dir = tmp_path_factory.mktemp(f"ranks-{request.param}") / "run"
    stage = ("--deepspeed", f"ds_configs/{request.param}.json")
    if request.param == "z2":
        helpers.run(train_args(data, run_dir, *RANK_CHANGE, *stage, *ONE_RANK, "--resume",
                                   str(reference / "checkpoints" / "step4"), steps=8), ranks=1)
        helpers.run(train_args(data, run_dir, *RANK_CHANGE, *stage, steps=12), ranks=2)
        sources = {"step4": reference / "checkpoints" / "step4", "step8": run_dir / "checkpoints" / "step8"}
    else:
        helpers.run(train_args(data, run_dir, *RANK_CHANGE, *stage, *ONE_RANK, steps=4), ranks=1)
        helpers.run(train_args(data, run_dir, *RANK_CHANGE, *stage, steps=8), ranks=2)
        helpers.run(train_args(data, run_dir, *RANK_CHANGE, *stage, *ONE_RANK, steps=12), ranks=1)
        sources = {"step4": run_dir / "checkpoints" / "step4", "step8": run_dir / "checkpoints" / "step8"}
    return {"stage": request.param, "run": run_dir, "reference": reference, "sources": sources}


def test_another_number_of_ranks_resumes_through_a_cached_universal_checkpoint(rank_changes):
    log = (rank_changes["run"] / "train.log").read_text()
    writers = {"z2": (2, 1), "z3": (1, 2)}[rank_changes["stage"]]
    for tag, (written, now) in zip(("step4", "step8"), (writers, writers[::-1])):
        source = rank_changes["sources"][tag]
        assert checkpointing.read_meta(source)["world_size"] == written
        assert f"resume: {tag} was written by {written} rank(s), this run has {now}: loading its universal" in log
        assert (source / "universal" / "zero").is_dir()  # cached next to the checkpoint
        assert checkpointing.checkpoint_problem(source) is None  # the checkpoint itself is untouched


def test_across_the_rank_changes_the_examples_and_the_losses_are_the_uninterrupted_runs(rank_changes):
    want, got = losses(rank_changes["reference"]), losses(rank_changes["run"])
    steps = sorted(got)
    assert steps == (list(range(5, 13)) if rank_changes["stage"] == "z2" else list(range(1, 13)))
    # (an uninterrupted ZeRO-3 run on 2 ranks takes the ZeRO-2 reference's steps to ~1e-7 here)
    assert [got[s] for s in steps] == pytest.approx([want[s] for s in steps], rel=1e-4)
    # the stream's global position at the end: the same global batches of every row source were read
    mine = checkpointing.read_meta(rank_changes["run"] / "checkpoints" / "step12")["stream"]
    theirs = checkpointing.read_meta(rank_changes["reference"] / "checkpoints" / "step12")["stream"]
    assert (mine["global_steps"], mine["sources"]) == (theirs["global_steps"], theirs["sources"]) and mine["sources"]
