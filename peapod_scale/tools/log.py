"""The ``peapod_scale`` logger: how the package's messages reach a person.

Modules log to ``logging.getLogger(__name__)`` (children of ``peapod_scale``), so a library user can
raise the level, add filters or send them anywhere with the standard ``logging`` API. Nothing here
runs at import: only a command-line entry calls :func:`setup_cli_logging`, which prints the messages
as the commands always printed them -- the bare text, INFO on stdout, WARNING and above on stderr --
through ``tqdm.write``, so that a line logged while a progress bar is drawn does not split the bar.
"""

from __future__ import annotations

import logging
import sys

from tqdm import tqdm

LOGGER_NAME = "peapod_scale"


class TqdmHandler(logging.Handler):
    """Writes each record with ``tqdm.write``, which lifts the bars off the terminal, prints the line
    and draws them again. The streams are looked up at every record, not when the handler is made,
    so a caller that swaps sys.stdout (pytest, a notebook, a redirect) still gets the output."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            tqdm.write(self.format(record), file=stream)
            stream.flush()
        except Exception:  # noqa: BLE001 - logging's own contract: report, never raise
            self.handleError(record)


def setup_cli_logging(level: int = logging.INFO) -> logging.Logger:
    """Give the ``peapod_scale`` logger one :class:`TqdmHandler` and ``level``. Once it has one, a
    call changes nothing, so a level set since (``--quiet``, a host program) stays. Records still
    propagate to the root logger, so handlers installed there (or pytest's capture) see them too."""
    logger = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(handler, TqdmHandler) for handler in logger.handlers):
        handler = TqdmHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(level)
    return logger
