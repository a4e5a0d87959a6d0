"""The Trainer owns the DeepSpeed engine, the data stream and the loop; train.py only wires it up."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from collections import defaultdict
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from . import distributed, ds_config
from .distributed import progress_interval
from .config import TrainConfig
from .data.batches import TaskBatcher
from .data.stream import read_manifest, task_stream
from .data.tasks import parse_task_weights
from .data.tokenizer import load_codec
from .checkpoint_files import verify_checkpoint
from .evaluation import evaluate, format_table, write_json_atomic
from .export import checkpoint_tag
from .throughput import StepMeter, flop_counter, log_line
from .model.build import build_model, optimizer_groups


def warmup_cosine(warmup: int, total: int, floor: float = 0.1):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


@dataclasses.dataclass
class BestTracker:
    """The best validation value so far and how many validations since it improved (``--patience``)."""

    patience: int
    best: float = -math.inf
    best_step: int | None = None
    waited: int = 0

    def update(self, value: float, step: int) -> bool:
        """Record a validation; True when it is a new best (strictly higher), which resets the wait."""
        if value > self.best:
            self.best, self.best_step, self.waited = value, step, 0
            return True
        self.waited += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.waited >= self.patience


class Trainer:
    def __init__(self, cfg: TrainConfig):
        import deepspeed

        self.cfg = cfg
        self.dist, self.collectives = distributed.setup(cfg.local_rank)
        torch.manual_seed(cfg.seed)
        self.run_dir = Path(cfg.output)
        self.manifest = read_manifest(cfg.data)
        if "explanation" in cfg.eval_task_list() and cfg.eval_split != "none" and "explanation" not in self.manifest["tasks"]:
            raise ValueError(f"--eval-tasks {cfg.eval_tasks}: {cfg.data} has no explanation texts (its tasks: "
                             f"{', '.join(self.manifest['tasks'])}); drop explanation or prepare a source with reviews")
        default_tasks = next(f.default for f in dataclasses.fields(TrainConfig) if f.name == "tasks")
        self.task_weights = parse_task_weights(cfg.tasks, cfg.task_weights, self.manifest["tasks"], data=cfg.data,
                                               tasks_is_default=cfg.tasks == default_tasks)
        self.cfg = cfg = dataclasses.replace(cfg, tasks=",".join(self.task_weights))  # losses are logged per trained task
        self.stream = None  # the training stream, once train() made it; its position goes into every checkpoint
        self.codec = load_codec(cfg.data, cfg.model)
        self.ds_config = ds_config.resolve(cfg.deepspeed, world_size=self.dist.world_size,
                                           micro_batch_size=cfg.micro_batch_size, grad_accum=cfg.grad_accum, lr=cfg.lr,
                                           precision=cfg.precision)
        # At ZeRO-3 the model is partitioned while it is built (deepspeed.zero.Init): no rank holds it whole.
        model = build_model(cfg, self.manifest["counts"]["users"], self.codec.vocab_size, ds_config=self.ds_config)
        if cfg.activation_checkpointing:  # non-reentrant: also right when the prompt-side inputs need no grad
            model.t5.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        optimizer_steps = warmup_cosine(cfg.warmup_steps, cfg.max_steps)
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model, config=self.ds_config,
            model_parameters=optimizer_groups(model, ds_config.peak_lr(self.ds_config), cfg.embedding_lr_scale,
                                              backbone_is_random=cfg.model is None),
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, optimizer_steps),
        )
        self.best_task, _, self.best_name = cfg.best_metric.partition("/")
        if cfg.eval_every and self.best_task not in cfg.eval_task_list():
            raise ValueError(f"--best-metric {cfg.best_metric}: task {self.best_task!r} is not in --eval-tasks {cfg.eval_tasks}")
        self.tracker = BestTracker(cfg.patience)
        self.batcher = TaskBatcher(self.codec, self.manifest["counts"]["items"], cfg.topn_candidates, cfg.seed)
        self.writer = None
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))
            write_json_atomic(self.run_dir / "config.json", {"train": dataclasses.asdict(cfg), "deepspeed": self.ds_config,
                                                              "world_size": self.dist.world_size})
            self.log(f"{sum(getattr(p, 'ds_numel', p.numel()) for p in model.parameters()) / 1e6:.2f} M parameters, ZeRO stage "
                     f"{ds_config.zero_stage(self.ds_config)}, {self.dist.world_size} rank(s), global batch "
                     f"{self.ds_config['train_batch_size']}, precision {ds_config.precision(self.ds_config)} "
                     f"(--precision {cfg.precision}), "
                     f"offload {ds_config.offload(self.ds_config) or 'none'}, activation checkpointing "
                     f"{'on' if cfg.activation_checkpointing else 'off'}")
            if ds_config.offload(self.ds_config) and self.ds_config["optimizer"].get("params", {}).get("torch_adam"):
                self.log("offloaded optimizer: torch AdamW steps on the CPU (no C++ build needed); on GPU machines "
                         "remove \"torch_adam\" from the config to use DeepSpeedCPUAdam (faster, JIT-built once)")

    def log(self, message: str) -> None:
        if self.dist.is_main:
            tqdm.write(message)
            with open(self.run_dir / "train.log", "a") as log_file:
                log_file.write(message + "\n")

    def _reduce_task_losses(self, sums: dict[str, list[float]]) -> dict[str, float]:
        tasks = self.cfg.task_list()
        packed = self.collectives.sum([float(sums[t][0]) for t in tasks] + [sums[t][1] for t in tasks])
        return {t: packed[i] / packed[len(tasks) + i] for i, t in enumerate(tasks) if packed[len(tasks) + i] > 0}

    def train(self) -> None:
        cfg, engine = self.cfg, self.engine
        self.stream = task_stream(cfg.data, self.manifest, self.task_weights, self.batcher,
                                  engine.train_micro_batch_size_per_gpu(), self.dist.rank, self.dist.world_size,
                                  cfg.seed, cfg.shuffle_buffer, cfg.num_workers, engine.gradient_accumulation_steps())
        if cfg.resume:
            self._resume(cfg.resume)
        batches = iter(self.stream)
        device = engine.device
        sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        progress = tqdm(total=cfg.max_steps, initial=engine.global_steps, desc="train", disable=not self.dist.is_main,
                        dynamic_ncols=True, mininterval=progress_interval())
        module = engine.module
        meter = StepMeter(flop_counter(module.t5, trains_backbone=cfg.train == "all"))
        micro_step = 0
        engine.train()
        while engine.global_steps < cfg.max_steps:
            task, batch = next(batches)  # one task per optimizer step, the same on every rank (data/tasks.py)
            meter.count(batch, module.config.prompt_tokens)  # on the host copy: no device sync
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            meter.phase("data")
            loss = engine(**batch).loss
            meter.phase("forward")
            engine.backward(loss)
            meter.phase("backward")
            engine.step()
            meter.phase("optimizer")
            micro_step += 1
            sums[task][0] += loss.detach()  # stays on the device until a log step reduces it
            sums[task][1] += 1
            if micro_step % engine.gradient_accumulation_steps():  # (the engine's boundary flag already looks ahead)
                continue
            meter.steps += 1
            step = engine.global_steps
            progress.update(1)
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                losses = self._reduce_task_losses(sums)
                sums.clear()
                scalars = {f"loss/{t}": v for t, v in losses.items()}
                scalars["loss/total"] = sum(losses.values()) / len(losses)
                scalars["lr"] = self.scheduler.get_last_lr()[0]
                grad_norm = engine.get_global_grad_norm()
                if grad_norm is not None:
                    scalars["grad_norm"] = float(grad_norm)
                scalars.update(meter.summary(self.collectives))
                progress.set_postfix(loss=f"{scalars['loss/total']:.3f}", lr=f"{scalars['lr']:.2e}")
                self._scalars(step, scalars)
                self.log(log_line(step, scalars))
            if cfg.eval_every and step % cfg.eval_every == 0:
                stop = self.validate()
                meter.skip()
                if stop:
                    self.log(f"early stop at step {step}: no better {cfg.best_metric} in {cfg.patience} validations "
                             f"(best {self.tracker.best:.4f} at step {self.tracker.best_step})")
                    break
        batches.close()  # stops the loader workers
        progress.close()

    def _resume(self, path: str) -> None:
        """Load ``--resume`` (checkpoints folder, run folder or tag folder): engine, scheduler, stream, RNG."""
        where = Path(path)
        if (where / "latest").is_file():
            load_dir, tag = where, None
        elif (where / "checkpoints" / "latest").is_file():
            load_dir, tag = where / "checkpoints", None
        elif where.is_dir() and any(where.glob("*model_states.pt")):
            load_dir, tag = where.parent, where.name
        else:
            raise ValueError(f"--resume {path}: not a checkpoints folder (with a 'latest' file), a run folder or a "
                             "checkpoint tag folder; point it at RUN/checkpoints or RUN/checkpoints/stepN")
        verify_checkpoint(load_dir / (tag or checkpoint_tag(load_dir, None)))  # DeepSpeed unpickles it unrestricted
        loaded, client_state = self.engine.load_checkpoint(str(load_dir), tag=tag)
        if loaded is None:
            raise ValueError(f"--resume {path}: DeepSpeed could not load a checkpoint from {load_dir}")
        if client_state.get("stream") is None:
            self.log(f"--resume {path}: the checkpoint has no data stream position; the stream starts from the beginning")
        else:
            self.stream.load_state_dict(client_state["stream"])
        torch.set_rng_state(client_state["rng"]["torch"])
        if torch.cuda.is_available() and "cuda" in client_state["rng"]:
            torch.cuda.set_rng_state_all(client_state["rng"]["cuda"])
        self.log(f"resumed from {loaded} at step {self.engine.global_steps}")

    def _client_state(self) -> dict:
        """What a checkpoint holds beside DeepSpeed's own state (the stream position is the same on every rank)."""
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        stream = self.stream.state_dict() if self.stream is not None else None
        return {"rng": rng, "global_steps": self.engine.global_steps, "stream": stream}

    def validate(self) -> bool:
        """Evaluate the valid split, keep the checkpoint if it is the best so far; True: stop early."""
        step = self.engine.global_steps
        results = self._evaluate("valid", self.cfg.val_limit, tag_prefix="valid")
        value = results[self.best_task]["model"][self.best_name]
        if self.tracker.update(value, step):
            tag = f"best-step{step}"
            self.engine.save_checkpoint(str(self.run_dir / "checkpoints"), tag=tag, save_latest=False,
                                        client_state=self._client_state())
            self.collectives.barrier()
            if self.dist.is_main:
                write_json_atomic(self.run_dir / "best.json", {"tag": tag, "step": step, "metric": self.cfg.best_metric,
                                                                "value": value})
                for old in (self.run_dir / "checkpoints").glob("best-step*"):
                    if old.name != tag:
                        shutil.rmtree(old, ignore_errors=True)
        self.log(f"valid {self.cfg.best_metric} {value:.4f} at step {step} (best {self.tracker.best:.4f} at step "
                 f"{self.tracker.best_step})")
        return self.tracker.should_stop

    def restore_best(self) -> None:
        """Load the best validated checkpoint (all ranks) so the final save and test evaluation use it."""
        best = self.tracker.best_step
        if best is None or best == self.engine.global_steps:
            return
        self.engine.load_checkpoint(str(self.run_dir / "checkpoints"), tag=f"best-step{best}")
        self.log(f"restored the best checkpoint (step {best}, {self.cfg.best_metric} {self.tracker.best:.4f})")

    def _scalars(self, step: int, scalars: dict[str, float]) -> None:
        if self.writer is None:
            return
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def save(self) -> None:
        """A DeepSpeed checkpoint to resume from, and a consolidated model folder to evaluate and serve."""
        self.engine.save_checkpoint(str(self.run_dir / "checkpoints"), tag=f"step{self.engine.global_steps}",
                                    client_state=self._client_state())
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
        self.collectives.barrier()

    def evaluate(self) -> dict | None:
        """The final evaluation on --eval-split (after ``restore_best``: of the best model)."""
        if self.cfg.eval_split == "none":
            return None
        return self._evaluate(self.cfg.eval_split, self.cfg.eval_limit, tag_prefix="eval", write=True)

    def _evaluate(self, split: str, limit: int | None, tag_prefix: str, write: bool = False) -> dict:
        cfg = self.cfg
        results = evaluate(self.engine.module, self.codec, cfg.data, self.manifest, split=split,
                           tasks=cfg.eval_task_list(), batch_size=cfg.eval_batch_size, num_beams=cfg.num_beams,
                           seed=cfg.seed, limit=limit, rank=self.dist.rank, world_size=self.dist.world_size,
                           synced=self.dist.world_size > 1 and ds_config.zero_stage(self.ds_config) == 3,
                           constrained=cfg.constrained_decoding)
        results["step"] = self.engine.global_steps
        if self.dist.is_main:
            if write:
                write_json_atomic(self.run_dir / f"metrics_{split}.json", results)
                self.log(format_table(results))
            for task in cfg.eval_task_list():
                for name, value in results[task]["model"].items():
                    self.writer.add_scalar(f"{tag_prefix}/{task}/{name}", value, self.engine.global_steps)
            self.writer.flush()
        return results

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.engine.destroy()  # before the process group goes: ZeRO-3 ranks abort at exit otherwise
        if dist.is_initialized():
            dist.destroy_process_group()
