"""SIGTERM / SIGUSR1 on 2 real ranks: the step finishes, a checkpoint is written at the step reached, every
rank exits 75, RUN/preempted.json says so, and the same command continues the loss curve."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from peapod_scale.training import checkpoint as checkpointing
from peapod_scale.training import preemption

import helpers
from helpers import Job, logged_step, losses, train_args, wait_until


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return helpers.reference(tmp_path_factory)


def _stopped(run_dir) -> dict:
    """The marker, and what is wrong (None: nothing) with the checkpoint it names, right after an attempt."""
    marker = json.loads((run_dir / preemption.MARKER).read_text())
    tag_dir = run_dir / marker["checkpoint"]
    return {"marker": marker, "problem": checkpointing.checkpoint_problem(tag_dir),
            "saved_step": checkpointing.read_meta(tag_dir)["step"] if (tag_dir / checkpointing.META_FILE).is_file()
            else None}


@pytest.fixture(scope="module")
def preempted(reference, tmp_path_factory) -> dict:
    """One run folder, three attempts of the same command: SIGTERM to every process of the job (as a cluster
    signals a job step's tasks; twice, the second during the stop), then SIGUSR1 to torchrun (which forwards
    it), then to the end."""
    data, _ = reference
    run_dir = tmp_path_factory.mktemp("preempted") / "run"
    args = train_args(data, run_dir, "--save-every", "100")  # the signals' checkpoints are the only ones
    first = Job(args)
    wait_until(lambda: logged_step(run_dir) >= 2, first, "step 2")
    first.signal_ranks(signal.SIGTERM)
    time.sleep(0.05)
    first.signal_ranks(signal.SIGTERM)
    attempts = [{"codes": first.wait(), "output": first.output(), **_stopped(run_dir)}]

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "--signals-to-handle", "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1", "--shutdown-timeout", "600", *args]
    torchrun = subprocess.Popen(command, cwd=helpers.REPO, env=helpers.env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
    stopped_at = attempts[0]["marker"]["step"]
    deadline = time.monotonic() + helpers.TIMEOUT
    while logged_step(run_dir) < stopped_at + 2 and torchrun.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    torchrun.send_signal(signal.SIGUSR1)
    output, _ = torchrun.communicate(timeout=helpers.TIMEOUT)
    attempts.append({"code": torchrun.returncode, "output": output, **_stopped(run_dir)})
    attempts.append({"codes": Job(args).wait(), "marker": (run_dir / preemption.MARKER).exists()})
    return {"run": run_dir, "attempts": attempts}


def test_sigterm_checkpoints_the_step_reached_and_every_rank_exits_75(preempted):
    first = preempted["attempts"][0]
    assert first["codes"] == [preemption.EXIT_PREEMPTED] * 2, first["output"]
    marker = first["marker"]
    step = marker["step"]
    assert step >= 2 and marker["signal"] == "SIGTERM" and marker["checkpoint"] == f"checkpoints/step{step}"
    assert set(marker) == {"step", "signal", "checkpoint", "time", "slurm_job_id", "slurm_restart_count"}
    assert first["problem"] is None and first["saved_step"] == step
    assert "SIGTERM received: stopped after step" in first["output"]


def test_sigusr1_through_torchrun_stops_the_next_attempt_the_same_way(preempted):
    first, second = preempted["attempts"][:2]
    marker = second["marker"]
    assert second["code"] != 0  # torchrun reports any worker exit as a failure: the marker is what tells
    assert marker["signal"] == "SIGUSR1" and marker["step"] > first["marker"]["step"], second["output"][-3000:]
    assert second["problem"] is None and second["saved_step"] == marker["step"]
    assert marker["checkpoint"] == f"checkpoints/step{marker['step']}"


def test_the_same_command_then_finishes_with_the_uninterrupted_losses_and_no_marker(reference, preempted):
    last = preempted["attempts"][2]
    assert last["codes"] == [0, 0] and not last["marker"]  # the stale marker went when the attempt started
    want, got = losses(reference[1]), losses(preempted["run"])
    assert sorted(got) == list(range(1, helpers.STEPS + 1))
    assert [got[s] for s in sorted(got)] == pytest.approx([want[s] for s in sorted(want)], rel=1e-4)


def test_signals_are_recorded_not_acted_on_until_asked_and_repeats_are_counted():
    stops = preemption.StopSignals().install()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)  # a second one, e.g. during the save: the process lives on
        assert (stops.received, stops.repeats) == (signal.SIGUSR1, 1)
        with pytest.raises(preemption.Preempted, match="SIGUSR1"):
            with stops.interrupting():
                pass
    finally:
        stops.uninstall()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_after_training_a_signal_interrupts_at_once():
    stops = preemption.StopSignals().install()
    try:
        with pytest.raises(preemption.Preempted, match="SIGTERM"):
            with stops.interrupting():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # interrupted long before
    finally:
        stops.uninstall()


def test_the_marker_names_the_slurm_job_and_is_replaced_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    preemption.write_marker(tmp_path, 30, "SIGUSR1", "checkpoints/step30")
    marker = json.loads((tmp_path / preemption.MARKER).read_text())
    assert (marker["step"], marker["slurm_job_id"], marker["slurm_restart_count"]) == (30, 4242, 1)
    assert [p.name for p in tmp_path.iterdir()] == [preemption.MARKER]  # no temporary file left
    preemption.clear_marker(tmp_path)
    preemption.clear_marker(tmp_path)  # none: nothing to do
    assert not (tmp_path / preemption.MARKER).exists()


class _Pids(torch.utils.data.IterableDataset):
    def __iter__(self):
        for i in range(3):
            yield os.getpid(), i
            time.sleep(0.5)


def test_loader_workers_forked_without_sigterm_outlive_it():
    """PyTorch's loader workers exit on SIGTERM; forked with it blocked they finish their batches."""
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        with preemption.forking_without_sigterm():
            batches = iter(torch.utils.data.DataLoader(_Pids(), batch_size=None, num_workers=1))
            worker, first = next(batches)
            signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)  # pending until the block ends
            assert received == []
        assert received == [signal.SIGTERM]
        os.kill(worker, signal.SIGTERM)
        assert [first] + [i for _, i in batches] == [0, 1, 2]
    finally:
        signal.signal(signal.SIGTERM, previous)
