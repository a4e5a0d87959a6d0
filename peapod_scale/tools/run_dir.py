"""The run folder: every path a run writes, named in one place.

``peapod-scale train --output RUN`` writes ``checkpoints/`` (DeepSpeed tags, ``latest``), ``model/`` (the
consolidated model ``evaluate`` and ``recommend`` read), ``tensorboard/``, ``config.json`` (the resolved options),
``train.log``, ``metrics_<split>.json``, ``best.json`` (with ``--eval-every``), ``preempted.json`` (after a
preemption stop) and ``traceback-rank<R>.txt`` (after an unexpected error). The SLURM scripts and the README name
the same files; a new file is added here first.
"""

from __future__ import annotations

from pathlib import Path


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.checkpoints = self.root / "checkpoints"
        self.model = self.root / "model"
        self.tensorboard = self.root / "tensorboard"
        self.config = self.root / "config.json"
        self.train_log = self.root / "train.log"
        self.best = self.root / "best.json"
        self.preempted = self.root / "preempted.json"

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
