"""The learning-rate schedule: linear warm-up, then a cosine down to a floor (a fraction of the peak).

A factor of the optimizer's learning rate, for ``torch.optim.lr_scheduler.LambdaLR``: the per-group rates
(the faster embedding tables') keep their ratios.
"""

from __future__ import annotations

import math


def warmup_cosine(warmup: int, total: int, floor: float = 0.1):
    """The factor at each step: (step + 1) / warmup for the first ``warmup`` steps, then cosine to ``floor``."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor
