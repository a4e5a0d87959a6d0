"""Training entry point: ``deepspeed --num_gpus N peapod_scale/train.py --data DIR --output RUN ...``.

Also runs under torchrun and srun, or as one plain process. Exit status: 0 done, 2 an error (one
``error:`` line), 75 stopped by SIGTERM/SIGUSR1 after a checkpoint (run the same command to continue).
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

from peapod_scale.tools.host_memory import use_huge_pages

use_huge_pages()  # before torch allocates: every rank starts here (deepspeed, torchrun, srun, peapod-scale train)

import torch

from peapod_scale.config.train import parse_train_config
from peapod_scale.tools.log import setup_cli_logging
from peapod_scale.tools.run_dir import RunDir
from peapod_scale.training.preemption import EXIT_PREEMPTED, Preempted
from peapod_scale.training.trainer import Trainer

# what a user can fix from the message alone; anything else also leaves its traceback in the run folder
_EXPECTED = (ValueError, OSError)


def _report(error: BaseException, rank: int, run_dir: Path | None) -> None:
    message = f"peapod-scale train: error: {error}" if isinstance(error, _EXPECTED) else \
        f"peapod-scale train: error: rank {rank}: {type(error).__name__}: {error}"
    if run_dir is not None and not isinstance(error, _EXPECTED) and run_dir.is_dir():
        where = RunDir(run_dir).traceback(rank)
        where.write_text("".join(traceback.format_exception(error)))
        message += f" (traceback in {where})"
    print(message, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_train_config(argv)
    setup_cli_logging()  # the package's messages as bare lines, through tqdm
    try:
        trainer = Trainer(cfg)
    except Exception as error:  # noqa: BLE001 - options, data or a checkpoint that do not fit: nothing was written
        _report(error, int(torch.distributed.get_rank()) if torch.distributed.is_initialized() else 0, None)
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        return 2
    try:
        if trainer.train():
            return EXIT_PREEMPTED  # checkpointed, RUN/preempted.json written
        with trainer.signals.interrupting():  # no step left to finish: a signal stops these at once
            trainer.restore_best()  # when --eval-every kept one
            trainer.save()
            trainer.evaluate()
    except Preempted as stop:
        trainer.mark_preempted(stop.signal_name)
        return EXIT_PREEMPTED
    except Exception as error:  # noqa: BLE001 - one line for the user, the traceback beside the run
        _report(error, trainer.dist.rank, trainer.run_dir)
        return 2
    finally:
        trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
