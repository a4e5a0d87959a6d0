"""Evaluation options: beam-search decoding (shared by ``train`` and ``evaluate``, one name each), the
evaluation and validation a training run does, and the ``evaluate`` command's own config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from peapod_scale.config.options import Options, option, per_attempt
from peapod_scale.config.tasks import check_task_names, task_names

SPLITS = ("valid", "test")
DTYPES = ("auto", "fp32", "bf16", "fp16")


@dataclass
class DecodingOptions(Options):
    SECTION = "beam-search decoding"

    eval_batch_size: int = option(32, "users per generation batch", at_least=1)
    num_beams: Optional[int] = option(20, "beams in evaluation beam search (10 returned)", at_least=1)
    eval_limit: Optional[int] = option(None, "evaluate only N users, spread evenly over the split (quick checks)",
                                       at_least=1)
    constrained_decoding: Optional[bool] = option(
        True, "beam search may only spell valid items (all items for sequential, the row's candidates for top-N): a "
              "prefix trie over their token ids; --no-constrained-decoding lets beams spell anything (each invalid "
              "answer is then a miss at its rank)")


@dataclass
class EvalOptions(DecodingOptions):
    SECTION = "evaluation and validation"

    eval_split: str = option("test", "split evaluated after training (valid or test); 'none' skips it",
                             choices=[*SPLITS, "none"])
    eval_tasks: str = option("sequential,topn", "tasks evaluated after training and at each validation (sequential, "
                                                "topn, explanation: BLEU/ROUGE on rows with a review text)")
    eval_every: int = option(0, "validate every K optimizer steps on the valid split and keep the best checkpoint "
                                "(0: no validation during training)", at_least=0)
    val_limit: Optional[int] = option(None, "validate on N users spread evenly over the split (speed)", at_least=1)
    best_metric: str = option("sequential/NDCG@10", "TASK/METRIC that picks the best checkpoint (higher is better)")
    patience: int = option(0, "stop after this many validations without improvement (0: never stop early)",
                           at_least=0)

    def eval_task_list(self) -> list[str]:
        return task_names(self.eval_tasks)

    def _check(self) -> None:
        check_task_names("--eval-tasks", self.eval_tasks)
        task, _, metric = self.best_metric.partition("/")
        if not metric:
            raise ValueError(f"--best-metric {self.best_metric}: expected TASK/METRIC, e.g. sequential/NDCG@10")
        if self.eval_every and task not in self.eval_task_list():  # only validation picks a best checkpoint
            raise ValueError(f"--best-metric {self.best_metric}: task {task!r} is not in --eval-tasks {self.eval_tasks}")


@dataclass
class EvaluateConfig(DecodingOptions):
    """``peapod-scale evaluate``: the run's own decoding protocol unless told otherwise, so its numbers come out
    again (None below means "as the run was trained and evaluated")."""

    PROG = "peapod-scale evaluate"
    DESCRIPTION = "Evaluate a trained run (its model/ folder) by beam search on one split."
    OLD_SPELLINGS = {"run_dir": ("--checkpoint",), "eval_batch_size": ("--batch-size",), "eval_limit": ("--limit",),
                     "constrained_decoding": ("--constrained",)}

    run_dir: str = option(None, "run folder written by `train`, its model/ folder, or a folder written by `export`",
                          required=True, metavar="RUN")
    data: str = option(None, "dataset folder written by `prepare`", required=True)
    split: str = option("test", "split to evaluate", choices=list(SPLITS))
    tasks: str = option("sequential,topn", "comma-separated tasks: sequential, topn, explanation")
    num_beams: Optional[int] = option(None, "beams; 10 sequences are returned (default: the run's --num-beams, 20 "
                                            "without a config)", at_least=1)
    constrained_decoding: Optional[bool] = option(
        None, "constrained decoding: generate only valid item ids (a prefix trie over their tokens) (default: as the "
              "run evaluated (its --constrained-decoding), on for a folder without its config)")
    seed: Optional[int] = option(None, "seed that orders top-N candidates (default: the run's own --seed, from its "
                                       "config.json, so the numbers equal its metrics_<split>.json; 42 for a folder "
                                       "without one)")
    output: Optional[str] = per_attempt(None, "metrics JSON (default: RUN/metrics_<split>.json)")
    dtype: str = option("auto", "dtype of every parameter: auto is the one the run trained in, as the trainer's own "
                                "evaluation used it", choices=list(DTYPES))

    def _check(self) -> None:
        check_task_names("--tasks", self.tasks)
