"""A real 2-rank DeepSpeed job (gloo on CPU) through the deepspeed launcher, as users run it."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from peapod_scale.data.prepare.dataset import prepare_dataset

from helpers import REPO

pytestmark = pytest.mark.distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """40 users walking a ring of 30 items: the next item is predictable from the last one."""
    root = tmp_path_factory.mktemp("train-data")
    lines = [f"{u}\t{(u + k) % 30 + 1}\t4\t{100 * u + k}" for u in range(1, 41) for k in range(10)]
    (root / "u.data").write_text("\n".join(lines) + "\n")
    prepare_dataset("movielens", str(root / "u.data"), str(root / "ds"), seed=0, num_negatives=9, item_index="sequential")
    return root / "ds"


@pytest.fixture(scope="module")
def zero2_run(dataset, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("run") / "z2"
    command = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(_free_port()),
               "peapod_scale/train.py", "--data", str(dataset), "--output", str(run_dir),
               "--deepspeed", "ds_configs/z2.json", "--max-steps", "40", "--log-every", "5", "--micro-batch-size", "8",
               "--lr", "3e-3", "--warmup-steps", "5", "--dropout", "0", "--topn-candidates", "5",
               "--num-beams", "4", "--eval-limit", "12", "--eval-batch-size", "6",
               "--eval-every", "20", "--val-limit", "6"]
    result = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return run_dir


def _scalars(run_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return events


def test_zero2_on_two_ranks_lowers_the_loss(zero2_run):
    losses = [event.value for event in _scalars(zero2_run).Scalars("loss/total")]
    assert len(losses) == 8
    assert losses[-1] < 0.6 * losses[0], losses


def test_run_folder_holds_config_checkpoint_model_and_metrics(zero2_run):
    config = json.loads((zero2_run / "config.json").read_text())
    assert config["world_size"] == 2 and config["deepspeed"]["train_batch_size"] == 16
    best = json.loads((zero2_run / "best.json").read_text())
    assert best["metric"] == "sequential/NDCG@10" and best["step"] in (20, 40)
    assert [p.name for p in (zero2_run / "checkpoints").glob("best-step*")] == [best["tag"]]
    # the final model and test evaluation are of the best validated model; `latest` (what export loads) names it
    assert (zero2_run / "checkpoints" / "latest").read_text().strip() == (best["tag"] if best["step"] < 40 else "step40")
    assert (zero2_run / "model" / "backbone" / "model.safetensors").is_file()
    assert (zero2_run / "model" / "tokenizer.json").is_file()
    metrics = json.loads((zero2_run / "metrics_test.json").read_text())
    assert metrics["users"] == 12 and metrics["step"] == best["step"]
    for task in ("sequential", "topn"):
        assert set(metrics[task]) == {"model", "popularity", "transitions"}
        assert set(metrics[task]["model"]) == {"HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10"}


def _documented_tags() -> tuple[set[str], set[str]]:
    """(tags every run writes, GPU-only tags) from the README's TensorBoard table, placeholders expanded."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## TensorBoard scalars"):].split("\n## ", 1)[0]
    everywhere, gpu = set(), set()
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        tag, meaning = line.split("`")[1], line.split("|")[2]
        expanded = {tag.replace("<task>", t).replace("<metric>", m) for t in ("sequential", "topn")
                    for m in ("HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10")}
        (gpu if "(GPU)" in meaning else everywhere).update(expanded)
    return everywhere, gpu


def test_tensorboard_holds_every_documented_tag(zero2_run):
    everywhere, gpu = _documented_tags()
    assert len(everywhere) >= 24 and {"perf/mfu", "perf/tflops_per_s_per_rank"} == gpu
    tags = set(_scalars(zero2_run).Tags()["scalars"])
    assert everywhere <= tags, sorted(everywhere - tags)
    assert not gpu & tags  # no MFU without a GPU
    log = (zero2_run / "train.log").read_text()
    assert "samples/s" in log and "tok/s" in log and "peak mem" in log and "(data " in log


def test_single_process_evaluate_matches_the_two_rank_evaluation(zero2_run, dataset, tmp_path):
    out = tmp_path / "metrics.json"
    command = [sys.executable, "-m", "peapod_scale.cli", "evaluate", "--run-dir", str(zero2_run), "--data", str(dataset),
               "--num-beams", "4", "--eval-limit", "12", "--eval-batch-size", "5", "--output", str(out)]
    result = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "sequential" in result.stdout and "popularity" in result.stdout
    single = json.loads(out.read_text())
    two_ranks = json.loads((zero2_run / "metrics_test.json").read_text())
    for task in ("sequential", "topn"):
        for name, value in two_ranks[task]["model"].items():
            assert single[task]["model"][name] == pytest.approx(value, abs=1e-9), (task, name)


def _losses_of(run_dir: Path) -> list[float]:
    return [event.value for event in _scalars(run_dir).Scalars("loss/total")]


def test_zero3_with_the_triton_kernel_matches_the_reference_path(dataset, tmp_path):
    """ZeRO-3 partitions the pool; the kernel (Triton's interpreter on CPU) must see it gathered.
    The model is built under zero.Init here (the trainer passes the ZeRO-3 config to build_model).
    The tiny pool (32 x 3 x 64 = 6,144 elements) is below DeepSpeed's default
    stage3_param_persistence_threshold (1e5), which would keep it whole on every rank: the kernel's run
    sets it to 0, so every parameter is partitioned (exact in fp32: the losses still compare)."""
    z3 = json.loads((REPO / "ds_configs" / "z3.json").read_text())
    z3["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    (tmp_path / "z3_partition_everything.json").write_text(json.dumps(z3))
    ds_configs = {"torch": "ds_configs/z3.json", "triton": str(tmp_path / "z3_partition_everything.json")}
    losses = {}
    for backend in ("torch", "triton"):
        run_dir = tmp_path / backend
        command = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(_free_port()),
                   "peapod_scale/train.py", "--data", str(dataset), "--output", str(run_dir),
                   "--deepspeed", ds_configs[backend], "--max-steps", "4", "--log-every", "1", "--micro-batch-size", "4",
                   "--dropout", "0", "--topn-candidates", "5", "--compose", backend]
        # evaluation under ZeRO-3 is collective: 5 users on 2 ranks in batches of 2 leave rank 1 a batch short
        # and constrained decoding must still spell only valid items with the parameters partitioned
        command += (["--eval-limit", "5", "--eval-batch-size", "2", "--num-beams", "2", "--constrained-decoding"]
                    if backend == "torch" else ["--eval-split", "none"])
        env = {**_env(), "TRITON_INTERPRET": "1"} if backend == "triton" else _env()
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
        losses[backend] = _losses_of(run_dir)
        assert (run_dir / "model" / "peapod_prompts.safetensors").is_file()
    assert len(losses["torch"]) == 4
    metrics = json.loads((tmp_path / "torch" / "metrics_test.json").read_text())
    assert metrics["users"] == 5 and metrics["constrained"] is True
    assert metrics["invalid_answers"] == {"sequential": 0.0, "topn": 0.0}
    assert losses["triton"] == pytest.approx(losses["torch"], rel=1e-5, abs=1e-6)


# -- every ZeRO stage on 2 ranks: tiny runs sharing one set of options --------------------------------------------

ZERO_STEPS = 6


def _launch(dataset: Path, run_dir: Path, config: str, *extra: str, steps: int = ZERO_STEPS) -> Path:
    command = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(_free_port()),
               "peapod_scale/train.py", "--data", str(dataset), "--output", str(run_dir), "--deepspeed", config,
               "--max-steps", str(steps), "--log-every", "1", "--micro-batch-size", "4", "--lr", "3e-3",
               "--warmup-steps", "1", "--dropout", "0", "--topn-candidates", "5", "--eval-split", "none", *extra]
    result = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return run_dir


@pytest.fixture(scope="module")
def zero_runs(dataset, tmp_path_factory) -> dict[str, Path]:
    """ZeRO-0 (a config written here), 1, 2, 3, 3 with CPU offload, and 2 with activation checkpointing."""
    root = tmp_path_factory.mktemp("zero")
    z0 = json.loads((REPO / "ds_configs" / "z2.json").read_text())
    z0["zero_optimization"] = {"stage": 0}
    (root / "z0.json").write_text(json.dumps(z0))
    configs = {"z0": str(root / "z0.json"), "z1": "ds_configs/z1.json", "z2": "ds_configs/z2.json",
               "z3": "ds_configs/z3.json", "z3_offload": "ds_configs/z3_offload.json"}
    runs = {name: _launch(dataset, root / name, config) for name, config in configs.items()}
    runs["z2_ckpt"] = _launch(dataset, root / "z2_ckpt", "ds_configs/z2.json", "--activation-checkpointing")
    return runs


@pytest.mark.parametrize("name", ["z1", "z2", "z3", "z3_offload"])
def test_every_zero_stage_trains_on_two_ranks(zero_runs, name):
    losses = _losses_of(zero_runs[name])
    assert len(losses) == ZERO_STEPS
    assert losses[-1] < 0.9 * losses[0], losses
    log = (zero_runs[name] / "train.log").read_text()
    assert "precision fp32" in log
    assert ("offload optimizer+params" in log) == (name == "z3_offload")


def test_zero0_and_zero2_take_the_same_steps(zero_runs):
    assert _losses_of(zero_runs["z2"]) == pytest.approx(_losses_of(zero_runs["z0"]), rel=1e-4, abs=1e-5)
    assert _losses_of(zero_runs["z3"]) == pytest.approx(_losses_of(zero_runs["z0"]), rel=1e-3, abs=1e-4)


def test_activation_checkpointing_gives_the_same_losses(zero_runs):
    assert "activation checkpointing on" in (zero_runs["z2_ckpt"] / "train.log").read_text()
    assert _losses_of(zero_runs["z2_ckpt"]) == pytest.approx(_losses_of(zero_runs["z2"]), rel=1e-5, abs=1e-6)


def test_validation_stops_early_when_the_metric_stops_improving(dataset, tmp_path):
    """lr 0: every validation scores the same, so patience 1 stops at the second one (step 4 of 40)."""
    run_dir = _launch(dataset, tmp_path / "early", "ds_configs/z2.json", "--lr", "0", "--eval-every", "2",
                      "--val-limit", "4", "--patience", "1", "--num-beams", "2", "--eval-batch-size", "4", steps=40)
    best = json.loads((run_dir / "best.json").read_text())
    assert (best["step"], best["tag"]) == (2, "best-step2")
    assert "early stop at step 4" in (run_dir / "train.log").read_text()
    assert len(_losses_of(run_dir)) == 4
    valid = [e.step for e in _scalars(run_dir).Scalars("valid/sequential/NDCG@10")]
    assert valid == [2, 4]


def test_export_consolidates_the_zero2_checkpoint_to_a_model_with_the_same_metrics(zero2_run, dataset, tmp_path):
    exported = tmp_path / "exported"
    result = subprocess.run([sys.executable, "-m", "peapod_scale.cli", "export", "--run-dir", str(zero2_run),
                             "--output", str(exported)], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "GiB of RAM" in result.stdout
    run_config = json.loads((zero2_run / "config.json").read_text())
    assert json.loads((exported / "run_config.json").read_text()) == run_config  # evaluate reads the run's options
    out = tmp_path / "metrics.json"
    result = subprocess.run([sys.executable, "-m", "peapod_scale.cli", "evaluate", "--run-dir", str(exported),
                             "--data", str(dataset), "--num-beams", "4", "--eval-limit", "12", "--output", str(out)],
                            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    exported_metrics, run_metrics = json.loads(out.read_text()), json.loads((zero2_run / "metrics_test.json").read_text())
    for task in ("sequential", "topn"):
        assert exported_metrics[task]["model"] == pytest.approx(run_metrics[task]["model"], abs=1e-9), task


def test_export_of_a_zero3_checkpoint_equals_the_gathered_model(zero_runs, tmp_path):
    from safetensors.torch import load_file

    from peapod_scale.inference.export import export

    exported = export(zero_runs["z3"], tmp_path / "z3", log=lambda message: None)
    for name in ("peapod_prompts.safetensors", "backbone/model.safetensors"):
        mine, gathered = load_file(str(exported / name)), load_file(str(zero_runs["z3"] / "model" / name))
        assert mine.keys() == gathered.keys()
        for key in mine:
            assert torch.equal(mine[key], gathered[key]), key


def test_recommend_gives_k_distinct_unseen_original_item_ids(zero2_run, dataset):
    import pyarrow.parquet as pq

    result = subprocess.run([sys.executable, "-m", "peapod_scale.cli", "recommend", "--run-dir", str(zero2_run),
                             "--data", str(dataset), "--user", "7", "-k", "10"],
                            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    items = [line.split("\t")[1] for line in result.stdout.splitlines() if "\t" in line]
    originals = set(pq.read_table(dataset / "items.parquet").column("original").to_pylist())
    history = {str((7 + k) % 30 + 1) for k in range(10)}  # user 7's raw items, as the fixture wrote them
    assert len(items) == 10 and len(set(items)) == 10
    assert set(items) <= originals and not set(items) & history
    bad = subprocess.run([sys.executable, "-m", "peapod_scale.cli", "recommend", "--run-dir", str(zero2_run),
                          "--data", str(dataset), "--user", "nobody"], cwd=REPO, env=_env(), capture_output=True, text=True)
    assert bad.returncode == 2 and "nobody" in bad.stderr


def test_evaluate_under_a_launcher_on_two_ranks_equals_one_process(zero2_run, dataset, tmp_path):
    outputs = {}
    for ranks in (1, 2):
        out = tmp_path / f"metrics{ranks}.json"
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"] if ranks == 2 \
            else [sys.executable]
        result = subprocess.run(launcher + ["-m", "peapod_scale.cli", "evaluate", "--run-dir", str(zero2_run), "--data",
                                            str(dataset), "--num-beams", "4", "--eval-limit", "11", "--eval-batch-size", "3",
                                            "--output", str(out)],
                                cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-4000:]
        assert result.stdout.count("wrote ") == 1  # rank 0 alone writes and prints
        outputs[ranks] = json.loads(out.read_text())
    assert outputs[2]["users"] == 11
    for task in ("sequential", "topn"):
        assert outputs[2][task] == outputs[1][task], task
    assert outputs[2]["invalid_answers"] == outputs[1]["invalid_answers"]


def test_options_that_do_not_fit_the_data_stop_before_training_with_one_line(dataset, tmp_path):
    result = subprocess.run([sys.executable, "peapod_scale/train.py", "--data", str(dataset), "--output",
                             str(tmp_path / "run"), "--eval-tasks", "sequential,explanation"],
                            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "error: --eval-tasks sequential,explanation:" in result.stderr and "no explanation texts" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run" / "checkpoints").exists()
