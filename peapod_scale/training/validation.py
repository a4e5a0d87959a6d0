"""Early stopping on the validation metric (``--eval-every``, ``--patience``): which validation was best."""

from __future__ import annotations

import dataclasses
import math


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
