"""Options of the commands that read a trained model: ``export`` and ``recommend`` (``evaluate``'s are in
config/evaluation.py, beside the decoding options it shares with ``train``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from peapod_scale.config.evaluation import DTYPES
from peapod_scale.config.options import Options, option

RUN_DIR_HELP = "run folder written by `train`, its model/ folder, or a folder written by `export`"


@dataclass
class ExportConfig(Options):
    PROG = "peapod-scale export"
    DESCRIPTION = ("Consolidate a run's ZeRO checkpoint (any stage) into a Hugging Face-format model folder that "
                   "loads without DeepSpeed.")
    OLD_SPELLINGS = {"run_dir": ("--checkpoint",)}

    run_dir: str = option(None, "run folder written by `train` (holds checkpoints/ and model/)", required=True,
                          metavar="RUN")
    output: str = option(None, "folder to write (replaced atomically)", required=True, metavar="DIR")
    tag: Optional[str] = option(None, "checkpoint tag, e.g. step1000 (default: the latest)")
    dtype: str = option("fp32", "weights' dtype in the folder: fp32 keeps the fp32 master weights of a bf16 run "
                                "exactly, bf16 halves its size", choices=["fp32", "bf16"])


@dataclass
class RecommendConfig(Options):
    PROG = "peapod-scale recommend"
    DESCRIPTION = "Top-k next items for one user (original ids in and out)."
    OLD_SPELLINGS = {"run_dir": ("--model",)}

    run_dir: str = option(None, RUN_DIR_HELP, required=True, metavar="RUN")
    data: str = option(None, "dataset folder written by `prepare` (holds the user's history)", required=True)
    user: str = option(None, "the user's original id, as in the raw data", required=True)
    k: int = option(10, "items to recommend", at_least=1)
    num_beams: Optional[int] = option(None, "beams (default: max(20, 2k))", at_least=1)
    include_seen: bool = option(False, "allow items the user already interacted with")
    dtype: str = option("auto", "dtype of every parameter: auto is the one the run trained in, as the trainer's own "
                                "evaluation used it", choices=list(DTYPES))
