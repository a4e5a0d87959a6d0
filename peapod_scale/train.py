"""Training entry point: ``deepspeed --num_gpus N peapod_scale/train.py --data DIR --output RUN ...``.

Also runs under torchrun and srun, or as one plain process.
"""

from __future__ import annotations

import sys

import torch

from peapod_scale.config import parse_train_config
from peapod_scale.trainer import Trainer


def main(argv: list[str] | None = None) -> int:
    cfg = parse_train_config(argv)
    try:
        trainer = Trainer(cfg)
    except (ValueError, FileNotFoundError) as error:  # options or data that do not fit: say what, no traceback
        print(f"peapod-scale train: error: {error}", file=sys.stderr)
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        return 2
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
