"""Evaluation batches sized from the model and a memory budget, halved on a real out-of-memory error,
and kept in lock-step when ranks with different budgets generate together (ZeRO-3's ``synced``)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from peapod_scale.data.batches import TaskBatcher
from peapod_scale.data.dataset import read_rows
from peapod_scale.eval.evaluate import _max_answer_tokens, evaluate
from peapod_scale.eval.generation_memory import RowLimit, bytes_per_row, is_out_of_memory
from peapod_scale.model.peapod import PeaPOD, PeaPODConfig

from helpers import prepare_small

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
GIB = 2**30
FLAN_T5_XL = SimpleNamespace(d_model=2048, d_kv=64, num_heads=32, num_layers=24, num_decoder_layers=24, d_ff=5120,
                             vocab_size=32128)


def test_the_cross_attention_cache_dominates_and_matches_the_issue_figures():
    # 32 users x 20 beams of ~300-token top-N prompts in bf16: the issue's estimate is ~35 GiB for flan-t5-xl,
    # 2 x 24 layers x 20 beams x 300 tokens x 2048 x 2 bytes = 0.92 GiB per row for the cache alone
    per_row = bytes_per_row(FLAN_T5_XL, prompt_tokens=300, num_beams=20, answer_tokens=4, dtype_bytes=2)
    cache = 2 * 24 * 20 * 300 * 2048 * 2
    assert cache < per_row < 1.25 * cache
    assert 35 <= 32 * per_row / GIB <= 44
    assert bytes_per_row(FLAN_T5_XL, prompt_tokens=600, num_beams=20, answer_tokens=4, dtype_bytes=2) > 1.9 * per_row


def test_row_limit_fits_the_budget_never_drops_below_one_and_halves():
    model = SimpleNamespace(t5=SimpleNamespace(config=FLAN_T5_XL), config=SimpleNamespace(prompt_tokens=6),
                            parameters=lambda: iter([torch.zeros(1, dtype=torch.bfloat16)]))
    per_row = bytes_per_row(FLAN_T5_XL, prompt_tokens=306, num_beams=20, answer_tokens=4, dtype_bytes=2)
    limit = RowLimit(model, batch_size=32, num_beams=20, answer_tokens=4, budget=int(5.5 * per_row))
    assert limit.rows(300) == 5
    assert limit.rows(10) == 32  # short prompts: the whole batch fits
    assert RowLimit(model, batch_size=32, num_beams=20, answer_tokens=4, budget=per_row // 3).rows(300) == 1
    assert RowLimit(model, batch_size=32, num_beams=20, answer_tokens=4, budget=None).rows(300) == 32
    limit.halve(5)
    assert limit.rows(300) == 2 and limit.rows(10) == 2 and limit.halvings == 1
    limit.halve(2)
    limit.halve(1)
    assert limit.rows(10) == 1


def test_out_of_memory_is_recognised_from_the_real_cpu_allocator():
    with pytest.raises(RuntimeError) as caught:
        torch.empty(2**62, dtype=torch.uint8)  # more than any machine has: the allocator refuses at once
    assert is_out_of_memory(caught.value)
    assert is_out_of_memory(MemoryError()) and is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch")) and not is_out_of_memory(ValueError("x"))


class RecordingPeaPOD(PeaPOD):
    """A real PeaPOD that notes the rows and prompt width of every generate call, then generates."""

    calls: list

    def generate(self, input_ids, *args, **kwargs):
        self.calls.append((input_ids.shape[0], input_ids.shape[1]))
        return super().generate(input_ids, *args, **kwargs)


def _mini(manifest, codec, arch="mini") -> RecordingPeaPOD:
    torch.manual_seed(0)
    config = PeaPODConfig(num_users=manifest["counts"]["users"], pool_size=4, user_dim=8, key_dim=8)
    model = RecordingPeaPOD(config, PeaPOD.from_preset(arch, codec.vocab_size, config, dropout_rate=0.0).t5).eval()
    model.calls = []
    return model


@pytest.fixture(scope="module")
def long_prompts(tmp_path_factory):
    """24 users, top-N prompts of 100 candidates (~140 tokens with space-separated ids), a saved mini model."""
    root = tmp_path_factory.mktemp("memory")
    data, manifest, codec = prepare_small(root, users=24, items=300, num_negatives=99)
    model = _mini(manifest, codec)
    model.save_pretrained(root / "model")
    reference = evaluate(model, codec, data, manifest, tasks=["topn"], batch_size=24, num_beams=20)
    assert model.calls == [(24, model.calls[0][1])]  # the reference: one call, nothing split
    return root, data, manifest, codec, reference


def test_a_memory_budget_splits_batches_into_calls_that_fit_and_changes_no_number(long_prompts):
    root, data, manifest, codec, reference = long_prompts
    model = _mini(manifest, codec)
    width = max(TaskBatcher(codec, manifest["counts"]["items"], seed=42)(read_rows(data, manifest, "test"), "topn",
                                                                       with_labels=False)["input_ids"].shape[1], 1)

    answer_tokens = _max_answer_tokens(codec, manifest["counts"]["items"]) + 1  # as evaluate() counts them

    def per_row(tokens):
        return bytes_per_row(model.t5.config, prompt_tokens=tokens + model.config.prompt_tokens, num_beams=20,
                             answer_tokens=answer_tokens, dtype_bytes=4)

    budget = 5 * per_row(width)
    results = evaluate(model, codec, data, manifest, tasks=["topn"], batch_size=12, num_beams=20, memory_budget=budget)
    rows = [n for n, _ in model.calls]
    assert sum(rows) == 24 and max(rows) <= 5 and len(rows) >= 6  # 2 batches of 12, each in 3+ calls
    assert all(n * per_row(w) <= budget for n, w in model.calls)
    assert results["generation"]["topn"]["rows_per_call"] == max(rows)
    assert results["topn"] == reference["topn"] and results["invalid_answers"] == reference["invalid_answers"]


OOM_CHILD = textwrap.dedent("""
    import json, resource, sys
    import torch
    from peapod_scale.data.dataset import read_manifest
    from peapod_scale.data.tokenizer import load_codec
    from peapod_scale.eval.evaluate import _max_answer_tokens, evaluate
    from peapod_scale.eval.generation_memory import bytes_per_row
    from peapod_scale.model.peapod import PeaPOD

    data, model_dir, rows_of_headroom, longest, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    manifest, codec = read_manifest(data), load_codec(data)
    model = PeaPOD.from_pretrained(model_dir).eval()
    per_row = bytes_per_row(model.t5.config, prompt_tokens=longest + model.config.prompt_tokens, num_beams=20,
                            answer_tokens=_max_answer_tokens(codec, manifest["counts"]["items"]) + 1, dtype_bytes=4)
    headroom = int(rows_of_headroom * per_row)
    evaluate(model, codec, data, manifest, tasks=["topn"], batch_size=2, num_beams=20, limit=2)  # warm up
    size = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize"))
    resource.setrlimit(resource.RLIMIT_AS, (size + headroom, resource.RLIM_INFINITY))
    # a budget too large to limit anything: as if the estimate were wrong for this machine
    results = evaluate(model, codec, data, manifest, tasks=["topn"], batch_size=24, num_beams=20,
                       memory_budget=10**15)
    json.dump(results, open(out, "w"))
""")


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "DS_ACCELERATOR": "cpu",
            "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")
def test_a_real_out_of_memory_halves_the_rows_and_retries_them(long_prompts, tmp_path):
    """The address space is capped 6 estimated rows above what the process uses (sized from the real longest
    prompt, so the cap follows the prompt format): 24 rows x 20 beams cannot be allocated, the CPU allocator
    raises, and the evaluation retries in halves."""
    root, data, manifest, codec, reference = long_prompts
    out = tmp_path / "results.json"
    longest = reference["generation"]["topn"]["longest_prompt_tokens"]
    done = subprocess.run([sys.executable, "-c", OOM_CHILD, str(data), str(root / "model"), "6", str(longest), str(out)],
                          env=_env(), cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    generation = results["generation"]["topn"]
    assert generation["oom_halvings"] >= 1 and generation["rows_per_call"] <= 12, generation
    assert results["topn"] == reference["topn"] and results["invalid_answers"] == reference["invalid_answers"]


LOCKSTEP_WORKER = textwrap.dedent("""
    import json, os, sys
    import torch
    import torch.distributed as dist
    from peapod_scale.data.dataset import read_manifest
    from peapod_scale.data.tokenizer import load_codec
    from peapod_scale.eval.evaluate import _max_answer_tokens, evaluate
    from peapod_scale.eval.generation_memory import bytes_per_row
    from peapod_scale.model.peapod import PeaPOD
    from test_generation_memory import RecordingPeaPOD

    data, model_dir, out, longest = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    manifest, codec = read_manifest(data), load_codec(data)
    loaded = PeaPOD.from_pretrained(model_dir)
    model = RecordingPeaPOD(loaded.config, loaded.t5)
    model.load_state_dict(loaded.state_dict())
    model.calls = []
    per_row = bytes_per_row(model.t5.config, prompt_tokens=longest + model.config.prompt_tokens, num_beams=20,
                            answer_tokens=_max_answer_tokens(codec, manifest["counts"]["items"]) + 1, dtype_bytes=4)
    budget = 2 * per_row if rank == 0 else None  # rank 0 fits 2 rows of the longest prompts a call, rank 1 a batch
    results = evaluate(model, codec, data, manifest, tasks=["topn"], batch_size=6, num_beams=20, rank=rank,
                       world_size=world, synced=True, memory_budget=budget)
    json.dump({"calls": model.calls, "results": results}, open(f"{out}.{rank}", "w"))
    dist.destroy_process_group()
""")


def test_ranks_with_different_budgets_make_the_same_number_of_calls_in_lock_step(long_prompts, tmp_path):
    root, data, manifest, codec, reference = long_prompts
    worker = tmp_path / "worker.py"
    worker.write_text(LOCKSTEP_WORKER)
    out = tmp_path / "rank"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker),
               str(data), str(root / "model"), str(out), str(reference["generation"]["topn"]["longest_prompt_tokens"])]
    done = subprocess.run(command, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads(Path(f"{out}.{rank}").read_text()) for rank in (0, 1)]
    calls = [[n for n, _ in r["calls"]] for r in ranks]
    # 12 rows per rank in 2 batches of 6: rank 0's budget takes 2 rows per call, so 3 calls per batch; rank 1
    # could run a batch in one call, but follows: every rank makes the calls the most constrained one needs
    assert calls[0] == calls[1] == [2] * 6
    for r in ranks:
        assert r["results"]["topn"] == reference["topn"]
