#!/usr/bin/env bash
# The GPU check: everything in peapod-scale that only a GPU can show, in one run of at most ~8 minutes
# on one H100/H200 (GPU_CHECK_BUDGET_S, default 470 s; a step that would start past it is skipped and
# says so).
#
#   bash benchmarks/gpu_check.sh                  # results under $OUT if set, else benchmarks/results/
#   PEAPOD_COMMIT=$(git rev-parse --short HEAD) bash benchmarks/gpu_check.sh   # a tree without .git
#
# In order (most important first; each step has its own time limit and log, a failure does not stop
# the rest):
#   kernel_tests     the compose kernels compiled for real: tests/test_kernels_triton_compose.py (the
#                    TestTritonKernel class on CUDA, bitwise repeatability included, and the GPU-only
#                    tests) and tests/test_compose.py (auto's fallback without a host compiler); the
#                    interpreter run and the ahead-of-time compiles are left to CPU CI
#   bench_headline   benchmarks/bench_prompt_compose.py at the headline shapes (bf16, forward /
#                    backward / full, checked against the reference first, CUDA-graph figure)
#   prepare          a synthetic dataset (no network needed)
#   t5base_z2        bf16 ZeRO-2 training of t5-base, 50 steps, with its MFU (perf/mfu)
#   t5small_z2/_z3   bf16 training of t5-small at ZeRO-2 and ZeRO-3, 50 steps each
#   evaluate         `evaluate` of the ZeRO-2 run (one dtype, on the GPU)
#   export           `export` of the ZeRO-3 run, then a check that every exported tensor is fp32
#   recommend        `recommend` from the exported folder
#   bench_training   the compose benchmark at PeaPOD's training shapes (full forward + backward)
#   bench_train_1gpu benchmarks/bench_train.py on the one GPU: a plain PyTorch loop against the trainer at
#                    ZeRO-2 (t5-small, bf16), samples/s and where a step's time goes (issue 14's per-step
#                    engine overhead; the 2-rank comparison needs a second GPU)
#   bench_host_syncs benchmarks/bench_host_syncs.py: the training loop with the old per-step device waits
#                    against the trainer's loop (issue 14's step-time change from removing them)
# then summary.json: device, each step's exit status and time, the t5-base MFU and step time, and the
# compose op's share of a t5-base step at the same batch and width.
#
# Without a CUDA GPU it says so and exits 0 (the CPU checks are the test suite's). To try the script
# itself on CPU: GPU_CHECK_DRY_RUN=1 GPU_CHECK_BASE_ARCH=tiny GPU_CHECK_SMALL_ARCH=tiny GPU_CHECK_STEPS=3
# GPU_CHECK_MICRO_BATCH=4 (every step runs, on the CPU; the kernel tests then skip their GPU classes;
# GPU_CHECK_LIMIT_SCALE multiplies each step's time limit, for a slow machine).
set -u -o pipefail
base_arch="${GPU_CHECK_BASE_ARCH:-t5-base}"
small_arch="${GPU_CHECK_SMALL_ARCH:-t5-small}"
steps="${GPU_CHECK_STEPS:-50}"
micro_batch="${GPU_CHECK_MICRO_BATCH:-64}"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
budget="${GPU_CHECK_BUDGET_S:-470}"
started=$SECONDS

# A python with torch: $PYTHON, the project's venv, or the system's.
py=""
for candidate in "${PYTHON:-}" "$repo/.venv/bin/python" python3; do
  if [ -n "$candidate" ] && "$candidate" -c "import torch" >/dev/null 2>&1; then py="$candidate"; break; fi
done
if [ -z "$py" ]; then
  echo "gpu_check: no python with torch found (set PYTHON): nothing to check"
  exit 0
fi
if [ -z "${GPU_CHECK_DRY_RUN:-}" ] && ! "$py" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
  echo "gpu_check: no CUDA GPU visible to $py (torch.cuda.is_available() is False): nothing to check here"
  exit 0
fi

device="$("$py" -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu-dry-run')")"
slug="$(printf '%s' "$device" | tr -cs 'A-Za-z0-9' '-' | sed 's/^-*//; s/-*$//')"
out="${OUT:-$repo/benchmarks/results}/gpu_check-$(date -u +%Y%m%dT%H%M%SZ)-$slug"
mkdir -p "$out"
work="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
summary="$out/steps.tsv"
printf 'step\texit\tseconds\n' > "$summary"

export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
export PEAPOD_COMMIT="${PEAPOD_COMMIT:-$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)}"
unset DS_ACCELERATOR TRITON_INTERPRET  # the real accelerator, compiled kernels

# peapod_scale importable without an install: a package folder of links, kernels/ where the install puts it
if ! "$py" -c "import peapod_scale.kernels" >/dev/null 2>&1; then
  mkdir -p "$work/pkg/peapod_scale"
  for entry in "$repo"/peapod_scale/*; do ln -s "$entry" "$work/pkg/peapod_scale/"; done
  ln -s "$repo/kernels" "$work/pkg/peapod_scale/kernels"
  export PYTHONPATH="$work/pkg${PYTHONPATH:+:$PYTHONPATH}"
fi

{
  echo "device: $device"
  echo "commit: $PEAPOD_COMMIT"
  echo "python: $py"
  nvidia-smi 2>/dev/null || true
  "$py" - <<'EOF'
import importlib
for name in ("torch", "triton", "deepspeed", "transformers", "safetensors", "pyarrow", "tokenizers", "pytest"):
    try:
        print(f"{name} {importlib.import_module(name).__version__}")
    except Exception as error:  # noqa: BLE001
        print(f"{name} MISSING ({type(error).__name__}: {error})")
import torch
if torch.cuda.is_available():
    print("cuda", torch.version.cuda, "capability", torch.cuda.get_device_capability(), "bf16", torch.cuda.is_bf16_supported())
EOF
} > "$out/env.txt" 2>&1
cat "$out/env.txt"

step() {  # step NAME LIMIT_S COMMAND...: run it with a time limit, log to $out/NAME.log, record exit and time
  local name="$1" limit="$2"; shift 2
  local left=$((budget - (SECONDS - started)))
  if [ "$left" -lt 15 ]; then
    printf '%s\tskipped (out of time)\t0\n' "$name" >> "$summary"; echo "== $name: skipped, out of time"; return
  fi
  limit=$((limit * ${GPU_CHECK_LIMIT_SCALE:-1}))
  [ "$limit" -gt "$left" ] && limit="$left"
  echo "== $name (limit ${limit} s)"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >> "$summary"
  echo "   exit $rc after $((SECONDS - t0)) s; last lines:"; tail -n 4 "$out/$name.log" | sed 's/^/   /'
}

# one GPU, bf16, 50 steps; each run adds --output, --arch and --deepspeed
train=("$py" -m torch.distributed.run --standalone --nproc_per_node 1 -m peapod_scale.train
       --data "$work/data" --precision bf16 --max-steps "$steps" --warmup-steps 5 --log-every 10
       --micro-batch-size "$micro_batch" --dropout 0 --topn-candidates 20 --eval-split none)

step kernel_tests 180 "$py" -m pytest -q -p no:cacheprovider tests/test_kernels_triton_compose.py \
  tests/test_compose.py -k "not interpreter and not compile_for_h100" --junitxml="$out/kernel_tests.xml"
step bench_headline 110 "$py" benchmarks/bench_prompt_compose.py --shapes headline --results "$out"
step prepare 60 "$py" -m peapod_scale.cli prepare --source synthetic --output "$work/data" \
  --num-users 2000 --num-items 1000 --num-interactions 40000 --neighbors 0
step t5base_z2 150 "${train[@]}" --output "$work/t5base_z2" --arch "$base_arch" --deepspeed ds_configs/z2.json
step t5small_z2 90 "${train[@]}" --output "$work/t5small_z2" --arch "$small_arch" --deepspeed ds_configs/z2.json
step t5small_z3 100 "${train[@]}" --output "$work/t5small_z3" --arch "$small_arch" --deepspeed ds_configs/z3.json
step evaluate 60 "$py" -m peapod_scale.cli evaluate --run-dir "$work/t5small_z2" --data "$work/data" \
  --split test --tasks sequential,topn --eval-limit 64 --num-beams 4 --output "$out/evaluate_t5small_z2.json"
step export 60 "$py" -m peapod_scale.cli export --run-dir "$work/t5small_z3" --output "$work/export_z3"
step export_is_fp32 30 "$py" - "$work/export_z3" <<'EOF'
import sys
from pathlib import Path
from safetensors import safe_open

dtypes = {}
files = sorted(Path(sys.argv[1]).rglob("*.safetensors"))
for path in files:
    with safe_open(str(path), "pt") as f:
        for key in f.keys():
            dtypes.setdefault(str(f.get_slice(key).get_dtype()), []).append(f"{path.name}:{key}")
print({k: len(v) for k, v in dtypes.items()}, "in", [p.name for p in files])
floats = {k: v for k, v in dtypes.items() if k.upper().startswith(("F", "BF"))}
assert files and set(floats) == {"F32"}, f"exported floating-point tensors are not all fp32: { {k: v[:3] for k, v in floats.items()} }"
print("export is fp32")
EOF
step recommend 60 "$py" -m peapod_scale.cli recommend --run-dir "$work/export_z3" --data "$work/data" \
  --user synthetic_user_0 -k 10
step bench_training 200 "$py" benchmarks/bench_prompt_compose.py --shapes training --mode full --rep-ms 50 \
  --results "$out"
step bench_train_1gpu 150 "$py" benchmarks/bench_train.py --data "$work/data" --arch "$small_arch" --parts throughput \
  --configs ddp z2 --ranks 1 --scaling --gpu --precision bf16 --repeats 1 --micro-batch "$micro_batch" \
  --steps 40 --log-every 10 --code worktree --results "$out"
step bench_host_syncs 60 "$py" benchmarks/bench_host_syncs.py --data "$work/data" --arch "$small_arch" \
  --micro-batch "$micro_batch" --results "$out"

"$py" - "$out" "$work" "$device" "$PEAPOD_COMMIT" <<'EOF' | tee "$out/summary.txt"
import json, sys
from pathlib import Path

out, work, device, commit = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
steps = [dict(zip(("step", "exit", "seconds"), line.split("\t"))) for line in (out / "steps.tsv").read_text().splitlines()[1:]]
summary = {"device": device, "commit": commit, "steps": steps}
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

for run in ("t5base_z2", "t5small_z2", "t5small_z3"):
    try:
        events = EventAccumulator(str(work / run / "tensorboard"))
        events.Reload()
        tags = set(events.Tags()["scalars"])
        summary[run] = {tag: events.Scalars(tag)[-1].value for tag in (
            "perf/mfu", "time/step_s", "perf/tflops_per_s_per_rank", "loss/total", "memory/peak_gib") if tag in tags}
    except Exception as error:  # noqa: BLE001 - a run that did not get that far
        summary[run] = {"error": f"{type(error).__name__}: {error}"}
rows = []
bench = out / "bench_prompt_compose.jsonl"
if bench.exists():
    rows = [json.loads(line) for line in bench.read_text().splitlines() if line.strip()]
share = [r for r in rows if r.get("mode") == "full" and r.get("provider") == "triton" and r.get("B") == 64
         and r.get("D") == 768 and r.get("H") == 4 and r.get("M") == 32 and r.get("L") == 3]
step_s = summary.get("t5base_z2", {}).get("time/step_s")
if share and step_s:
    summary["compose_share_of_t5base_step"] = {"compose_full_ms": share[-1]["ms_median"], "step_ms": 1000 * step_s,
                                               "share": share[-1]["ms_median"] / (1000 * step_s)}
summary["goals"] = [r for r in rows if r.get("provider") == "triton" and r.get("mode") == "full" and r.get("B") == 256
                    and r.get("H") == 8 and r.get("M") == 64 and r.get("L") == 16 and r.get("dtype") == "bf16"]
summary["goals"] = [{k: r.get(k) for k in ("D", "ms_median", "graph_ms", "speedup_vs_eager", "speedup_vs_compile",
                                             "copy_fraction")} for r in summary["goals"]]
(out / "summary.json").write_text(json.dumps(summary, indent=1))
print(json.dumps(summary, indent=1))
EOF
echo "gpu_check: results in $out ($((SECONDS - started)) s)"
rm -rf "$work"
