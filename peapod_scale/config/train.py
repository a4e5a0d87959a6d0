"""``train``'s options, one dataclass per concern (data, model, optimisation, checkpoints, evaluation, launch),
composed into ``TrainConfig``: the parser, ``--help``'s sections and the resume rules all come from the fields."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Optional

from peapod_scale.config.evaluation import EvalOptions
from peapod_scale.config.model_dimensions import PRESETS
from peapod_scale.config.options import (
    MAY_CHANGE,
    MUST_MATCH,
    PER_ATTEMPT,
    Options,
    fixed,
    option,
    per_attempt,
)
from peapod_scale.config.options import (
    resume_rule as field_resume_rule,
)
from peapod_scale.config.tasks import check_task_names, task_names

__all__ = ["MAY_CHANGE", "MUST_MATCH", "PER_ATTEMPT", "TrainConfig", "build_parser", "parse_train_config",
           "resume_rule"]


@dataclass
class DataOptions(Options):
    SECTION = "data"

    data: str = option(None, "dataset folder written by `peapod-scale prepare`", required=True)
    tasks: str = option("sequential,topn", "comma-separated tasks to train; each optimizer step trains one, "
                                                  "drawn by --task-weights (equal weights by default)")
    task_weights: Optional[str] = option(None, "TASK=WEIGHT,... e.g. sequential=1,topn=1,explanation=0.5: each optimizer "
                                             "step trains one task, drawn in these proportions, the same on every "
                                             "rank; chooses the tasks itself (default: equal weights over --tasks)")
    topn_candidates: int = fixed(50, "candidates in a top-N training prompt (1 positive + sampled negatives; "
                                     "evaluation shows 1 + 99): 50 learned more per CPU second than 20 or 100 "
                                     "(benchmarks/results/bench_quality_ml100k_valid_ablations.md)", at_least=2)
    topn_history: int = fixed(1, "the user's most recent items shown before the candidates of a top-N prompt, in "
                                "training and evaluation (1: the last item, which lifted top-N HR@10 .61 -> .70 on "
                                "ML-100K valid; 0: the candidates only, as POD's prompt)", at_least=0)
    shuffle_buffer: int = fixed(65_536, "rows shuffled together: row groups are read and permuted in windows of this size",
                                at_least=1)
    num_workers: int = option(1, "data loader worker processes per rank", at_least=0)
    seed: int = fixed(42, "seed for weights, shuffling and sampled candidates", at_least=0)

    def task_list(self) -> list[str]:
        return task_names(self.tasks)

    def _check(self) -> None:
        check_task_names("--tasks", self.tasks)


@dataclass
class ModelOptions(Options):
    SECTION = "model and prompts"

    arch: str = fixed("tiny", "backbone preset built with random weights: %(choices)s", choices=PRESETS, metavar="PRESET")
    model: Optional[str] = fixed(None, "pretrained T5/Flan-T5 hub name or local folder; overrides --arch")
    dropout: float = option(0.1, "dropout rate of a preset backbone", at_least=0.0, below=1.0)
    train: str = fixed("all", "what learns: all parameters, or prompts (frozen backbone; task prompts, whole-word "
                             "embedding and the user prompt module only)", choices=["all", "prompts"])
    user_prompt: str = fixed("pool", "personalised prompt: pool (PeaPOD), neighbors (PeaPOD v2: attention over the "
                                    "user's most similar users, lists from `prepare --neighbors`) or none (POD)",
                            choices=["pool", "neighbors", "none"])
    user_init: str = option("random", "user embeddings start random or from prepare's matrix-factorisation embeddings "
                                    "(mf; needs --user-dim equal to prepare's --mf-dim)", choices=["random", "mf"])
    pool_size: int = fixed(32, "M: prompts in the shared pool", at_least=1)
    prompt_length: int = fixed(3, "L: tokens per user prompt", at_least=1)
    gate_heads: int = fixed(4, "H: gating heads; head h composes the h-th d/H slice of the width", at_least=1)
    tau: float = fixed(1.0, "gating softmax temperature", above=0.0)
    user_dim: int = fixed(64, "user embedding width", at_least=1)
    task_prompt_length: int = fixed(3, "tokens per task prompt", at_least=1)
    user_table: str = fixed("dense", "where the user embedding rows live: dense (a parameter of the model, under "
                                     "ZeRO and AdamW like the rest) or sharded (row-wise over the ranks with "
                                     "TorchRec, row-wise Adagrad on the rows a step touches only, --user-lr; "
                                     "--user-prompt pool; needs torchrec and FBGEMM, which scripts/setup_venv.sh "
                                     "installs where torch is 2.13)", choices=["dense", "sharded"])
    compose: str = option("auto", "prompt composition op: auto (Triton on CUDA, torch on CPU), triton or torch",
                        choices=["auto", "triton", "torch"])
    activation_checkpointing: bool = option(False, "recompute T5 block activations in the backward pass "
                                                 "(gradient checkpointing): less activation memory, ~1/3 more compute")

    def _check(self) -> None:
        if self.user_table == "sharded" and self.user_prompt != "pool":
            raise ValueError(f"--user-table sharded serves --user-prompt pool, not {self.user_prompt}; use "
                             "--user-table dense")


@dataclass
class OptimOptions(Options):
    SECTION = "optimisation"

    max_steps: int = option(1000, "optimizer steps to train", at_least=1)
    micro_batch_size: Optional[int] = option(None, "examples per rank per micro-step (default: the DeepSpeed config's)",
                                             at_least=1)
    grad_accum: Optional[int] = option(None, "micro-steps per optimizer step (default: the DeepSpeed config's)",
                                       at_least=1)
    lr: Optional[float] = option(None, "peak learning rate (default: the DeepSpeed config's optimizer lr)",
                                 at_least=0.0)
    embedding_lr_scale: float = option(30.0, "learning-rate multiplier for embedding tables that start random "
                                           "(user embeddings; token embeddings of an --arch backbone)", above=0.0)
    user_lr: float = option(0.05, "learning rate of the row-wise Adagrad that updates a --user-table sharded "
                                  "(constant: Adagrad's own accumulators decay each row's steps)", above=0.0)
    warmup_steps: int = option(100, "linear warm-up steps, then cosine decay to 10%% of the peak", at_least=0)
    precision: str = option("auto", "training precision: auto (bf16 on GPUs that support it, else fp16 with dynamic loss "
                                  "scaling; fp32 on CPU), bf16, fp16 or fp32; an explicit choice wins over the "
                                  "DeepSpeed config", choices=["auto", "bf16", "fp16", "fp32"])


@dataclass
class CheckpointOptions(Options):
    SECTION = "checkpoints and resume"

    output: str = per_attempt(None, "run folder: resolved config, checkpoints, model, TensorBoard events, metrics", required=True)
    resume: str = per_attempt("auto", "auto: continue from the newest complete checkpoint in RUN/checkpoints if there is one, "
                               "else start fresh; none: start fresh (refused where RUN already has checkpoints, "
                               "unless --overwrite); or a path: a run folder, a checkpoints folder (its newest complete "
                               "checkpoint) or one checkpoint tag folder. Restores weights, optimizer, scheduler, data "
                               "stream position, validation tracker and every rank's RNG, so the loss curve continues "
                               "exactly; another number of ranks is converted to a universal checkpoint")
    save_every: int = option(500, "optimizer steps between checkpoints (also one at the end, and one when a "
                                "SIGTERM/SIGUSR1 stops the run)", at_least=1)
    keep_last: int = option(2, "periodic checkpoints kept; older ones are deleted once a newer one is complete "
                             "(0: keep all; the best validated checkpoint is kept apart)", at_least=0)
    overwrite: bool = per_attempt(False, "with --resume none: delete the run folder's earlier checkpoints, TensorBoard "
                                  "events, model and metrics, and start again")


@dataclass
class LaunchOptions(Options):
    SECTION = "launch and logging"

    deepspeed: str = option("ds_configs/z2.json", "DeepSpeed JSON config, a file or a shipped name (z1, z2, z3, "
                                                      "z3_offload): ZeRO stage, optimizer; the batch size options "
                                                      "here override it")
    log_every: int = option(20, "steps between log lines and TensorBoard scalars", at_least=1)
    local_rank: int = per_attempt(-1, "set by the deepspeed launcher; torchrun and srun use the environment instead")


@dataclass
class TrainConfig(LaunchOptions, EvalOptions, CheckpointOptions, OptimOptions, ModelOptions, DataOptions):
    """Every ``train`` option, flat (components read ``cfg.lr``); sections in ``--help`` follow the concerns,
    the first listed last."""

    PROG = "peapod-scale train"
    DESCRIPTION = ("Train PeaPOD with DeepSpeed on one process or, under a launcher (deepspeed, torchrun, srun), on "
                   "every rank it starts.")

    @classmethod
    def parser(cls) -> argparse.ArgumentParser:
        parser = super().parser()
        parser.add_argument("--deepspeed_config", dest="deepspeed", help=argparse.SUPPRESS)  # DeepSpeed's own name
        return parser


def build_parser() -> argparse.ArgumentParser:
    return TrainConfig.parser()


def parse_train_config(argv: list[str] | None = None) -> TrainConfig:
    return TrainConfig.from_args(argv)


def resume_rule(name: str) -> str:
    """MAY_CHANGE, MUST_MATCH or PER_ATTEMPT for a TrainConfig field; options a newer version added may change."""
    return field_resume_rule(TrainConfig, name)
