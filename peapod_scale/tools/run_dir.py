"""The run folder: every path a run writes, named in one place.

``peapod-scale train --output RUN`` writes ``checkpoints/`` (DeepSpeed tags, ``latest``), ``model/`` (the
consolidated model ``evaluate`` and ``recommend`` read), ``tensorboard/``, ``config.json`` (the resolved options),
``train.log``, ``metrics_<split>.json``, ``best.json`` (with ``--eval-every``), ``preempted.json`` (after a
preemption stop) and ``traceback-rank<R>.txt`` (after an unexpected error). The SLURM scripts and the README name
the same files; a new file is added here first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def train_log(self) -> Path:
        return self.root / "train.log"

    @property
    def best(self) -> Path:
        return self.root / "best.json"

    @property
    def preempted(self) -> Path:
        return self.root / "preempted.json"

    def metrics(self, split: str) -> Path:
        return self.root / f"metrics_{split}.json"

    def traceback(self, rank: int) -> Path:
        return self.root / f"traceback-rank{rank}.txt"

    def written_by_training(self) -> list[Path]:
        """What a fresh run (``--overwrite``) clears: everything above that exists, checkpoints included."""
        fixed = [self.checkpoints, self.tensorboard, self.model, self.best, self.train_log, self.config]
        return [p for p in fixed if p.exists() or p.is_symlink()] + sorted(self.root.glob("metrics_*.json"))


# Beside an exported model: the run's config.json, so that `evaluate` of the export scores as the run did.
RUN_CONFIG = "run_config.json"
