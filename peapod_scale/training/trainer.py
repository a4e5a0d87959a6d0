"""The Trainer owns the DeepSpeed engine, the data stream and the loop; train.py only wires it up."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import time
from collections import defaultdict
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from tqdm import tqdm

from peapod_scale.config.train import TrainConfig
from peapod_scale.data.batches import TaskBatcher
from peapod_scale.data.dataset import read_manifest, task_stream
from peapod_scale.data.tasks import parse_task_weights
from peapod_scale.data.tokenizer import load_codec
from peapod_scale.distributed import ds_config
from peapod_scale.distributed import ranks as distributed
from peapod_scale.eval.evaluate import evaluate, format_table
from peapod_scale.kernels import check_compose_backend
from peapod_scale.model.build import build_model, mf_user_rows
from peapod_scale.model.user_prompt import TableLookup
from peapod_scale.model.user_table import ShardedUserTable, engine_problem
from peapod_scale.tools.atomic_files import replace_folder, temporary_name, write_json_atomic
from peapod_scale.tools.progress import progress_interval
from peapod_scale.tools.run_dir import RunDir
from peapod_scale.training import checkpoint as checkpointing
from peapod_scale.training import optimizer as optim
from peapod_scale.training import preemption
from peapod_scale.training.checkpoint import Checkpointer, ResumePoint, shard_pattern
from peapod_scale.training.lr_schedule import warmup_cosine
from peapod_scale.training.metrics import StepMeter, flop_counter, log_line
from peapod_scale.training.validation import BestTracker

_log = logging.getLogger(__name__)


class Trainer:
    """One training attempt: everything that can refuse it is checked before the run folder is touched."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.dist, self.collectives = distributed.setup(cfg.local_rank)
        self.run_dir = Path(cfg.output)
        self.paths = RunDir(self.run_dir)
        if self.dist.is_main:
            preemption.clear_marker(self.run_dir)  # the contract: the marker speaks for the attempt that wrote it
        self.signals = preemption.StopSignals().install()  # before the loader forks its workers (preemption.py)
        torch.manual_seed(cfg.seed)
        self.manifest = read_manifest(cfg.data)
        if "explanation" in cfg.eval_task_list() and cfg.eval_split != "none" and "explanation" not in self.manifest["tasks"]:
            raise ValueError(f"--eval-tasks {cfg.eval_tasks}: {cfg.data} has no explanation texts (its tasks: "
                             f"{', '.join(self.manifest['tasks'])}); drop explanation or prepare a source with reviews")
        default_tasks = next(f.default for f in dataclasses.fields(TrainConfig) if f.name == "tasks")
        self.task_weights = parse_task_weights(cfg.tasks, cfg.task_weights, self.manifest["tasks"], data=cfg.data,
                                               tasks_is_default=cfg.tasks == default_tasks)
        self.cfg = cfg = dataclasses.replace(cfg, tasks=",".join(self.task_weights))  # losses are logged per trained task
        self.best_task, _, self.best_name = cfg.best_metric.partition("/")
        self.codec = load_codec(cfg.data, cfg.model)
        self.ds_config = ds_config.resolve(cfg.deepspeed, world_size=self.dist.world_size,
                                           micro_batch_size=cfg.micro_batch_size, grad_accum=cfg.grad_accum, lr=cfg.lr,
                                           precision=cfg.precision)
        self.batcher = TaskBatcher(self.codec, self.manifest["counts"]["items"], cfg.topn_candidates, cfg.seed,
                                   topn_history=cfg.topn_history)
        # the training stream; its position goes into every checkpoint
        self.stream = task_stream(cfg.data, self.manifest, self.task_weights, self.batcher,
                                  self.ds_config["train_micro_batch_size_per_gpu"], self.dist.rank, self.dist.world_size,
                                  cfg.seed, cfg.shuffle_buffer, cfg.num_workers,
                                  self.ds_config["gradient_accumulation_steps"])
        self.fingerprint = checkpointing.dataset_fingerprint(self.manifest, self.codec.vocab_size)
        self.resume_point, notes = self._plan_resume()  # refuses an incompatible checkpoint before the expensive load
        if cfg.user_prompt == "pool":  # --compose triton that cannot run: one error line now, not at step 1

            device = f"cuda:{self.dist.local_rank}" if distributed.use_cuda() else "cpu"
            check_compose_backend(cfg.compose, device, ds_config.engine_dtype(self.ds_config))
        if cfg.user_table == "sharded":  # before the model is built: what stops it is one error line
            if ds_config.precision(self.ds_config) == "fp16":
                raise ValueError("--user-table sharded with fp16: the loss scale would reach the table's Adagrad "
                                 "through its gradients; train in bf16 or fp32 (--precision), or --user-table dense")
            problem = engine_problem()
            if problem:
                raise ValueError(f"{problem}; or use --user-table dense")
        # At ZeRO-3 the model is partitioned while it is built (deepspeed.zero.Init): no rank holds it whole.
        model = build_model(cfg, self.manifest["counts"]["users"], self.codec.vocab_size, ds_config=self.ds_config)
        self.user_table = self._sharded_user_table(model) if cfg.user_table == "sharded" else None
        if cfg.activation_checkpointing:  # non-reentrant: also right when the prompt-side inputs need no grad
            model.t5.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        optimizer_steps = warmup_cosine(cfg.warmup_steps, cfg.max_steps)
        engine_config, client_optimizer = optim.for_deepspeed(self.ds_config)  # torch AdamW, stepped in pieces on CPU
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model, config=engine_config, optimizer=client_optimizer,
            model_parameters=optim.optimizer_groups(model, ds_config.peak_lr(self.ds_config), cfg.embedding_lr_scale,
                                              backbone_is_random=cfg.model is None),
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, optimizer_steps),
        )
        self.num_params = sum(getattr(p, 'ds_numel', p.numel()) for p in model.parameters())
        self.tracker = BestTracker(cfg.patience)
        self.checkpoints = Checkpointer(self.engine, self.collectives, self.dist.rank, self.paths.checkpoints,
                                        cfg.keep_last, self.num_params, self.log, with_cuda=distributed.use_cuda(),
                                        write_extra=self.user_table and (lambda folder: self.user_table.save_shard(
                                            folder, self.dist.rank)))
        self.saved_step: int | None = None  # the step of the newest complete periodic checkpoint of this attempt
        self.rng_to_restore: dict | None = None
        self.writer = None
        if self.dist.is_main:
            if cfg.resume == "none" and cfg.overwrite:
                checkpointing.clear_run(self.run_dir)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.checkpoints.remove_leftovers()
            # lazy: tensorboard's writer is imported by the rank that writes events only
            from torch.utils.tensorboard import SummaryWriter

            # events after the checkpoint's step, written by the attempt that died, are dropped (not shown twice)
            purge = self.resume_point.meta["step"] + 1 if self.resume_point else None
            self.writer = SummaryWriter(str(self.paths.tensorboard), purge_step=purge)
            write_json_atomic(self.paths.config, {"train": dataclasses.asdict(cfg), "deepspeed": self.ds_config,
                                                              "world_size": self.dist.world_size})
            self.log(f"{self.num_params / 1e6:.2f} M parameters, ZeRO stage "
                     f"{ds_config.zero_stage(self.ds_config)}, {self.dist.world_size} rank(s), global batch "
                     f"{self.ds_config['train_batch_size']}, precision {ds_config.precision(self.ds_config)} "
                     f"(--precision {cfg.precision}), "
                     f"offload {ds_config.offload(self.ds_config) or 'none'}, activation checkpointing "
                     f"{'on' if cfg.activation_checkpointing else 'off'}")
            if ds_config.offload(self.ds_config) and self.ds_config["optimizer"].get("params", {}).get("torch_adam"):
                self.log("offloaded optimizer: torch AdamW steps on the CPU (no C++ build needed); on GPU machines "
                         "remove \"torch_adam\" from the config to use DeepSpeedCPUAdam (faster, JIT-built once)")
        for note in notes:
            self.log(note)
        if self.user_table is not None:
            self.log(f"user table: {self.user_table.num_rows:,} x {cfg.user_dim} sharded row-wise over "
                     f"{self.dist.world_size} rank(s) ({self.user_table.end - self.user_table.start:,} rows on rank 0), "
                     f"row-wise Adagrad lr {cfg.user_lr}, outside ZeRO")
        if self.resume_point is not None:
            self._resume(self.resume_point)

    def _sharded_user_table(self, model):
        """``--user-table sharded``: the user rows over all ranks (model/user_table.py), looked up by the model."""
        cfg = self.cfg
        users = self.manifest["counts"]["users"]
        device = torch.device(f"cuda:{self.dist.local_rank}") if distributed.use_cuda() else torch.device("cpu")
        table = ShardedUserTable(users + 1, cfg.user_dim, lr=cfg.user_lr, seed=cfg.seed, device=device)
        if cfg.user_init == "mf":
            table.set_rows(mf_user_rows(cfg, users))
        model.user_prompt.users = TableLookup(table.lookup)
        return table

    @contextlib.contextmanager
    def _whole_user_table(self):
        """Evaluation looks users up outside the training lock-step: every rank holds the whole table meanwhile."""
        if self.user_table is None:
            yield
            return
        prompt = self.engine.module.user_prompt
        whole = self.user_table.full_weight().to(self.engine.device)  # a collective
        prompt.users = TableLookup(lambda ids: whole[ids])
        try:
            yield
        finally:
            prompt.users = TableLookup(self.user_table.lookup)

    def _load_user_table(self, tag_dir: Path) -> None:
        if self.user_table is None:
            return
        shards = sorted(tag_dir.glob(shard_pattern()))
        if not shards:
            raise ValueError(f"{tag_dir}: no user table shards ({shard_pattern()}): it was trained with --user-table "
                             "dense")
        self.user_table.load_shards(shards)

    def _on_main(self, work):
        """Run ``work()`` on rank 0 only; every rank returns its result or raises its ValueError."""
        outcome = None
        if self.dist.is_main:
            try:
                outcome = ("ok", work())
            except (ValueError, OSError) as error:  # OSError: a file that cannot be read
                outcome = ("error", str(error))
        status, value = self.collectives.gather_objects(outcome)[0]
        if status == "error":
            raise ValueError(value)
        return value

    def _plan_resume(self) -> tuple[ResumePoint | None, list[str]]:
        """The checkpoint to continue (``--resume``), checked against this run; notes to log once it starts.

        Only files are read here (its JSON record, the pickles' opcodes): an incompatible checkpoint
        is refused in seconds, whatever its size, and before anything in the run folder is written.
        """
        cfg = self.cfg
        point = self._on_main(lambda: checkpointing.find_resume(cfg.resume, self.run_dir, cfg.overwrite))
        if point is None:
            return None, []
        changed = checkpointing.compare_run(point.meta, dataclasses.asdict(cfg), self.fingerprint,
                                            ds_config.zero_stage(self.ds_config), ds_config.precision(self.ds_config),
                                            where=cfg.resume)
        try:
            self.stream.load_state_dict(point.meta["stream"])
        except ValueError as error:
            raise ValueError(f"--resume {cfg.resume}: {point.tag_dir.name}: {error}") from None
        notes = [f"warning: {message}" for message in point.skipped]
        if changed:
            notes.append(f"resume: options changed since {point.tag_dir.name}: {', '.join(changed)}")
        if checkpointing.needs_universal(point.meta, self.dist.world_size):
            def convert():
                universal = checkpointing.convert_to_universal(point.tag_dir, _log.info)
                checkpointing.verify_checkpoint(universal, recursive=True)  # DeepSpeed unpickles it unrestricted
            self._on_main(convert)
            notes.append(f"resume: {point.tag_dir.name} was written by {point.meta['world_size']} rank(s), this run "
                         f"has {self.dist.world_size}: loading its universal checkpoint ({point.tag_dir / 'universal'})")
        return point, notes

    def log(self, message: str) -> None:
        if self.dist.is_main:
            _log.info(message)  # the `peapod_scale` logger: through tqdm on the command line
            with open(self.paths.train_log, "a") as log_file:
                log_file.write(message + "\n")

    def _reduce_task_losses(self, sums: dict[str, list[float]]) -> dict[str, float]:
        tasks = self.cfg.task_list()
        packed = self.collectives.sum([float(sums[t][0]) for t in tasks] + [sums[t][1] for t in tasks])
        return {t: packed[i] / packed[len(tasks) + i] for i, t in enumerate(tasks) if packed[len(tasks) + i] > 0}

    def train(self) -> str | None:
        """Train to --max-steps (or an early stop); the signal's name if SIGTERM/SIGUSR1 stopped it (checkpointed)."""
        cfg, engine = self.cfg, self.engine
        batches = self._batches()
        device = engine.device
        sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        progress = tqdm(total=cfg.max_steps, initial=engine.global_steps, desc="train", disable=not self.dist.is_main,
                        dynamic_ncols=True, mininterval=progress_interval())
        module = engine.module
        meter = StepMeter(flop_counter(module.t5, trains_backbone=cfg.train == "all"))
        micro_step = 0
        engine.train()
        if self.rng_to_restore is not None:  # last, so that nothing between the load and the first step draws
            checkpointing.set_rng_state(self.rng_to_restore)
        stop_signal = None
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
            meter.end_step()
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
            stop_early = False
            if cfg.eval_every and step % cfg.eval_every == 0:
                stop_early = self.validate()
                meter.skip()
                if stop_early:
                    self.log(f"early stop at step {step}: no better {cfg.best_metric} in {cfg.patience} validations "
                             f"(best {self.tracker.best:.4f} at step {self.tracker.best_step})")
            stop_signal = self.signals.agreed(self.collectives)
            if step % cfg.save_every == 0 or stop_signal:
                self.save_checkpoint()
                meter.skip()
            if stop_signal or stop_early:
                break
        batches.close()  # stops the loader workers
        progress.close()
        if self.saved_step != engine.global_steps:  # the checkpoint at the end
            self.save_checkpoint()
        if stop_signal:
            self.log(f"{stop_signal} received: stopped after step {engine.global_steps} with checkpoint "
                     f"step{engine.global_steps}; exit {preemption.EXIT_PREEMPTED} (run the same command to continue)")
            if self.dist.is_main:
                preemption.write_marker(self.run_dir, engine.global_steps, stop_signal,
                                        f"checkpoints/step{engine.global_steps}")
            self.collectives.barrier()
        return stop_signal

    def _batches(self):
        """The stream's batches; its loader forks the workers at the first one, out of SIGTERM's reach."""
        stream = iter(self.stream)
        try:
            with preemption.forking_without_sigterm():
                first = next(stream)
            yield first
            yield from stream
        finally:
            stream.close()  # stops the loader workers

    def save_checkpoint(self) -> None:
        """The periodic checkpoint ``stepN`` of the current step (OSError if the disk cannot take it)."""
        step = self.engine.global_steps
        started = time.perf_counter()
        tag_dir = self.checkpoints.save(f"step{step}", self._meta())
        self.saved_step = step
        if self.dist.is_main:
            self.log(f"checkpoint step{step}: {checkpointing.checkpoint_bytes(tag_dir) / 2**20:.1f} MiB in "
                     f"{time.perf_counter() - started:.2f} s")

    def mark_preempted(self, signal_name: str) -> None:
        """A signal after training (restore, export, evaluation): the final checkpoint is the one to continue."""
        if self.dist.is_main:
            preemption.write_marker(self.run_dir, self.engine.global_steps, signal_name,
                                    f"checkpoints/step{self.saved_step}")

    def _resume(self, point: ResumePoint) -> None:
        """Engine, scheduler and counters from the planned checkpoint; this rank's RNG; the tracker."""
        universal = checkpointing.needs_universal(point.meta, self.dist.world_size)
        checkpointing.load_engine_state(self.engine, point.tag_dir, universal)
        self._load_user_table(point.tag_dir)
        rng = checkpointing.load_rng(point.tag_dir, self.dist.rank)
        if rng is None:
            checkpointing.seed_rng(self.cfg.seed, self.dist.rank, point.meta["step"])
            self.log(f"resume: {point.tag_dir.name} holds no RNG state for rank {self.dist.rank} (written by "
                     f"{point.meta['world_size']} rank(s)): seeded from --seed, the rank and the step")
        else:
            self.rng_to_restore = rng
        self.tracker = BestTracker(**{**point.meta["tracker"], "patience": self.cfg.patience})
        self.saved_step = point.meta["step"] if point.tag_dir.parent.resolve() == self.checkpoints.folder.resolve() \
            else None
        self.log(f"resumed from {point.tag_dir} at step {self.engine.global_steps}")

    def _meta(self) -> dict:
        """What a checkpoint records beside DeepSpeed's state (same on every rank; rank 0 writes it)."""
        return {"step": self.engine.global_steps, "world_size": self.dist.world_size,
                "zero_stage": ds_config.zero_stage(self.ds_config), "precision": ds_config.precision(self.ds_config),
                "train_batch_size": self.ds_config["train_batch_size"], "config": dataclasses.asdict(self.cfg),
                "dataset": self.fingerprint, "stream": self.stream.state_dict(),
                "tracker": dataclasses.asdict(self.tracker)}

    def validate(self) -> bool:
        """Evaluate the valid split, keep the checkpoint if it is the best so far; True: stop early."""
        step = self.engine.global_steps
        results = self._evaluate("valid", self.cfg.val_limit, tag_prefix="valid")
        value = results[self.best_task]["model"][self.best_name]
        if self.tracker.update(value, step):
            tag = f"best-step{step}"
            self.checkpoints.save(tag, self._meta(), periodic=False)
            if self.dist.is_main:
                write_json_atomic(self.paths.best, {"tag": tag, "step": step, "metric": self.cfg.best_metric,
                                                                "value": value})
                for old in self.paths.checkpoints.glob("best-step*"):
                    if old.name != tag:
                        shutil.rmtree(old, ignore_errors=True)
        self.log(f"valid {self.cfg.best_metric} {value:.4f} at step {step} (best {self.tracker.best:.4f} at step "
                 f"{self.tracker.best_step})")
        return self.tracker.should_stop

    def restore_best(self) -> None:
        """Load the best validated checkpoint (all ranks) so the final model and test evaluation are of it;
        ``latest`` then names it, so that ``export`` and DeepSpeed's own loader see the same model."""
        best = self.tracker.best_step
        if best is None or best == self.engine.global_steps:
            return
        tag_dir = self.checkpoints.folder / f"best-step{best}"
        if not tag_dir.is_dir():  # the run continued another run's checkpoint; its best stayed there
            self.log(f"warning: the best checkpoint (step {best}) is not in {self.checkpoints.folder}: the final model "
                     "is the last step's")
            return
        meta = self._on_main(lambda: self._checked_best(tag_dir))
        universal = checkpointing.needs_universal(meta, self.dist.world_size)
        if universal:
            self._on_main(lambda: checkpointing.verify_checkpoint(
                checkpointing.convert_to_universal(tag_dir, self.log), recursive=True))
        checkpointing.load_engine_state(self.engine, tag_dir, universal)
        self._load_user_table(tag_dir)
        if self.dist.is_main:
            self.checkpoints.point_latest(tag_dir.name)
        self.log(f"restored the best checkpoint (step {best}, {self.cfg.best_metric} {self.tracker.best:.4f})")

    @staticmethod
    def _checked_best(tag_dir: Path) -> dict:
        problem = checkpointing.checkpoint_problem(tag_dir)
        if problem:
            raise ValueError(f"the best checkpoint cannot be restored: {problem}")
        return checkpointing.read_meta(tag_dir)

    def _scalars(self, step: int, scalars: dict[str, float]) -> None:
        if self.writer is None:
            return
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def save(self) -> None:
        """The consolidated model folder to evaluate and serve (the DeepSpeed checkpoints are already written)."""
        module = self.engine.module
        if ds_config.zero_stage(self.ds_config) == 3:
            state = self.engine._zero3_consolidated_16bit_state_dict()  # a collective: every rank calls it
        else:
            state = module.state_dict()
        if self.user_table is not None:  # the model folder holds the whole table, as a dense one: any tool loads it
            whole = self.user_table.full_weight()  # a collective; at ZeRO-3 only rank 0 has a state to add it to
            state = state if state is None else {**state, "user_prompt.users.weight": whole}
        if self.dist.is_main:
            final = self.paths.model
            tmp = temporary_name(final)
            shutil.rmtree(tmp, ignore_errors=True)
            module.save_pretrained(tmp, state_dict=state)
            self.codec.save(tmp)
            replace_folder(tmp, final)  # `evaluate` or `recommend` reading the model meanwhile see the old or the new
            self.log(f"saved the model to {final} (checkpoints in {self.checkpoints.folder})")
        self.collectives.barrier()

    def evaluate(self) -> dict | None:
        """The final evaluation on --eval-split (after ``restore_best``: of the best model)."""
        if self.cfg.eval_split == "none":
            return None
        return self._evaluate(self.cfg.eval_split, self.cfg.eval_limit, tag_prefix="eval", write=True)

    def _evaluate(self, split: str, limit: int | None, tag_prefix: str, write: bool = False) -> dict:
        cfg = self.cfg
        with self._whole_user_table():
            results = evaluate(self.engine.module, self.codec, cfg.data, self.manifest, split=split,
                               tasks=cfg.eval_task_list(), batch_size=cfg.eval_batch_size, num_beams=cfg.num_beams,
                               seed=cfg.seed, limit=limit, rank=self.dist.rank, world_size=self.dist.world_size,
                               synced=self.dist.world_size > 1 and ds_config.zero_stage(self.ds_config) == 3,
                               constrained=cfg.constrained_decoding, topn_history=cfg.topn_history)
        results["step"] = self.engine.global_steps
        if self.dist.is_main:
            if write:
                write_json_atomic(self.paths.metrics(split), results)
                self.log(format_table(results))
            for task in cfg.eval_task_list():
                for name, value in results[task]["model"].items():
                    self.writer.add_scalar(f"{tag_prefix}/{task}/{name}", value, self.engine.global_steps)
            self.writer.flush()
        return results

    def close(self) -> None:
        self.signals.uninstall()
        if self.writer is not None:
            self.writer.close()
        self.engine.destroy()  # before the process group goes: ZeRO-3 ranks abort at exit otherwise
        if dist.is_initialized():
            dist.destroy_process_group()
