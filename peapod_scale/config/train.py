"""One dataclass holds every training option; the CLI is generated from it, components read from it."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Optional

from peapod_scale.config.model_dimensions import PRESETS

# What resuming a run (--resume) does with an option that differs from the checkpoint's: each field says.
MAY_CHANGE, MUST_MATCH, PER_ATTEMPT = "may change", "must match", "per attempt"


def _opt(default, help: str, resume: str = MAY_CHANGE, **kwargs):
    """An option that a resumed run may change (logged): batch sizes, schedule, evaluation, checkpoints."""
    return field(default=default, metadata={"help": help, "resume": resume, **kwargs})


def _fixed(default, help: str, **kwargs):
    """An option that defines the model, what learns or the training stream: a resumed run must keep it."""
    return _opt(default, help, resume=MUST_MATCH, **kwargs)


def _per_attempt(default, help: str, **kwargs):
    """An option about this attempt alone (where to write, how to start): never compared on resume."""
    return _opt(default, help, resume=PER_ATTEMPT, **kwargs)


@dataclass
class TrainConfig:
    data: str = _opt(None, "dataset folder written by `peapod-scale prepare`", required=True)
    output: str = _per_attempt(None, "run folder: resolved config, checkpoints, model, TensorBoard events, metrics", required=True)
    deepspeed: str = _opt("ds_configs/z2.json", "DeepSpeed JSON config (ZeRO stage, optimizer); batch sizes here override it")
    arch: str = _fixed("tiny", "backbone preset built with random weights: %(choices)s", choices=PRESETS, metavar="PRESET")
    model: Optional[str] = _fixed(None, "pretrained T5/Flan-T5 hub name or local folder; overrides --arch")
    max_steps: int = _opt(1000, "optimizer steps to train")
    micro_batch_size: Optional[int] = _opt(None, "examples per rank per micro-step (default: the DeepSpeed config's)")
    grad_accum: Optional[int] = _opt(None, "micro-steps per optimizer step (default: the DeepSpeed config's)")
    lr: Optional[float] = _opt(None, "peak learning rate (default: the DeepSpeed config's optimizer lr)")
    embedding_lr_scale: float = _opt(30.0, "learning-rate multiplier for embedding tables that start random "
                                           "(user embeddings; token embeddings of an --arch backbone)")
    warmup_steps: int = _opt(100, "linear warm-up steps, then cosine decay to 10%% of the peak")
    dropout: float = _opt(0.1, "dropout rate of a preset backbone")
    seed: int = _fixed(42, "seed for weights, shuffling and sampled candidates")
    tasks: str = _opt("sequential,topn", "comma-separated tasks; batches alternate between them")
    task_weights: Optional[str] = _opt(None, "TASK=WEIGHT,... e.g. sequential=1,topn=1,explanation=0.5: each optimizer "
                                             "step trains one task, drawn in these proportions, the same on every "
                                             "rank; chooses the tasks itself (default: equal weights over --tasks)")
    resume: str = _per_attempt("auto", "auto: continue from the newest complete checkpoint in RUN/checkpoints if there is one, "
                               "else start fresh; none: start fresh (refused where RUN already has checkpoints, "
                               "unless --overwrite); or a path: a run folder, a checkpoints folder (its newest complete "
                               "checkpoint) or one checkpoint tag folder. Restores weights, optimizer, scheduler, data "
                               "stream position, validation tracker and every rank's RNG, so the loss curve continues "
                               "exactly; another number of ranks is converted to a universal checkpoint")
    save_every: int = _opt(500, "optimizer steps between checkpoints (also one at the end, and one when a "
                                "SIGTERM/SIGUSR1 stops the run)")
    keep_last: int = _opt(2, "periodic checkpoints kept; older ones are deleted once a newer one is complete "
                             "(0: keep all; the best validated checkpoint is kept apart)")
    overwrite: bool = _per_attempt(False, "with --resume none: delete the run folder's earlier checkpoints, TensorBoard "
                                  "events, model and metrics, and start again")
    topn_candidates: int = _fixed(50, "candidates in a top-N training prompt (1 positive + sampled negatives; "
                                     "evaluation shows 1 + 99): 50 learned more per CPU second than 20 or 100 "
                                     "(benchmarks/results/bench_quality_ml100k_valid_ablations.md)")
    topn_history: int = _fixed(1, "the user's most recent items shown before the candidates of a top-N prompt, in "
                                "training and evaluation (1: the last item, which lifted top-N HR@10 .61 -> .70 on "
                                "ML-100K valid; 0: the candidates only, as POD's prompt)")
    train: str = _fixed("all", "what learns: all parameters, or prompts (frozen backbone; task prompts, whole-word "
                             "embedding and the user prompt module only)", choices=["all", "prompts"])
    user_prompt: str = _fixed("pool", "personalised prompt: pool (PeaPOD), neighbors (PeaPOD v2: attention over the "
                                    "user's most similar users, lists from `prepare --neighbors`) or none (POD)",
                            choices=["pool", "neighbors", "none"])
    user_init: str = _opt("random", "user embeddings start random or from prepare's matrix-factorisation embeddings "
                                    "(mf; needs --user-dim equal to prepare's --mf-dim)", choices=["random", "mf"])
    pool_size: int = _fixed(32, "M: prompts in the shared pool")
    prompt_length: int = _fixed(3, "L: tokens per user prompt")
    gate_heads: int = _fixed(4, "H: gating heads; head h composes the h-th d/H slice of the width")
    tau: float = _fixed(1.0, "gating softmax temperature")
    user_dim: int = _fixed(64, "user embedding width")
    task_prompt_length: int = _fixed(3, "tokens per task prompt")
    precision: str = _opt("auto", "training precision: auto (bf16 on GPUs that support it, else fp16 with dynamic loss "
                                  "scaling; fp32 on CPU), bf16, fp16 or fp32; an explicit choice wins over the "
                                  "DeepSpeed config", choices=["auto", "bf16", "fp16", "fp32"])
    compose: str = _opt("auto", "prompt composition op: auto (Triton on CUDA, torch on CPU), triton or torch",
                        choices=["auto", "triton", "torch"])
    shuffle_buffer: int = _fixed(65_536, "rows shuffled together: row groups are read and permuted in windows of this size")
    num_workers: int = _opt(1, "data loader worker processes per rank")
    log_every: int = _opt(20, "steps between log lines and TensorBoard scalars")
    eval_split: str = _opt("test", "split evaluated after training (valid or test); 'none' skips it")
    eval_tasks: str = _opt("sequential,topn", "tasks evaluated after training and at each validation (sequential, "
                                              "topn, explanation: BLEU/ROUGE on rows with a review text)")
    eval_batch_size: int = _opt(32, "users per generation batch")
    num_beams: int = _opt(20, "beams in evaluation beam search (10 returned)")
    eval_limit: Optional[int] = _opt(None, "evaluate only N users, spread evenly over the split (quick checks)")
    constrained_decoding: bool = _opt(True, "beam search may only spell valid items (all items for sequential, "
                                            "the row's candidates for top-N): a prefix trie over their token ids; "
                                            "--no-constrained-decoding lets beams spell anything (each invalid "
                                            "answer is then a miss at its rank)")
    eval_every: int = _opt(0, "validate every K optimizer steps on the valid split and keep the best checkpoint "
                              "(0: no validation during training)")
    val_limit: Optional[int] = _opt(None, "validate on N users spread evenly over the split (speed)")
    best_metric: str = _opt("sequential/NDCG@10", "TASK/METRIC that picks the best checkpoint (higher is better)")
    patience: int = _opt(0, "stop after this many validations without improvement (0: never stop early)")
    activation_checkpointing: bool = _opt(False, "recompute T5 block activations in the backward pass "
                                                 "(gradient checkpointing): less activation memory, ~1/3 more compute")
    local_rank: int = _per_attempt(-1, "set by the deepspeed launcher; torchrun and srun use the environment instead")

    def task_list(self) -> list[str]:
        return [t.strip() for t in self.tasks.split(",") if t.strip()]

    def eval_task_list(self) -> list[str]:
        return [t.strip() for t in self.eval_tasks.split(",") if t.strip()]


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """``--some-option`` for every field (underscore spellings accepted too, as launchers pass them)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata)
        names = [f"--{f.name.replace('_', '-')}"] + ([f"--{f.name}"] if "_" in f.name else [])
        kwargs = {"dest": f.name, "help": meta.pop("help", "")}
        rule = meta.pop("resume", MAY_CHANGE)
        kwargs.update(meta)
        if not kwargs.get("required"):
            kwargs["default"] = f.default
            kwargs["help"] += " (default: %(default)s)"
        if rule == MUST_MATCH:
            kwargs["help"] += " [fixed for a run: --resume refuses another value]"
        kind = hints[f.name]
        if kind is bool:  # --flag, and --no-flag for a default that is on
            kwargs.pop("type", None)
            parser.add_argument(*names, action=argparse.BooleanOptionalAction if f.default else "store_true", **kwargs)
            continue
        kwargs["type"] = next((a for a in typing.get_args(kind) if a is not type(None)), kind)  # Optional[X] -> X
        parser.add_argument(*names, **kwargs)


def build_parser(prog: str = "peapod-scale train") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train PeaPOD with DeepSpeed on one process or, under a launcher "
                    "(deepspeed, torchrun, srun), on every rank it starts.",
    )
    add_dataclass_arguments(parser, TrainConfig)
    parser.add_argument("--deepspeed_config", dest="deepspeed", help=argparse.SUPPRESS)
    return parser


def parse_train_config(argv: list[str] | None = None) -> TrainConfig:
    return TrainConfig(**vars(build_parser().parse_args(argv)))


def resume_rule(name: str) -> str:
    """MAY_CHANGE, MUST_MATCH or PER_ATTEMPT for a TrainConfig field; options a newer version added may change."""
    field_ = next((f for f in dataclasses.fields(TrainConfig) if f.name == name), None)
    return field_.metadata.get("resume", MAY_CHANGE) if field_ else MAY_CHANGE
