"""The `peapod_scale` logger: nothing configured at import, the CLI's handler prints bare lines through
tqdm.write (INFO on stdout, warnings on stderr), and library users keep the standard logging controls."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
from tqdm import tqdm

from peapod_scale.tools.log import LOGGER_NAME, TqdmHandler, setup_cli_logging


@pytest.fixture()
def package_logger():
    """The package logger with its handlers and level restored afterwards (other tests share it)."""
    logger = logging.getLogger(LOGGER_NAME)
    handlers, level = list(logger.handlers), logger.level
    for handler in handlers:
        logger.removeHandler(handler)
    yield logger
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    for handler in handlers:
        logger.addHandler(handler)
    logger.setLevel(level)


def test_importing_the_package_configures_no_logging():
    code = ("import logging, peapod_scale.tools.log, peapod_scale.data.prepare.dataset, peapod_scale.tools.progress; "
            "print(logging.getLogger('peapod_scale').handlers, logging.getLogger().handlers, "
            "logging.getLogger('peapod_scale').level)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]", "[]", "0"]


def test_cli_handler_prints_bare_lines_info_to_stdout_warnings_to_stderr_once(package_logger, capsys):
    setup_cli_logging()
    setup_cli_logging()  # a second call (the CLI and run_prepare both ask) adds nothing
    assert sum(isinstance(h, TqdmHandler) for h in package_logger.handlers) == 1
    child = logging.getLogger("peapod_scale.data.prepare.dataset")
    child.debug("not shown")
    child.info("prepared x -> y")
    child.warning("3 prompts were cut")
    printed = capsys.readouterr()
    assert printed.out == "prepared x -> y\n"
    assert printed.err == "3 prompts were cut\n"


def test_library_users_filter_with_the_standard_api(package_logger, capsys):
    setup_cli_logging()
    package_logger.setLevel(logging.WARNING)
    setup_cli_logging()  # does not undo the user's level
    logging.getLogger("peapod_scale.data.prepare.dataset").info("summary")
    assert capsys.readouterr().out == ""


def test_a_message_during_a_bar_lifts_the_bar_and_draws_it_again(package_logger, capsys):
    """tqdm.write clears the bar before the line and redraws it after; a print would leave the line
    glued to the half-drawn bar."""
    setup_cli_logging()
    with tqdm(total=10, desc="BPR", file=sys.stderr, mininterval=0, leave=False, ncols=60) as bar:
        bar.update(3)
        assert "BPR" in capsys.readouterr().err  # the bar is on screen
        logging.getLogger("peapod_scale.x").info("a line")
        printed = capsys.readouterr()
    assert printed.out == "a line\n"
    assert printed.err.count("BPR") == 1 and printed.err.startswith("\r")  # cleared, then drawn again
