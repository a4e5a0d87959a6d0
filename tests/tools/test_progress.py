"""Progress bars of `prepare`: one per long step when asked, none otherwise; sparse off a terminal."""

from __future__ import annotations

import io
import sys

import pytest

import peapod_scale.tools.progress as progress
from peapod_scale.data.prepare.dataset import prepare_dataset

from helpers import random_ratings, write_udata

STEPS = ("read u.data", "write sequences", "write train", "write valid/test", "BPR 10 epochs", "neighbours")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True



@pytest.mark.parametrize("shown", [True, False])
def test_each_long_step_has_a_bar_only_when_asked(tmp_path, monkeypatch, shown):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(progress, "progress_interval", lambda: 0.0)  # draw at once, not after a delay
    prepare_dataset("movielens", str(write_udata(tmp_path / "u.data", random_ratings())), str(tmp_path / "out"), num_negatives=5,
                    neighbors=3, mf_dim=8, progress=shown)
    drawn = terminal.getvalue()
    assert [step in drawn for step in STEPS] == [shown] * len(STEPS)


def test_off_a_terminal_bars_wait_and_refresh_as_rarely_as_trainings():
    from peapod_scale.tools.progress import progress_interval

    assert not sys.stderr.isatty()  # pytest captures stderr: a log file, as far as bars can tell
    bar = progress.progress_bar(10, "x", enabled=True)
    assert bar.mininterval == bar.delay == progress_interval() == 30.0
    bar.close()


def test_file_bar_moves_to_absolute_positions(monkeypatch):
    monkeypatch.setattr(sys, "stderr", Terminal())
    with progress.file_bar(1000, "f", enabled=True) as bar:
        progress.advance_to(bar, 300)
        progress.advance_to(bar, 200)  # never backwards
        progress.advance_to(bar, 1000)
        assert bar.n == 1000
