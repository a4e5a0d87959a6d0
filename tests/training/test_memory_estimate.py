import dataclasses
import json
import os
import subprocess
import sys

import pytest

from peapod_scale.config.estimate import EstimateConfig
from peapod_scale.training import memory_estimate as estimate

from helpers import REPO

MIB = 2**20

# a hand-sized model: two optimizer groups (6 + 10 elements, 4 elements), largest module 10
SMALL = estimate.ModelShape(params=20, largest_layer_params=10, d_model=4, inner=4, d_ff=8, heads=1, vocab=10,
                            encoder_layers=1, decoder_layers=1, prompt_tokens=0, param_sizes=(6, 10, 4),
                            group_sizes=((6, 10), (4,)))


def _settings(**changes) -> estimate.ZeroSettings:
    base = dict(stage=2, reduce_bucket_size=100, overlap_comm=False, contiguous_gradients=True,
                prefetch_bucket_size=2, param_persistence_threshold=5, model_persistence_threshold=10**9,
                max_reuse_distance=10**9, sub_group_size=10**9, offload_optimizer=False, offload_param=False,
                torch_adam=True)
    return estimate.ZeroSettings(**{**base, **changes})


def test_meta_count_matches_a_real_model():
    from peapod_scale.config.train import TrainConfig
    from peapod_scale.model.build import prompt_config
    from peapod_scale.model.peapod import PeaPOD
    from peapod_scale.model.presets import RELEASED_VOCAB_SIZE

    real = PeaPOD.from_preset("tiny", RELEASED_VOCAB_SIZE, prompt_config(TrainConfig(data="", output=""), 10_000))
    shape = estimate.model_shape("tiny")
    assert shape.params == sum(p.numel() for p in real.parameters()) == sum(shape.param_sizes)
    assert sum(map(sum, shape.group_sizes)) == shape.params and len(shape.group_sizes) == 3  # body, no decay, embeddings
    assert shape.largest_layer_params == 32128 * 64  # the token embedding


def test_paper_formula_partitions_as_the_paper_says():
    psi, ranks = 1_000_000, 4
    mixed = [sum(estimate.paper_model_states(psi, stage, ranks).values()) for stage in range(4)]
    assert mixed == [16 * psi, 4 * psi + 12 * psi / ranks, 2 * psi + 14 * psi / ranks, 16 * psi / ranks]
    fp32 = [sum(estimate.paper_model_states(psi, stage, ranks, "fp32").values()) for stage in range(4)]
    assert fp32 == [16 * psi, 8 * psi + 8 * psi / ranks, 4 * psi + 12 * psi / ranks, 16 * psi / ranks]


def test_settings_are_read_from_the_config_with_deepspeeds_defaults():
    _, z2 = estimate.recommended_config(2, False, ranks=8, micro_batch=4, precision="bf16")
    z2 = estimate.zero_settings(z2)
    assert (z2.stage, z2.reduce_bucket_size, z2.overlap_comm, z2.torch_adam) == (2, 500_000_000, False, True)
    _, offload = estimate.recommended_config(3, True, ranks=8, micro_batch=4, precision="bf16")
    offload = estimate.zero_settings(offload)
    assert offload.overlap_comm and offload.offload_optimizer and offload.offload_param  # stage 3 overlaps by default
    assert (offload.param_persistence_threshold, offload.max_reuse_distance, offload.prefetch_bucket_size) == \
        (100_000, 1_000_000_000, 50_000_000)
    name, z0 = estimate.recommended_config(0, False, ranks=1, micro_batch=4, precision="bf16")
    assert estimate.zero_settings(z0).stage == 0 and "stage" in name
    custom = estimate.zero_settings({"zero_optimization": {"stage": 3, "reduce_bucket_size": 1000,
                                                           "stage3_max_reuse_distance": 77}})
    assert (custom.reduce_bucket_size, custom.max_reuse_distance, custom.torch_adam) == (1000, 77, False)
    with pytest.raises(ValueError):
        estimate.recommended_config(2, True, ranks=2, micro_batch=4, precision="bf16")


def test_zero2_counts_what_deepspeed_allocates():
    states = estimate.deepspeed_model_states(SMALL, _settings(), ranks=2, device="cpu")
    parts = {p.name: p.bytes for p in states.parts}
    # groups of 16 and 4 elements (padded to 2N = 4) in halves of 8 and 2; rank 0 keeps the gradients of all
    # three parameters that overlap its halves: 20 elements
    assert parts == {"parameters": 2 * 20, "fp32 master weights": 4 * 10, "Adam moments": 8 * 10,
                     "gradient partition": 2 * 20, "reduction bucket": 2 * 100, "all-reduce flat copy": 2 * 20,
                     "fp32 gradient partition": 4 * 8}
    # one bucket holds every gradient, so the partition is allocated after its all-reduce: the flat copy and the
    # partition are not held together
    assert states.during("backward") == states.during("reduce") == 40 + 40 + 80 + 200 + 40 == states.peak()
    overlapped = estimate.deepspeed_model_states(SMALL, _settings(overlap_comm=True), ranks=2, device="cpu")
    assert overlapped.peak() == states.peak() + 200  # a second bucket
    on_gpu = estimate.deepspeed_model_states(SMALL, _settings(reduce_bucket_size=4), ranks=2, device="cuda")
    assert on_gpu.peak_phase() == "step" and on_gpu.peak() == 160 + 40 + 32 + 32  # + foreach AdamW's temporary
    assert on_gpu.during("reduce") == 160 + 40 + 2 * 4 + 2 * 4  # several buckets: the partition already exists
    fp32 = estimate.deepspeed_model_states(SMALL, _settings(), ranks=2, precision="fp32", device="cpu")
    assert {p.name: p.bytes for p in fp32.parts}["fp32 master weights"] == 40  # a copy even in fp32


def test_zero3_counts_partitions_persistence_and_gathering():
    zero = _settings(stage=3, max_reuse_distance=6)
    parts = {p.name: p.bytes for p in estimate.deepspeed_model_states(SMALL, zero, ranks=2, device="cpu").parts}
    # partitions ceil(6/2) + ceil(10/2) + ceil(4/2) = 10 elements; the 4-element parameter is persistent
    assert parts["parameter partitions"] == 2 * 10 and parts["persistent parameters"] == 2 * 4
    assert parts["gradient partition"] == 2 * 10 and parts["reduction bucket"] == 2 * 100
    # gathered: the reuse distance + prefetch (8) bounds it, but never below two of the largest layer (20) or
    # above what is not persistent (16)
    assert parts["gathered parameters"] == 2 * 16
    few = estimate.ModelShape(**{**SMALL.__dict__, "largest_layer_params": 3})
    parts = {p.name: p.bytes for p in estimate.deepspeed_model_states(few, zero, ranks=2, device="cpu").parts}
    assert parts["gathered parameters"] == 2 * 8
    fp32 = estimate.deepspeed_model_states(SMALL, zero, ranks=2, precision="fp32", device="cpu")
    assert {p.name: p.bytes for p in fp32.parts}["fp32 master weights"] == 4 * 10  # DeepSpeed copies it in fp32 too
    offload = estimate.deepspeed_model_states(SMALL, _settings(stage=3, offload_optimizer=True, offload_param=True),
                                              ranks=2)
    assert offload.peak("gpu") == 2 * 4 + 2 * 100 + 2 * 16  # persistent, bucket, gathered
    assert offload.peak("cpu") == 2 * 10 + 4 * 10 + 8 * 10 + 2 * 10 + 4 * 10


def test_report_reads_the_recommended_config(capsys):
    args = EstimateConfig(arch="t5-small", zero=3, offload=True, deepspeed=None, precision="bf16", nodes=2,
                          gpus_per_node=4, micro_batch_size=32, encoder_len=128, decoder_len=8, users=10_000)
    text = estimate.report(args)
    assert "--deepspeed z3_offload" in text and "8 GPU(s)" in text and "activation-checkpointing" in text
    assert "reduction bucket                      0.93 GiB" in text  # 5e8 bf16 elements, DeepSpeed's default
    with pytest.raises(ValueError):
        estimate.report(dataclasses.replace(args, zero=2, deepspeed="z3"))


# ----------------------------------------------------------------------------------------------
# against a real engine: 2 gloo ranks, the trainer's own engine, a census of its tensors in a step
# ----------------------------------------------------------------------------------------------

_DRIVER = r"""
import gc, json, sys
from peapod_scale.config.estimate import EstimateConfig
from peapod_scale.training import memory_estimate as estimate
from peapod_scale.config.train import parse_train_config
from peapod_scale.tools.memory_census import measure_steps
from peapod_scale.training.trainer import Trainer
data, out_dir, runs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
results = []
for name, precision in runs:
    cfg = parse_train_config(["--data", data, "--output", f"{out_dir}/{name}-{precision}", "--deepspeed",
                              f"{out_dir}/{name}.json", "--precision", precision, "--micro-batch-size", "4",
                              "--eval-split", "none", "--resume", "none", "--overwrite", "--num-workers", "0"])
    trainer = Trainer(cfg)
    mine = measure_steps(trainer, steps=2)
    ranks = trainer.collectives.gather_objects(mine["peak"])
    results.append({"name": name, "precision": precision, "peaks": ranks, "ds_config": trainer.ds_config,
                    "shape": estimate.shape_of(trainer.engine.module).__dict__})
    trainer.signals.uninstall()
    if trainer.writer is not None:
        trainer.writer.close()
    trainer.engine.destroy()
    del trainer
    gc.collect()
if results and __import__("torch").distributed.get_rank() == 0:
    open(f"{out_dir}/results.json", "w").write(json.dumps(results))
__import__("torch").distributed.destroy_process_group()
"""

# buckets and the reuse distance sized against the model (0.25 M elements), so that every part counts: several
# buckets at stage 1, one at stage 2 (twice: overlap_comm), ZeRO-3's gathering capped by the reuse distance
_ENGINE_CONFIGS = {
    "stage0": {"stage": 0},
    "stage1": {"stage": 1, "reduce_bucket_size": 100_000},
    "stage2": {"stage": 2, "reduce_bucket_size": 300_000, "overlap_comm": True},
    "stage3": {"stage": 3, "reduce_bucket_size": 100_000, "stage3_max_reuse_distance": 150_000,
               "stage3_prefetch_bucket_size": 20_000, "stage3_param_persistence_threshold": 100},
    "offload": {"stage": 3, "reduce_bucket_size": 100_000, "offload_optimizer": {"device": "cpu"},
                "offload_param": {"device": "cpu"}},
}
_RUNS = [("stage0", "bf16"), ("stage1", "fp32"), ("stage2", "bf16"), ("stage3", "bf16"), ("offload", "bf16")]


@pytest.fixture(scope="module")
def engine_censuses(tmp_path_factory):
    from peapod_scale.data.prepare.dataset import prepare_dataset

    root = tmp_path_factory.mktemp("estimate-engine")
    lines = [f"{u}\t{(u + k) % 30 + 1}\t4\t{100 * u + k}" for u in range(1, 41) for k in range(10)]
    (root / "u.data").write_text("\n".join(lines) + "\n")
    prepare_dataset("movielens", str(root / "u.data"), str(root / "ds"), seed=0, num_negatives=9, neighbors=0)
    base = json.loads((REPO / "ds_configs" / "z2.json").read_text())
    for name, zero in _ENGINE_CONFIGS.items():
        (root / f"{name}.json").write_text(json.dumps({**base, "zero_optimization": zero}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "--no-python", sys.executable, "-c", _DRIVER, str(root / "ds"), str(root),
                           json.dumps(_RUNS)], cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return {(r["name"], r["precision"]): r for r in json.loads((root / "results.json").read_text())}


@pytest.mark.distributed
@pytest.mark.parametrize("run", _RUNS, ids=[f"{n}-{p}" for n, p in _RUNS])
def test_estimate_is_within_10_percent_of_a_real_engine(engine_censuses, run):
    result = engine_censuses[run]
    shape = estimate.ModelShape(**{**result["shape"], "param_sizes": tuple(result["shape"]["param_sizes"]),
                                   "group_sizes": tuple(map(tuple, result["shape"]["group_sizes"]))})
    zero = estimate.zero_settings(result["ds_config"])
    states = estimate.deepspeed_model_states(shape, zero, ranks=2, precision=run[1], device="cpu")
    predicted = states.peak("gpu") + states.peak("cpu")
    peak = max(result["peaks"], key=lambda p: p["model_states"])
    assert predicted == pytest.approx(peak["model_states"], rel=0.10), (predicted / MIB, peak)
    # the buckets DeepSpeed holds are exactly the configured sizes
    buckets = sum(p.bytes for p in states.parts if "bucket" in p.name)
    assert peak["bytes"].get("buckets", 0) == buckets
