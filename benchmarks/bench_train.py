"""peapod-scale against a plain PyTorch DDP loop, and the memory each ZeRO stage holds against the formulas.

    python benchmarks/bench_train.py --data /tmp/bench_train/beauty                 # tiny and t5-small, all parts
    python benchmarks/bench_train.py --data D --arch tiny --parts throughput --repeats 5
    python benchmarks/bench_train.py --data D --arch tiny --precision fp32 bf16     # a table per precision
    python benchmarks/bench_train.py --report RUN_ID                                # reprint a run's tables and plot

``--data``: a dataset folder written by ``peapod-scale prepare`` (e.g. ``--source p5`` of the shared Beauty
data); keep it outside the repository.

Throughput: the same model (``--arch``), data, micro batch and steps, all in one run, with the configs taking
turns (DDP, ZeRO-0, 1, 2, 3, 3 + offload, then the 1-rank runs, then again, ``--repeats`` times) so that
other load on a shared machine hits all alike:
- ``ddp``: a plain PyTorch loop written here (``ddp_child``), launched with torchrun: the model built by the
  trainer's own ``build_model`` without DeepSpeed, wrapped in ``DistributedDataParallel``; torch AdamW over
  ``optimizer_groups`` with the DeepSpeed config's betas, eps, weight decay and gradient clipping; the
  trainer's warm-up + cosine schedule; batches from the trainer's ``task_stream`` (same data cost); losses
  stay on the device until a log step; bf16/fp16 by ``torch.autocast`` with fp32 weights (PyTorch's usual
  mixed precision; DeepSpeed keeps 16-bit weights instead);
- ``z0`` (ds_configs/z1.json with stage 0), ``z1``, ``z2``, ``z3``, ``z3_offload``: ``peapod-scale train``
  itself (subprocesses, ``--nproc-per-node``), samples/s read from its TensorBoard events.
Both count a window of ``--log-every`` steps the same way (examples of all ranks / its wall time, the
trainer's ``StepMeter``); the first ``--skip-windows`` windows (start-up, first allocations) are left out and
a run's figure is its examples over its time in the kept windows. The table gives the median over the
repetitions, their spread (min-max), and the median of the per-repetition ratios to DDP. Both also clock
where a step's time goes with the trainer's ``StepMeter`` (data, forward, backward, optimizer; on CUDA one
synchronized step a window), so a gap to DDP can be pinned on a phase.

``--precision``: each precision is a table of its own, the runs taking turns as above. fp32 is the CPU
default; bf16 is what the shipped configs ask for (on CPUs with AVX512-BF16 it runs at full speed): DeepSpeed
then keeps bf16 weights and gradients, the DDP loop autocasts with fp32 weights and gradients, as PyTorch
users usually do.

Collectives (``collectives_child``): the gradient all-reduce, reduce-scatter and all-gather of the
partitions, timed alone on ``--ranks`` ranks of the runs' backend at the model's trainable size, in fp32 and
the runs' 16-bit type. DDP issues one all-reduce a step; DeepSpeed's ZeRO-1/2 issues an all-reduce and then an
all-gather of the updated partitions. Their difference, next to DDP's step time, bounds the ZeRO-2 / DDP ratio
from the collectives alone on that backend (the goal lines print it).

Memory (``memory_child``): the trainer's engine (``Trainer``, as ``peapod-scale train`` builds it) runs
``--memory-steps`` steps on 2 ranks with ``peapod_scale.tools.memory_census.StepProbes`` taking censuses of its
tensors inside the step; the peak model state per rank (parameters, gradients, master weights, moments,
DeepSpeed's buckets and copies) is shown beside the ZeRO paper's formula and ``estimate.deepspeed_model_states``
for the same config (on CPU, so without the foreach temporaries a GPU's torch AdamW adds), in bf16 (DeepSpeed's
CPU accelerator trains bf16 with the GPU's byte counts) and fp32. Sizes are storage sizes: what an allocator
hands out, touched or not.

``--code`` (default HEAD) exports that commit's peapod_scale/, kernels/ and ds_configs/ into a temp folder
and measures them, so other people's uncommitted edits are not measured (``worktree``: the working tree).
One JSON row per measurement goes to benchmarks/results/bench_train.jsonl as soon as it is done (machine,
load, versions, date, commit, ``run_id``); the end prints Markdown tables and saves
benchmarks/results/bench_train_<run_id>.md and .png (matplotlib).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import common

ROWS_FILE = "bench_train.jsonl"
CONFIGS = ["ddp", "z0", "z1", "z2", "z3", "z3_offload"]
MEMORY_CONFIGS = ["z0", "z1", "z2", "z3", "z3_offload"]
LABELS = {"ddp": "PyTorch DDP", "z0": "ZeRO-0", "z1": "ZeRO-1", "z2": "ZeRO-2", "z3": "ZeRO-3",
          "z3_offload": "ZeRO-3 + offload"}
# per preset: micro batch, steps, log window (t5-small is ~10x slower per example on these CPUs)
PRESET_RUNS = {"tiny": (32, 60, 10), "t5-small": (8, 24, 4)}
GOAL_Z2_VS_DDP = 1.0
PHASES = ("data", "forward", "backward", "optimizer")  # the trainer's StepMeter phases, seconds per step


def label(config: str) -> str:
    """A config's name in tables: the shipped ones by stage, an --extra-config by its own name."""
    return LABELS.get(config, config)


def _in_order(configs) -> list[str]:
    """The shipped configs in stage order, then any --extra-config in the order first seen."""
    seen = list(dict.fromkeys(configs))
    return [c for c in CONFIGS if c in seen] + [c for c in seen if c not in CONFIGS]
GOAL_ESTIMATE = 0.10


# ----------------------------------------------------------------------------------------------
# children, run on every rank under torchrun
# ----------------------------------------------------------------------------------------------

def _split_child_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=3)  # _memory
    parser.add_argument("--dtypes", nargs="+", default=["fp32"])  # _collectives
    parser.add_argument("--reps", type=int, default=20)  # _collectives
    own, train_args = parser.parse_known_args(argv)
    return own, [a for a in train_args if a != "--"]


def _start_child(argv: list[str]):
    """A torchrun child without DeepSpeed: its options, the trainer's config, this rank, its device."""
    import torch
    import torch.distributed as dist

    from peapod_scale.config.train import parse_train_config
    from peapod_scale.distributed import ranks as distributed

    own, train_args = _split_child_args(argv)
    cfg = parse_train_config(train_args)
    info = distributed.discover(cfg.local_rank)
    cuda = distributed.use_cuda()
    if cuda:
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(distributed.process_group_backend())
    return own, cfg, info, torch.device("cuda", info.local_rank) if cuda else torch.device("cpu")


def ddp_child(argv: list[str]) -> None:
    """The baseline: the trainer's model, data and optimizer settings in a plain DDP loop."""
    import contextlib
    import dataclasses

    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from peapod_scale.config.train import TrainConfig
    from peapod_scale.data.batches import TaskBatcher
    from peapod_scale.data.dataset import read_manifest, task_stream
    from peapod_scale.data.tasks import parse_task_weights
    from peapod_scale.data.tokenizer import load_codec
    from peapod_scale.distributed import ds_config
    from peapod_scale.model.build import build_model
    from peapod_scale.training.lr_schedule import warmup_cosine
    from peapod_scale.training.metrics import StepMeter, device_peak_flops, flop_counter
    from peapod_scale.training.optimizer import optimizer_groups

    own, cfg, info, device = _start_child(argv)
    cuda = device.type == "cuda"
    torch.manual_seed(cfg.seed)
    manifest = read_manifest(cfg.data)
    default_tasks = next(f.default for f in dataclasses.fields(TrainConfig) if f.name == "tasks")
    weights = parse_task_weights(cfg.tasks, cfg.task_weights, manifest["tasks"], data=cfg.data,
                                 tasks_is_default=cfg.tasks == default_tasks)
    codec = load_codec(cfg.data, cfg.model)
    config = ds_config.resolve(cfg.deepspeed, world_size=info.world_size, micro_batch_size=cfg.micro_batch_size,
                               grad_accum=cfg.grad_accum, lr=cfg.lr, precision=cfg.precision)
    if config["gradient_accumulation_steps"] != 1:
        raise SystemExit("ddp_child: gradient accumulation is not implemented in the baseline")
    micro = config["train_micro_batch_size_per_gpu"]
    batcher = TaskBatcher(codec, manifest["counts"]["items"], cfg.topn_candidates, cfg.seed,
                          topn_history=cfg.topn_history)  # the trainer's prompts: the same data cost
    stream = task_stream(cfg.data, manifest, weights, batcher, micro, info.rank, info.world_size, cfg.seed,
                         cfg.shuffle_buffer, cfg.num_workers, 1)
    model = build_model(cfg, manifest["counts"]["users"], codec.vocab_size).to(device)
    params = config["optimizer"].get("params", {})
    lr = ds_config.peak_lr(config)
    optimizer = torch.optim.AdamW(optimizer_groups(model, lr, cfg.embedding_lr_scale, backbone_is_random=cfg.model is None),
                                  lr=lr, betas=tuple(params.get("betas", (0.9, 0.999))), eps=params.get("eps", 1e-8),
                                  weight_decay=params.get("weight_decay", 0.01))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg.warmup_steps, cfg.max_steps))
    clip = float(config.get("gradient_clipping", 0.0))
    precision = ds_config.precision(config)
    autocast = torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[precision]) \
        if precision != "fp32" else contextlib.nullcontext()
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    ddp = DistributedDataParallel(model, device_ids=[info.local_rank] if cuda else None)
    flops_of = flop_counter(model.t5, trains_backbone=cfg.train == "all")
    prompt_tokens = model.config.prompt_tokens
    peak_flops = device_peak_flops()

    windows, losses = [], []
    samples = flops = 0.0
    meter = StepMeter()  # the trainer's phase clock (on CUDA: one synchronized step a window), times only
    started = time.perf_counter()
    batches = iter(stream)
    ddp.train()
    for step in range(1, cfg.max_steps + 1):
        _, batch = next(batches)
        samples += batch["input_ids"].shape[0]
        flops += flops_of(batch["input_ids"].shape[0], batch["input_ids"].shape[1] + prompt_tokens,
                          batch["labels"].shape[1])
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        meter.phase("data")
        with autocast:
            loss = ddp(**batch).loss
        meter.phase("forward")
        (scaler.scale(loss) if scaler else loss).backward()
        meter.phase("backward")
        if scaler:
            scaler.unscale_(optimizer)
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        meter.phase("optimizer")
        meter.end_step()
        losses.append(loss.detach())  # on the device until the log step
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            totals = torch.tensor([samples, flops, float(torch.stack(losses).sum()), len(losses)], dtype=torch.float64)
            dist.all_reduce(totals)
            elapsed = time.perf_counter() - started
            window = {"step": step, "samples": totals[0].item(), "seconds": elapsed,
                      "loss": totals[2].item() / totals[3].item(),
                      "phases": {name: meter.seconds[name] / max(meter.timed_steps, 1) for name in meter.PHASES}}
            if peak_flops:
                window["mfu"] = totals[1].item() / info.world_size / elapsed / peak_flops
            windows.append(window)
            samples = flops = 0.0
            losses = []
            meter.reset()
            started = time.perf_counter()
    batches.close()
    if info.rank == 0:
        Path(own.out).write_text(json.dumps({"windows": windows, "precision": precision, "world_size": info.world_size}))
    dist.destroy_process_group()


def memory_child(argv: list[str]) -> None:
    """The trainer's engine for a few steps, with censuses of its tensors inside each step (rank 0 writes all ranks')."""
    import dataclasses

    import torch

    from peapod_scale.config.train import parse_train_config
    from peapod_scale.distributed import ds_config
    from peapod_scale.tools.memory_census import measure_steps
    from peapod_scale.training import memory_estimate as estimate
    from peapod_scale.training.trainer import Trainer

    own, train_args = _split_child_args(argv)
    cfg = parse_train_config(train_args)
    trainer = Trainer(cfg)
    engine = trainer.engine
    shape = estimate.shape_of(engine.module, backbone_is_random=cfg.model is None)
    mine = {"rank": trainer.dist.rank, **measure_steps(trainer, own.steps)}
    ranks = trainer.collectives.gather_objects(mine)
    if trainer.dist.is_main:
        Path(own.out).write_text(json.dumps({
            "ranks": ranks, "shape": dataclasses.asdict(shape), "ds_config": trainer.ds_config,
            "optimizer": type(engine.optimizer).__name__, "inner_optimizer": type(engine.basic_optimizer).__name__,
            "world_size": trainer.dist.world_size, "precision": ds_config.precision(trainer.ds_config),
            "torch_threads": torch.get_num_threads()}))
    trainer.close()


def collectives_child(argv: list[str]) -> None:
    """The collectives a step issues, on the model's gradient size and the run's backend, timed alone.

    DDP all-reduces the gradients once a step. DeepSpeed's ZeRO-1/2 all-reduces them too (its default
    ``use_multi_rank_bucket_allreduce``; with it off, one reduce per rank moves the same bytes on gloo) and
    then all-gathers the updated partitions. What that all-gather costs on this backend is a floor under
    ZeRO-2's step that no setting of the trainer removes: this child measures it.
    """
    import statistics as stats

    import torch
    import torch.distributed as dist

    from peapod_scale.data.dataset import read_manifest
    from peapod_scale.data.tokenizer import load_codec
    from peapod_scale.model.build import build_model

    own, cfg, info, device = _start_child(argv)
    cuda = device.type == "cuda"
    manifest = read_manifest(cfg.data)
    model = build_model(cfg, manifest["counts"]["users"], load_codec(cfg.data, cfg.model).vocab_size)
    numel = sum(p.numel() for p in model.parameters() if p.requires_grad)
    del model
    ranks = info.world_size
    numel -= numel % ranks
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    measured = {}
    for name in own.dtypes:
        full = torch.randn(numel, device=device).to(dtypes[name])
        shard = torch.empty(numel // ranks, dtype=full.dtype, device=device)
        gathered = torch.empty_like(full)
        ops = {"all_reduce": lambda: dist.all_reduce(full),
               "reduce_scatter": lambda: dist.reduce_scatter_tensor(shard, full),
               "all_gather": lambda: dist.all_gather_into_tensor(gathered, shard)}
        measured[name] = {}
        for op, call in ops.items():
            times = []
            try:
                for rep in range(own.reps + 2):  # 2 warm-ups
                    dist.barrier()
                    started = time.perf_counter()
                    call()
                    if cuda:
                        torch.cuda.synchronize()
                    if rep >= 2:
                        times.append(time.perf_counter() - started)
            except (RuntimeError, NotImplementedError) as error:  # a backend without the op
                measured[name][op] = {"error": str(error).splitlines()[0][:200]}
                continue
            slowest = torch.tensor([stats.median(times)], dtype=torch.float64, device=device)
            dist.all_reduce(slowest, op=dist.ReduceOp.MAX)  # a collective ends when its slowest rank does
            measured[name][op] = {"ms": 1000 * slowest.item()}
    if info.rank == 0:
        Path(own.out).write_text(json.dumps({"numel": numel, "backend": dist.get_backend(), "world_size": ranks,
                                         "by_dtype": measured}))
    dist.destroy_process_group()


CHILDREN = {"_ddp": ddp_child, "_memory": memory_child, "_collectives": collectives_child}


# ----------------------------------------------------------------------------------------------
# the parent: runs, rows, tables
# ----------------------------------------------------------------------------------------------

def commit_of(ref: str) -> str:
    """The commit measured and its subject, which the report's header names; ``+ uncommitted edits`` when
    ``--code worktree`` runs edits of the package's folders. ``PEAPOD_COMMIT`` names it in a copy without .git
    (the GPU check's), by ``common.commit``'s rule; such a copy has no subject to add."""
    rev = "HEAD" if ref == "worktree" else ref
    subject = common.git("log", "-1", "--format=%s", rev)
    text = f"{common.commit(rev)} {subject}"[:100] if subject else common.commit(rev)
    if ref == "worktree" and common.differs(common.CODE):
        text += " + uncommitted edits"
    return text


class Bench:
    """One run: its scratch folder, the environment children get, and the rows it records."""

    def __init__(self, args):
        self.args, self.run_id, self.rows = args, uuid.uuid4().hex[:8], []
        self.extra = dict(item.split("=", 1) for item in args.extra_config)  # name -> DeepSpeed JSON
        self.scratch = Path(tempfile.mkdtemp(prefix="bench_train_"))
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                    "PYTHONUNBUFFERED": "1"}
        if not args.gpu:
            self.env["DS_ACCELERATOR"] = "cpu"
        from peapod_scale.tools.host_memory import use_huge_pages

        use_huge_pages(self.env)  # the trainer's ranks set it themselves: the DDP loop runs under the same
        if args.code != "worktree":
            code = common.export_code(args.code, self.scratch)
            self.env["PYTHONPATH"] = os.pathsep.join([str(code), self.env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        self.commit = commit_of(args.code)
        self.versions = common.versions("deepspeed", "transformers")
        z0 = json.loads((common.REPO / "ds_configs" / "z1.json").read_text())
        z0["zero_optimization"] = {**z0.get("zero_optimization", {}), "stage": 0}
        (self.scratch / "z0.json").write_text(json.dumps(z0))

    def config_path(self, config: str) -> str:
        """The DeepSpeed config of a run; DDP reads its optimizer settings from z2 (the same in every shipped config)."""
        return {"z0": str(self.scratch / "z0.json"), "ddp": "z2", **self.extra}.get(config, config)

    def record(self, row: dict, load: float) -> dict:
        machine = common.machine(load)
        row = {**row, "run_id": self.run_id, "commit": self.commit, "code": self.args.code, "versions": self.versions,
               "machine": {"node": machine["host"], "cpus": machine["cpus"], "platform": machine["platform"],
                           "load_1min": machine["load_1min"]},
               "date": common.now_utc()}
        self.rows.append(row)
        if not self.args.no_save:
            common.append_rows(self.args.results / ROWS_FILE, [row])
        return row

    def train_args(self, arch: str, precision: str, config: str) -> list[str]:
        micro, steps, window = PRESET_RUNS.get(arch, PRESET_RUNS["t5-small"])
        micro = self.args.micro_batch or micro
        steps = self.args.steps or steps
        window = self.args.log_every or window
        return ["--data", self.args.data, "--arch", arch, "--micro-batch-size", str(micro), "--max-steps", str(steps),
                "--log-every", str(window), "--precision", precision, "--eval-split", "none", "--save-every",
                str(10**9), "--resume", "none", "--overwrite", "--seed", "42", "--num-workers", "1",
                "--deepspeed", self.config_path(config)]

    def _run(self, command: list[str], what: str) -> tuple[bool, str]:
        try:
            done = subprocess.run(command, cwd=self.scratch, env=self.env, capture_output=True, text=True,
                                  timeout=self.args.timeout)
        except subprocess.TimeoutExpired:
            return False, f"{what}: timed out after {self.args.timeout} s"
        tail = (done.stdout[-1500:] + done.stderr[-2500:])
        return done.returncode == 0, tail

    def _torchrun(self, ranks: int, child: str, out: Path, train_args: list[str], extra: list[str] = ()) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
                str(Path(__file__).resolve()), child, "--out", str(out), *extra, "--", *train_args]

    def throughput(self, arch: str, precision: str, config: str, ranks: int, repeat: int) -> dict:
        load = os.getloadavg()[0]
        run_dir = self.scratch / f"run-{arch}-{config}-{ranks}"
        train_args = self.train_args(arch, precision, config) + ["--output", str(run_dir)]
        started = time.perf_counter()
        if config == "ddp":
            out = self.scratch / "ddp.json"
            out.unlink(missing_ok=True)
            ok, tail = self._run(self._torchrun(ranks, "_ddp", out, train_args), "ddp")
            windows = json.loads(out.read_text())["windows"] if ok else []
        else:
            ok, tail = self._run([sys.executable, "-m", "peapod_scale.cli", "train", "--nproc-per-node", str(ranks),
                                  *train_args], config)
            windows = tensorboard_windows(run_dir) if ok else []
        shutil.rmtree(run_dir, ignore_errors=True)
        row = {"part": "throughput", "arch": arch, "config": config, "ranks": ranks, "repeat": repeat,
               "precision": precision, "train_args": train_args, "wall_s": time.perf_counter() - started}
        kept = windows[self.args.skip_windows:]
        if not ok or not kept:
            row["error"] = tail if not ok else f"no windows after skipping {self.args.skip_windows}"
        else:
            row |= {"windows": windows, "samples_per_s": sum(w["samples"] for w in kept) / sum(w["seconds"] for w in kept),
                    "kept_windows": len(kept)}
            timed = [w["phases"] for w in kept if w.get("phases")]
            if timed:  # where a step's time goes: the median window's ms per phase
                row["phase_ms"] = {name: 1000 * statistics.median(t[name] for t in timed)
                                   for name in PHASES if all(name in t for t in timed)}
            mfu = [w["mfu"] for w in kept if "mfu" in w]
            if mfu:
                row["mfu"] = statistics.median(mfu)
        return self.record(row, load)

    def collectives(self, arch: str, precisions: list[str]) -> dict:
        """The gradient collectives alone, at this model's size, on ``--ranks`` ranks of the runs' backend."""
        load = os.getloadavg()[0]
        out = self.scratch / "collectives.json"
        out.unlink(missing_ok=True)
        dtypes = sorted({"fp32"} | {p for p in precisions if p in ("bf16", "fp16")})  # DDP's autocast keeps fp32 grads
        train_args = self.train_args(arch, "fp32", "ddp") + ["--output", str(self.scratch / "collectives-run")]
        ok, tail = self._run(self._torchrun(self.args.ranks, "_collectives", out, train_args,
                                            ["--dtypes", *dtypes, "--reps", str(self.args.collective_reps)]),
                             "collectives")
        row = {"part": "collectives", "arch": arch, "ranks": self.args.ranks}
        if not ok:
            row["error"] = tail
        else:
            row |= json.loads(out.read_text())
        return self.record(row, load)

    def memory(self, arch: str, precision: str, config: str) -> dict:
        load = os.getloadavg()[0]
        out = self.scratch / "memory.json"
        out.unlink(missing_ok=True)
        train_args = self.train_args(arch, precision, config) + ["--output", str(self.scratch / "memory-run")]
        ok, tail = self._run(self._torchrun(2, "_memory", out, train_args, ["--steps", str(self.args.memory_steps)]),
                             f"memory {config}")
        row = {"part": "memory", "arch": arch, "config": config, "precision": precision, "train_args": train_args}
        if not ok:
            row["error"] = tail
        else:
            row |= json.loads(out.read_text())
            row["estimate"] = estimate_for(row)
        return self.record(row, load)


def tensorboard_windows(run_dir: Path) -> list[dict]:
    """The trainer's log windows: examples and seconds per window from its TensorBoard scalars."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    rates = {e.step: e.value for e in events.Scalars("throughput/samples_per_s")}
    step_s = {e.step: e.value for e in events.Scalars("time/step_s")}
    tags = events.Tags()["scalars"]
    mfu = {e.step: e.value for e in events.Scalars("perf/mfu")} if "perf/mfu" in tags else {}
    phases = {name: {e.step: e.value for e in events.Scalars(f"time/{name}_s")}
              for name in PHASES if f"time/{name}_s" in tags}
    windows, previous = [], 0
    for step in sorted(rates):
        seconds = step_s[step] * (step - previous)
        window = {"step": step, "samples": rates[step] * seconds, "seconds": seconds}
        if step in mfu:
            window["mfu"] = mfu[step]
        if phases:
            window["phases"] = {name: by_step[step] for name, by_step in phases.items() if step in by_step}
        windows.append(window)
        previous = step
    return windows


def estimate_for(row: dict) -> dict:
    """The paper's formula and the estimate for a memory row's model, config and world size (per rank, CPU run)."""
    from peapod_scale.training import memory_estimate as estimate

    shape = estimate.ModelShape(**{k: tuple(map(tuple, v)) if k == "group_sizes" else tuple(v) if k == "param_sizes"
                                   else v for k, v in row["shape"].items()})
    zero = estimate.zero_settings(row["ds_config"])
    states = estimate.deepspeed_model_states(shape, zero, row["world_size"], row["precision"], device="cpu")
    return {"paper": sum(estimate.paper_model_states(shape.params, zero.stage, row["world_size"],
                                                     row["precision"]).values()),
            "estimate": states.peak("gpu") + states.peak("cpu"), "phase": states.peak_phase(),
            "parts": [[p.name, p.bytes, p.phase, p.where] for p in states.parts]}


# ----------------------------------------------------------------------------------------------
# tables and plot
# ----------------------------------------------------------------------------------------------

def _spread(values: list[float]) -> str:
    return f"{min(values):,.0f}-{max(values):,.0f}" if len(values) > 1 else "-"


def _settings(rows: list[dict]) -> list[tuple[str, str]]:
    """The (arch, precision) pairs of a run's throughput rows, in the order measured."""
    return list(dict.fromkeys((r["arch"], r["precision"]) for r in rows if r.get("part") == "throughput"))


def _ddp_ratios(rows: list[dict], arch: str, precision: str, config: str, ranks: int) -> list[float]:
    """Per repetition: a config's samples/s over DDP's in the same repetition, model, precision and ranks."""
    def runs(name):
        return {r["repeat"]: r["samples_per_s"] for r in rows if r.get("part") == "throughput" and r["arch"] == arch
                and r["precision"] == precision and r["config"] == name and r["ranks"] == ranks and "samples_per_s" in r}
    mine, base = runs(config), runs("ddp")
    return [mine[k] / base[k] for k in mine if k in base]


def throughput_table(rows: list[dict]) -> list[str]:
    rows = [r for r in rows if r.get("part") == "throughput"]
    lines = []
    for arch, precision in _settings(rows):
        lines += [f"\n**{arch}**, {precision}, samples/s of all ranks "
                  f"(median over repetitions, min-max), ratio = median of the per-repetition ratios to DDP at the "
                  f"same number of ranks; ms a step per phase (data / forward / backward / optimizer, the trainer's StepMeter: median "
                  "window, median repetition)",
                  "", "| config | ranks | samples/s | spread | vs DDP | reps | scaling 1 -> 2 ranks | ms: data / fwd / bwd / opt |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        mine = [r for r in rows if r["arch"] == arch and r["precision"] == precision]
        for ranks in sorted({r["ranks"] for r in mine}, reverse=True):
            for config in _in_order(r["config"] for r in mine):
                runs = [r for r in mine if r["config"] == config and r["ranks"] == ranks and "samples_per_s" in r]
                failed = [r for r in mine if r["config"] == config and r["ranks"] == ranks and "error" in r]
                if not runs:
                    if failed:
                        lines.append(f"| {label(config)} | {ranks} | failed | | | {len(failed)} | |")
                    continue
                rates = [r["samples_per_s"] for r in runs]
                ratios = _ddp_ratios(mine, arch, precision, config, ranks)
                one = [r["samples_per_s"] for r in mine if r["config"] == config and r["ranks"] == 1 and "samples_per_s" in r]
                scaling = f"{statistics.median(rates) / statistics.median(one):.2f}x" if ranks == 2 and one else ""
                mfu = [r["mfu"] for r in runs if "mfu" in r]
                lines.append(f"| {label(config)} | {ranks} | {statistics.median(rates):,.1f} | {_spread(rates)} | "
                             f"{f'{statistics.median(ratios):.2f}x' if ratios else '-'} | {len(runs)}{' (+%d failed)' % len(failed) if failed else ''} | "
                             f"{scaling}{f' MFU {100 * statistics.median(mfu):.1f}%' if mfu else ''} | "
                             f"{_phases(runs)} |")
    return lines


def _phases(runs: list[dict]) -> str:
    timed = [r["phase_ms"] for r in runs if r.get("phase_ms")]
    if not timed:
        return ""
    return " / ".join(f"{statistics.median(t[name] for t in timed if name in t):.0f}" for name in PHASES
                      if any(name in t for t in timed))


def _collective_ms(row: dict, dtype: str, op: str) -> float | None:
    return row.get("by_dtype", {}).get(dtype, {}).get(op, {}).get("ms")


def collectives_table(rows: list[dict]) -> list[str]:
    rows = [r for r in rows if r.get("part") == "collectives" and "by_dtype" in r]
    if not rows:
        return []
    lines = ["\nThe gradient collectives alone, at each model's trainable size, on the runs' backend (ms, median of "
             "the repetitions, slowest rank). DDP all-reduces the gradients; DeepSpeed's ZeRO-1/2 all-reduces them "
             "and then all-gathers the updated partitions (the ZeRO paper counts a reduce-scatter instead of the "
             "all-reduce: the same bytes as DDP's all-reduce)",
             "", "| arch | ranks | backend | elements | dtype | all-reduce | reduce-scatter | all-gather of the partitions | "
                 "ZeRO-1/2 as DeepSpeed issues them | paper's ZeRO-2 (reduce-scatter + all-gather) |",
             "| --- | ---: | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    def cell(value):
        return f"{value:.2f}" if value is not None else "n/a"
    for r in rows:
        for dtype in r["by_dtype"]:
            reduce, scatter, gather = (_collective_ms(r, dtype, op) for op in ("all_reduce", "reduce_scatter", "all_gather"))
            issued = reduce + gather if reduce is not None and gather is not None else None
            paper = scatter + gather if scatter is not None and gather is not None else None
            ratio = f" ({issued / reduce:.2f}x the all-reduce)" if issued and reduce else ""
            lines.append(f"| {r['arch']} | {r['world_size']} | {r['backend']} | {r['numel']:,} | {dtype} | {cell(reduce)} | "
                         f"{cell(scatter)} | {cell(gather)} | {cell(issued)}{ratio} | {cell(paper)} |")
    return lines


def _step_samples(row: dict) -> int:
    """Examples a step of a throughput row takes over all ranks (micro batch x ranks; no accumulation here)."""
    args = row["train_args"]
    return int(args[args.index("--micro-batch-size") + 1]) * row["ranks"]


def collective_floor(rows: list[dict], arch: str, precision: str) -> str | None:
    """What ZeRO-2's collectives alone add to DDP's step on this backend, and the ratio that leaves at best.

    DDP's step time is read from its throughput rows; the addition is ZeRO-2's all-reduce (in the engine's
    dtype) plus its all-gather, minus DDP's all-reduce (fp32 gradients, autocast or not). Were the rest of
    ZeRO-2's step as fast as DDP's, it would take DDP's step plus that addition: the ratio the collectives
    leave. (In bf16, DeepSpeed's backward on bf16 weights can be faster than DDP's under autocast.)
    """
    row = next((r for r in rows if r.get("part") == "collectives" and r["arch"] == arch and "by_dtype" in r), None)
    if row is None or precision == "auto":  # auto: the engine's dtype is the machine's choice, not known here
        return None
    dtype = precision if precision in ("bf16", "fp16") else "fp32"
    zero_reduce, zero_gather = _collective_ms(row, dtype, "all_reduce"), _collective_ms(row, dtype, "all_gather")
    ddp_reduce = _collective_ms(row, "fp32", "all_reduce")
    ddp = [r for r in rows if r.get("part") == "throughput" and r["arch"] == arch and r["precision"] == precision
           and r["config"] == "ddp" and r["ranks"] == row["world_size"] and "samples_per_s" in r]
    if not ddp or None in (zero_reduce, zero_gather, ddp_reduce):
        return None
    ddp_step_ms = statistics.median(1000 * _step_samples(r) / r["samples_per_s"] for r in ddp)
    extra = zero_reduce + zero_gather - ddp_reduce
    verdict = (f"with compute equal to DDP's, ZeRO-2 <= {ddp_step_ms / (ddp_step_ms + extra):.2f}x DDP on this backend"
               if extra > 0 else "the collectives cost ZeRO-2 nothing over DDP")
    return (f"collectives: ZeRO-2 issues all-reduce {zero_reduce:.1f} + all-gather {zero_gather:.1f} ms ({dtype}) "
            f"against DDP's all-reduce {ddp_reduce:.1f} ms (fp32), {extra:+.1f} ms on DDP's {ddp_step_ms:.1f} ms "
            f"step: {verdict}")


def memory_table(rows: list[dict]) -> list[str]:
    rows = [r for r in rows if r.get("part") == "memory"]
    if not rows:
        return []
    mib = 2**20
    lines = ["\nModel state per rank at its peak in a step (MiB, the larger rank; 2 ranks), measured from the engine's "
             "tensors, against the ZeRO paper's formula and `peapod-scale estimate` (as DeepSpeed allocates)",
             "", "| arch | precision | config | parameters | gradients | master + moments | DeepSpeed buffers | "
                 "measured | paper | paper / measured | estimate | estimate / measured | peak at |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['arch']} | {r['precision']} | {label(r['config'])} | failed | | | | | | | | | |")
            continue
        peak = max((rank["peak"] for rank in r["ranks"]), key=lambda p: p["model_states"])
        held = peak["bytes"]
        measured = peak["model_states"]
        estimate = estimate_for(r)  # recomputed: the current estimate against the stored measurement
        buffers = sum(held.get(k, 0) for k in ("buckets", "communication", "deepspeed other"))
        lines.append(
            f"| {r['arch']} | {r['precision']} | {label(r['config'])} | {held.get('parameters', 0) / mib:,.1f} | "
            f"{held.get('gradients', 0) / mib:,.1f} | "
            f"{(held.get('master weights', 0) + held.get('moments', 0)) / mib:,.1f} | {buffers / mib:,.1f} | "
            f"{measured / mib:,.1f} | {estimate['paper'] / mib:,.1f} | {estimate['paper'] / measured:.2f} | "
            f"{estimate['estimate'] / mib:,.1f} | {estimate['estimate'] / measured:.2f} | "
            f"{peak['tag'].split(': ', 1)[-1]} |")
    return lines


def goals(rows: list[dict]) -> list[str]:
    lines = []
    for arch, precision in _settings(rows):
        ratios = _ddp_ratios(rows, arch, precision, "z2", 2)
        if ratios:
            ratio = statistics.median(ratios)
            lines.append(f"goal {arch} {precision}: ZeRO-2 at {ratio:.2f}x DDP (per-repetition ratios "
                         f"{', '.join(f'{x:.2f}' for x in ratios)}; >= {GOAL_Z2_VS_DDP:.1f}x): "
                         f"{'MET' if ratio >= GOAL_Z2_VS_DDP else 'NOT MET'}")
            floor = collective_floor(rows, arch, precision)
            if floor:
                lines.append("  " + floor)
    memory = [r for r in rows if r.get("part") == "memory" and "error" not in r]
    if memory:
        worst = max(memory, key=lambda r: abs(estimate_for(r)["estimate"] / _measured(r) - 1))
        error = estimate_for(worst)["estimate"] / _measured(worst) - 1
        lines.append(f"goal estimate within {GOAL_ESTIMATE:.0%} of the measured model state at every stage: worst "
                     f"{error:+.1%} ({worst['arch']} {worst['precision']} {label(worst['config'])}): "
                     f"{'MET' if abs(error) <= GOAL_ESTIMATE else 'NOT MET'}")
    return lines


def _measured(row: dict) -> float:
    return max(rank["peak"]["model_states"] for rank in row["ranks"])


def plot(rows: list[dict], path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]'): no plot"
    speed = [r for r in rows if r.get("part") == "throughput" and "samples_per_s" in r and r["ranks"] == 2]
    memory = [r for r in rows if r.get("part") == "memory" and "error" not in r]
    settings = _settings(speed)
    panels = len(settings) + (1 if memory else 0)
    if not panels:
        return "nothing to plot"
    figure, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.2), squeeze=False)
    for axis, (arch, precision) in zip(axes[0], settings):
        mine = [r for r in speed if r["arch"] == arch and r["precision"] == precision]
        configs = _in_order(r["config"] for r in mine)
        medians, lows, highs = [], [], []
        for config in configs:
            rates = [r["samples_per_s"] for r in mine if r["config"] == config]
            medians.append(statistics.median(rates))
            lows.append(medians[-1] - min(rates))
            highs.append(max(rates) - medians[-1])
        axis.bar(range(len(configs)), medians, yerr=[lows, highs], capsize=4,
                 color=["#888888" if c == "ddp" else "#3a7dc9" for c in configs])
        axis.set_xticks(range(len(configs)), [label(c).replace(" + ", "\n+ ") for c in configs], fontsize=8)
        axis.set_ylabel("samples/s, 2 ranks (median, min-max)")
        axis.set_title(f"{arch}, {precision}: throughput")
    if memory:
        axis = axes[0][-1]
        labels = [f"{r['arch']}\n{r['precision']}\n{label(r['config']).replace('ZeRO-', 'Z').replace(' + offload', '+off')}"
                  for r in memory]
        x = range(len(memory))
        width = 0.27
        axis.bar([i - width for i in x], [_measured(r) / 2**20 for r in memory], width, label="measured")
        axis.bar(list(x), [estimate_for(r)["paper"] / 2**20 for r in memory], width, label="ZeRO paper formula")
        axis.bar([i + width for i in x], [estimate_for(r)["estimate"] / 2**20 for r in memory], width, label="estimate")
        axis.set_yscale("log")
        axis.set_xticks(list(x), labels, fontsize=6)
        axis.set_ylabel("model state per rank at its peak, MiB")
        axis.set_title("memory: measured vs formula vs estimate")
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return f"plot: {path}"


def report(rows: list[dict], save: bool, results: Path = common.RESULTS) -> None:
    run_id = rows[0]["run_id"]
    head = rows[0]
    lines = [f"# bench_train run {run_id}", "",
             f"{head['date']} on {head['machine']['node']} ({head['machine']['cpus']} CPUs), code {head['code']} "
             f"({head['commit']}), torch {head['versions']['torch']}, DeepSpeed {head['versions']['deepspeed']}; "
             f"1-min load {min(r['machine']['load_1min'] for r in rows):.1f}-{max(r['machine']['load_1min'] for r in rows):.1f}"]
    lines += throughput_table(rows) + collectives_table(rows) + memory_table(rows) + [""] + goals(rows)
    text = "\n".join(lines)
    print(text)
    if save:
        (results / f"bench_train_{run_id}.md").write_text(text + "\n")
        print(plot(rows, results / f"bench_train_{run_id}.png"))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in CHILDREN:
        CHILDREN[sys.argv[1]](sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="dataset folder written by `peapod-scale prepare`")
    parser.add_argument("--arch", nargs="+", default=["tiny", "t5-small"], help="presets (default: %(default)s)")
    parser.add_argument("--parts", nargs="+", default=["throughput", "collectives", "memory"],
                        choices=["throughput", "collectives", "memory"],
                        help="throughput: DDP against the ZeRO stages; collectives: the gradient all-reduce / "
                             "reduce-scatter / all-gather alone at the model's size; memory: model state per rank "
                             "(default: all)")
    parser.add_argument("--configs", nargs="+", default=CONFIGS, choices=CONFIGS, help="throughput configs")
    parser.add_argument("--ranks", type=int, default=2,
                        help="ranks of the --configs runs (default: %(default)s; 1 on a one-GPU machine, with an "
                             "empty --scaling)")
    parser.add_argument("--extra-config", action="append", default=[], metavar="NAME=JSON",
                        help="also time this DeepSpeed config under NAME (after the shipped ones), e.g. a tuned z2")
    parser.add_argument("--scaling", nargs="*", default=["ddp", "z2"], metavar="CONFIG",
                        help="configs (shipped or --extra-config names) also run on 1 rank for the 1 -> 2 rank "
                             "scaling (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of the interleaved configs (default: 3)")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16", "fp16", "auto"],
                        help="throughput precisions, each a table of its own (default: fp32, the CPU default; "
                             "bf16 is what the shipped configs ask for; auto on a GPU)")
    parser.add_argument("--collective-reps", type=int, default=20, help="timed repetitions of each collective")
    parser.add_argument("--memory-precisions", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--memory-configs", nargs="+", default=MEMORY_CONFIGS, choices=MEMORY_CONFIGS)
    parser.add_argument("--memory-steps", type=int, default=3, help="steps of a memory run (censuses from the 2nd)")
    parser.add_argument("--micro-batch", type=int, default=None, help="override the preset's micro batch")
    parser.add_argument("--steps", type=int, default=None, help="override the preset's steps per run")
    parser.add_argument("--log-every", type=int, default=None, help="override the preset's window")
    parser.add_argument("--skip-windows", type=int, default=1, help="first windows left out (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    parser.add_argument("--gpu", action="store_true", help="let the runs use CUDA (default: DS_ACCELERATOR=cpu)")
    parser.add_argument("--code", default="HEAD", help="git ref measured (exported), or 'worktree' (default: HEAD)")
    parser.add_argument("--results", default=str(common.RESULTS),
                        help="folder for the JSON rows, tables and plot (default: benchmarks/results)")
    parser.add_argument("--no-save", action="store_true", help="print only: no rows, table or plot files")
    parser.add_argument("--report", metavar="RUN_ID", help="reprint an earlier run's tables (and plot) from the rows")
    args = parser.parse_args()
    extra_names = [item.split("=", 1)[0] for item in args.extra_config]
    unknown = [c for c in args.scaling if c not in CONFIGS + extra_names]
    if unknown:
        parser.error(f"--scaling {' '.join(unknown)}: not a config (choose from {', '.join(CONFIGS + extra_names)})")

    args.results = Path(args.results)
    if args.report:
        path = args.results / ROWS_FILE
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
        rows = [r for r in rows if r.get("run_id") == args.report]
        if not rows:
            raise SystemExit(f"no rows of run {args.report} in {path}")
        report(rows, save=not args.no_save, results=args.results)
        return
    if not args.data or not (Path(args.data) / "manifest.json").is_file():
        raise SystemExit(f"--data {args.data}: not a dataset folder (run `peapod-scale prepare` first)")
    args.data = str(Path(args.data).resolve())
    bench = Bench(args)
    print(f"bench_train {bench.run_id} on {platform.node()} ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}), "
          f"code {args.code} ({bench.commit}), scratch {bench.scratch}", flush=True)
    try:
        for arch in args.arch:
            if "throughput" in args.parts:
                plan = [(c, args.ranks) for c in args.configs] + [(name, args.ranks) for name in bench.extra] + \
                    [(c, 1) for c in args.scaling]
                for repeat in range(args.repeats):
                    for precision, (config, ranks) in itertools.product(args.precision, plan):
                        row = bench.throughput(arch, precision, config, ranks, repeat)
                        print(f"  {arch:<9} {precision:<4} {label(config):<17} {ranks} rank(s) rep {repeat}: "
                              + (f"{row['samples_per_s']:8.1f} samples/s ({row['kept_windows']} windows, "
                                 f"{row['wall_s']:.0f} s, load {row['machine']['load_1min']:.1f})" if "samples_per_s" in row
                                 else "FAILED " + row["error"][-800:]), flush=True)
            if "collectives" in args.parts and args.ranks > 1:
                row = bench.collectives(arch, args.precision)
                print(f"  {arch:<9} collectives: " + ("FAILED " + row["error"][-800:] if "error" in row else ", ".join(
                    f"{dtype} " + " / ".join(f"{op} {v['ms']:.2f} ms" if "ms" in v else f"{op} n/a"
                                              for op, v in ops.items()) for dtype, ops in row["by_dtype"].items())),
                      flush=True)
            if "memory" in args.parts:
                for precision in args.memory_precisions:
                    for config in args.memory_configs:
                        row = bench.memory(arch, precision, config)
                        if "error" in row:
                            print(f"  {arch:<9} memory {precision} {label(config)}: FAILED {row['error'][-800:]}",
                                  flush=True)
                        else:
                            print(f"  {arch:<9} memory {precision} {label(config):<17} measured "
                                  f"{_measured(row) / 2**20:9.1f} MiB, paper {row['estimate']['paper'] / 2**20:8.1f}, "
                                  f"estimate {row['estimate']['estimate'] / 2**20:8.1f} MiB", flush=True)
    finally:
        shutil.rmtree(bench.scratch, ignore_errors=True)
    report(bench.rows, save=not args.no_save, results=args.results)


if __name__ == "__main__":
    main()
