"""The Trainer owns the DeepSpeed engine, the data stream and the loop; train.py only wires it up."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from . import distributed, ds_config
from .distributed import progress_interval
from .config import TrainConfig
from .data.batches import TaskBatcher
from .data.stream import batch_stream, read_manifest
from .data.tokenizer import load_codec
from .evaluation import evaluate, format_table, write_json_atomic
from .model.build import build_model, optimizer_groups


def warmup_cosine(warmup: int, total: int, floor: float = 0.1):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


class Trainer:
    def __init__(self, cfg: TrainConfig):
        import deepspeed

        self.cfg = cfg
        self.dist = distributed.setup(cfg.local_rank)
        torch.manual_seed(cfg.seed)
        self.run_dir = Path(cfg.output)
        self.manifest = read_manifest(cfg.data)
        self.codec = load_codec(cfg.data, cfg.model)
        self.ds_config = ds_config.resolve(cfg.deepspeed, world_size=self.dist.world_size,
                                           micro_batch_size=cfg.micro_batch_size, grad_accum=cfg.grad_accum, lr=cfg.lr)
        model = build_model(cfg, self.manifest["counts"]["users"], self.codec.vocab_size)
        optimizer_steps = warmup_cosine(cfg.warmup_steps, cfg.max_steps)
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model, config=self.ds_config,
            model_parameters=optimizer_groups(model, ds_config.peak_lr(self.ds_config), cfg.embedding_lr_scale,
                                              backbone_is_random=cfg.model is None),
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, optimizer_steps),
        )
        self.batcher = TaskBatcher(self.codec, self.manifest["counts"]["items"], cfg.topn_candidates, cfg.seed)
        self.writer = None
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))
            write_json_atomic(self.run_dir / "config.json", {"train": dataclasses.asdict(cfg), "deepspeed": self.ds_config,
                                                              "world_size": self.dist.world_size})
            self.log(f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, ZeRO stage "
                     f"{ds_config.zero_stage(self.ds_config)}, {self.dist.world_size} rank(s), global batch "
                     f"{self.ds_config['train_batch_size']}, bf16={self.ds_config['bf16']['enabled']}")

    def log(self, message: str) -> None:
        if self.dist.is_main:
            tqdm.write(message)
            with open(self.run_dir / "train.log", "a") as log_file:
                log_file.write(message + "\n")

    def _reduce_task_losses(self, sums: dict[str, list[float]]) -> dict[str, float]:
        tasks = self.cfg.task_list()
        packed = torch.tensor([sums[t][0] for t in tasks] + [sums[t][1] for t in tasks], dtype=torch.float64)
        if self.dist.world_size > 1:
            dist.all_reduce(packed)
        return {t: (packed[i] / packed[len(tasks) + i]).item() for i, t in enumerate(tasks) if packed[len(tasks) + i] > 0}

    def train(self) -> None:
        cfg, engine = self.cfg, self.engine
        tasks = cfg.task_list()
        stream = batch_stream(cfg.data, self.manifest, engine.train_micro_batch_size_per_gpu(), self.dist.rank,
                              self.dist.world_size, cfg.seed, cfg.shuffle_buffer, cfg.num_workers)
        device = engine.device
        sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        progress = tqdm(total=cfg.max_steps, desc="train", disable=not self.dist.is_main, dynamic_ncols=True,
                        mininterval=progress_interval())
        micro_step, window_start, window_samples = 0, time.perf_counter(), 0
        engine.train()
        while engine.global_steps < cfg.max_steps:
            task = tasks[engine.global_steps % len(tasks)]  # one task per optimizer step, the same on every rank
            batch = {k: v.to(device) for k, v in self.batcher(next(stream), task, micro_step).items()}
            loss = engine(**batch).loss
            engine.backward(loss)
            engine.step()
            micro_step += 1
            sums[task][0] += loss.item()
            sums[task][1] += 1
            window_samples += batch["input_ids"].shape[0]
            if not engine.is_gradient_accumulation_boundary() and micro_step % engine.gradient_accumulation_steps():
                continue
            step = engine.global_steps
            progress.update(1)
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                losses = self._reduce_task_losses(sums)
                sums.clear()
                elapsed = time.perf_counter() - window_start
                samples_per_s = window_samples * self.dist.world_size / elapsed
                window_start, window_samples = time.perf_counter(), 0
                lr = self.scheduler.get_last_lr()[0]
                progress.set_postfix(loss=f"{sum(losses.values()) / len(losses):.3f}", lr=f"{lr:.2e}")
                self._scalars(step, losses, lr, samples_per_s)
                self.log(f"step {step:>6} | " + " ".join(f"loss/{t} {v:.4f}" for t, v in losses.items())
                         + f" | lr {lr:.2e} | {samples_per_s:.1f} samples/s")
        progress.close()

    def _scalars(self, step: int, losses: dict[str, float], lr: float, samples_per_s: float) -> None:
        if self.writer is None:
            return
        for task, value in losses.items():
            self.writer.add_scalar(f"loss/{task}", value, step)
        self.writer.add_scalar("loss/total", sum(losses.values()) / len(losses), step)
        self.writer.add_scalar("lr", lr, step)
        grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is not None:
            self.writer.add_scalar("grad_norm", float(grad_norm), step)
        self.writer.add_scalar("throughput/samples_per_s", samples_per_s, step)
        self.writer.flush()

    def save(self) -> None:
        """A DeepSpeed checkpoint to resume from, and a consolidated model folder to evaluate and serve."""
        rng = {"torch": torch.get_rng_state()}
        self.engine.save_checkpoint(str(self.run_dir / "checkpoints"), tag=f"step{self.engine.global_steps}",
                                    client_state={"rng": rng, "global_steps": self.engine.global_steps})
        module = self.engine.module
        if ds_config.zero_stage(self.ds_config) == 3:
            state = self.engine._zero3_consolidated_16bit_state_dict()  # a collective: every rank calls it
        else:
            state = module.state_dict()
        if self.dist.is_main:
            final, tmp = self.run_dir / "model", self.run_dir / f".model.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            module.save_pretrained(tmp, state_dict=state)
            self.codec.save(tmp)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            self.log(f"saved checkpoint to {self.run_dir / 'checkpoints'} and model to {final}")
        if self.dist.world_size > 1:
            dist.barrier()

    def evaluate(self) -> dict | None:
        cfg = self.cfg
        if cfg.eval_split == "none":
            return None
        results = evaluate(self.engine.module, self.codec, cfg.data, self.manifest, split=cfg.eval_split,
                           tasks=cfg.eval_task_list(), batch_size=cfg.eval_batch_size, num_beams=cfg.num_beams,
                           seed=cfg.seed, limit=cfg.eval_limit, rank=self.dist.rank, world_size=self.dist.world_size,
                           synced=self.dist.world_size > 1 and ds_config.zero_stage(self.ds_config) == 3)
        if self.dist.is_main:
            write_json_atomic(self.run_dir / f"metrics_{cfg.eval_split}.json", results)
            self.log(format_table(results))
            for task in cfg.eval_task_list():
                for name, value in results[task]["model"].items():
                    self.writer.add_scalar(f"eval/{task}/{name}", value, self.engine.global_steps)
            self.writer.flush()
        return results

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.engine.destroy()  # before the process group goes: ZeRO-3 ranks abort at exit otherwise
        if dist.is_initialized():
            dist.destroy_process_group()
