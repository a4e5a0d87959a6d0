"""Checkpoints on 2 real ranks: complete-only saves, kill -9 and exact resume, skipped broken checkpoints,
refused incompatible ones; and the checks behind them on real checkpoint files."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from peapod_scale.training import checkpoint as checkpointing

import helpers
from helpers import Job, latest, logged_step, losses, train_args, wait_until

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(dataset, run) of the uninterrupted 10-step 2-rank ZeRO-2 run, checkpoints every 3 steps."""
    return helpers.reference(tmp_path_factory)


@pytest.fixture(scope="module")
def survived(reference, tmp_path_factory) -> dict:
    """The same command three times in one run folder: killed (kill -9 of the whole process group) in the
    middle of a step after the checkpoint of step 3, then killed during the save of step 6, then to the end."""
    data, _ = reference
    run_dir = tmp_path_factory.mktemp("survived") / "run"
    args = train_args(data, run_dir)
    first = Job(args)
    wait_until(lambda: latest(run_dir) == "step3" and logged_step(run_dir) >= 4, first, "step 4 after checkpoint step3",
               poll=0.01)
    first.kill()
    after_first = {"logged": logged_step(run_dir), "latest": latest(run_dir)}

    second = Job(args)
    tmp = run_dir / "checkpoints" / ".tmp-step6"
    wait_until(lambda: tmp.is_dir() and any(tmp.iterdir()), second, "the save of step 6 under way", poll=0.002)
    second.kill()
    after_second = {"latest": latest(run_dir), "tmp_left": tmp.is_dir(), "step6": (run_dir / "checkpoints" / "step6").exists(),
                    "log": (run_dir / "train.log").read_text()}
    codes = Job(args).wait()
    return {"run": run_dir, "first": after_first, "second": after_second, "codes": codes}


def test_kill_9_mid_step_then_the_same_command_continues_the_uninterrupted_losses(reference, survived):
    _, uninterrupted = reference
    assert survived["codes"] == [0, 0]
    assert survived["first"]["latest"] == "step3" and survived["first"]["logged"] >= 4  # killed after step 3's save
    want, got = losses(uninterrupted), losses(survived["run"])  # losses() also checks that no step shows twice
    assert sorted(got) == list(range(1, helpers.STEPS + 1))
    for step in range(1, helpers.STEPS + 1):
        assert got[step] == pytest.approx(want[step], rel=1e-4), step
    for task in ("loss/sequential", "loss/topn", "loss/explanation"):  # every task, every step after the stop
        assert losses(survived["run"], task) == pytest.approx(losses(uninterrupted, task), rel=1e-4)
    log = (survived["run"] / "train.log").read_text()
    assert log.count("resumed from") == 2 and log.count(f"{survived['run'] / 'checkpoints' / 'step3'} at step 3") == 2


@pytest.fixture(scope="module")
def zero3_survived(tmp_path_factory) -> dict:
    """ZeRO-3 (every rank holds a slice of each parameter): uninterrupted, and killed mid-step after step 3's save."""
    stage = ("--deepspeed", "ds_configs/z3.json")
    data, uninterrupted = helpers.reference(tmp_path_factory, *stage)
    run_dir = tmp_path_factory.mktemp("zero3-killed") / "run"
    args = train_args(data, run_dir, *stage)
    killed_at = helpers.kill_after_checkpoint(args, run_dir)
    return {"uninterrupted": uninterrupted, "run": run_dir, "killed_at": killed_at, "codes": Job(args).wait()}


def test_kill_9_at_zero3_then_the_same_command_continues_the_uninterrupted_losses(zero3_survived):
    assert zero3_survived["codes"] == [0, 0] and zero3_survived["killed_at"] >= 4
    want, got = losses(zero3_survived["uninterrupted"]), losses(zero3_survived["run"])
    assert sorted(got) == list(range(1, helpers.STEPS + 1))
    for step in range(4, helpers.STEPS + 1):
        assert got[step] == pytest.approx(want[step], rel=1e-4), step
    assert "resumed from" in (zero3_survived["run"] / "train.log").read_text()


def test_a_kill_during_the_save_leaves_latest_on_the_previous_complete_checkpoint(survived):
    second = survived["second"]
    assert second["tmp_left"] and not second["step6"]  # killed while the step-6 files were being written
    assert second["latest"] == "step3"
    folder = survived["run"] / "checkpoints"
    assert not list(folder.glob(".tmp-*"))  # the next attempt removed the half-written save


def test_periodic_checkpoints_keep_the_last_two_and_record_what_they_hold(reference):
    data, run_dir = reference
    folder = run_dir / "checkpoints"
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["step10", "step9"]  # 3 and 6 pruned
    assert latest(run_dir) == "step10"
    meta = checkpointing.read_meta(folder / "step9")
    assert (meta["step"], meta["world_size"], meta["zero_stage"], meta["precision"]) == (9, 2, 2, "fp32")
    assert meta["config"]["save_every"] == 3 and meta["dataset"]["users"] == 30
    assert meta["stream"]["micro_batches"] == 9 * 2 * 1  # 9 steps x 2 micro-batches on each rank
    files = meta["files"]
    assert {"rng_rank00000.pt", "rng_rank00001.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= set(files)
    rng = [torch.load(folder / "step9" / checkpointing.rng_file(r), weights_only=True) for r in (0, 1)]
    assert not torch.equal(rng[0]["torch"], rng[1]["torch"])  # each rank's own dropout stream
    assert checkpointing.checkpoint_problem(folder / "step9") is None


@pytest.fixture
def broken_copy(reference, tmp_path) -> Path:
    return helpers.copy_run(reference[1], tmp_path / "run")


@pytest.mark.parametrize("damage", ["truncated", "missing rank shard", "unreadable pickle"])
def test_a_damaged_checkpoint_is_named(broken_copy, damage):
    tag_dir = broken_copy / "checkpoints" / "step10"
    shard = tag_dir / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    if damage == "truncated":
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
        expected = "zero_pp_rank_1_mp_rank_00_optim_states.pt: not a readable torch checkpoint"
    elif damage == "missing rank shard":
        shard.unlink()
        expected = "zero_pp_rank_1_mp_rank_00_optim_states.pt is missing (a rank's shard of 2 ranks)"
    else:
        shard.write_bytes(os.urandom(shard.stat().st_size))
        expected = "zero_pp_rank_1_mp_rank_00_optim_states.pt: not a readable torch checkpoint"
    assert expected in checkpointing.checkpoint_problem(tag_dir)
    point = checkpointing.find_resume("auto", broken_copy, overwrite=False)
    assert point.tag_dir.name == "step9" and expected in point.skipped[0]


def test_a_checkpoint_with_code_in_it_is_refused_not_skipped(broken_copy):
    class RunsCode:
        def __reduce__(self):
            return os.system, ("true",)

    shard = broken_copy / "checkpoints" / "step10" / "mp_rank_00_model_states.pt"
    state = torch.load(shard, weights_only=False)  # our own file, written by the reference run
    state["payload"] = RunsCode()
    torch.save(state, shard)
    with pytest.raises(checkpointing.UnsafeCheckpoint, match="refusing to load it: unpickling would import .*system"):
        checkpointing.find_resume("auto", broken_copy, overwrite=False)


def test_a_truncated_newest_checkpoint_is_skipped_with_a_warning_and_the_previous_one_continues(reference, broken_copy):
    data, uninterrupted = reference
    shard = broken_copy / "checkpoints" / "step10" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    shard.write_bytes(shard.read_bytes()[:1000])
    helpers.run(train_args(data, broken_copy, "--max-steps", "10"))
    log = (broken_copy / "train.log").read_text()
    assert f"warning: skipping checkpoint step10: {shard}: not a readable torch checkpoint" in log
    assert f"resumed from {broken_copy / 'checkpoints' / 'step9'} at step 9" in log
    assert losses(broken_copy)[10] == pytest.approx(losses(uninterrupted)[10], rel=1e-4)
    assert checkpointing.checkpoint_problem(broken_copy / "checkpoints" / "step10") is None  # replaced, whole


def _snapshot(run_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def _train_once(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=helpers.REPO, env=helpers.env(), capture_output=True,
                          text=True, timeout=helpers.TIMEOUT)


@pytest.mark.parametrize("change, message", [
    (("--arch", "mini"), "the checkpoint was trained with --arch tiny, this run has --arch mini"),
    (("--data", "OTHER"), "the checkpoint was trained on other data: users count 30 in the checkpoint, 24 in --data"),
])
def test_an_incompatible_checkpoint_is_one_error_line_and_the_run_folder_is_left_as_it_was(reference, broken_copy,
                                                                                           tmp_path, change, message):
    data, _ = reference
    if change[0] == "--data":
        reviews = [json.loads(line) for line in (data.parent / "reviews.json").read_text().splitlines()]
        other = tmp_path / "other"
        other.mkdir()
        (other / "reviews.json").write_text("".join(json.dumps(r) + "\n" for r in reviews if int(r["reviewerID"][1:]) < 24))
        checkpointing_data = other / "ds"
        from peapod_scale.data.prepare.dataset import prepare_dataset

        prepare_dataset("amazon-reviews", str(other / "reviews.json"), str(checkpointing_data), seed=0,
                        num_negatives=9, neighbors=0)
        change = ("--data", str(checkpointing_data))
    before = _snapshot(broken_copy)
    done = _train_once(train_args(data, broken_copy, *change, "--num-workers", "0"))  # one process: 1 rank of 2
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], done.stderr[-3000:]
    assert errors[0].startswith("peapod-scale train: error: --resume auto:") and "Traceback" not in done.stderr
    assert _snapshot(broken_copy) == before


def test_resume_none_refuses_a_run_folder_with_checkpoints_unless_told_to_overwrite(reference, broken_copy):
    data, _ = reference
    before = _snapshot(broken_copy)
    done = _train_once(train_args(data, broken_copy, "--resume", "none"))
    assert done.returncode == 2 and "--resume none:" in done.stderr and "--overwrite" in done.stderr
    assert _snapshot(broken_copy) == before


def test_find_resume_reads_each_kind_of_path(reference, tmp_path):
    _, run_dir = reference
    folder = run_dir / "checkpoints"
    for where in (run_dir, folder):
        assert checkpointing.find_resume(str(where), tmp_path, overwrite=False).tag_dir == folder / "step10"
    assert checkpointing.find_resume(str(folder / "step9"), tmp_path, overwrite=False).meta["step"] == 9
    assert checkpointing.find_resume("auto", tmp_path, overwrite=False) is None  # an empty run folder: fresh start
    with pytest.raises(ValueError, match="also holds newer checkpoints \\(step10\\)"):
        checkpointing.find_resume(str(folder / "step9"), run_dir, overwrite=False)
    with pytest.raises(ValueError, match="not a checkpoints folder"):
        checkpointing.find_resume(str(tmp_path), tmp_path, overwrite=False)


def test_no_room_for_another_checkpoint_is_one_line_naming_the_folder_and_the_bytes(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    assert checkpointing.room_problem(tmp_path, free // 2) is None
    problem = checkpointing.room_problem(tmp_path, free + 10**12)
    assert problem.startswith(f"{tmp_path}: not enough disk space for another checkpoint: it needs about "
                              f"{free + 10**12:,} bytes")
