"""Training entry point: ``deepspeed --num_gpus N peapod_scale/train.py --data DIR --output RUN ...``.

Also runs under torchrun and srun, or as one plain process.
"""

from __future__ import annotations

import sys

from peapod_scale.config import parse_train_config
from peapod_scale.trainer import Trainer


def main(argv: list[str] | None = None) -> int:
    cfg = parse_train_config(argv)
    trainer = Trainer(cfg)
    try:
        trainer.train()
        trainer.restore_best()  # when --eval-every kept one
        trainer.save()
        trainer.evaluate()
    finally:
        trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
