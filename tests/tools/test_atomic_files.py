"""Atomic files and folders: a reader in another process never sees a half-written file or a missing folder."""

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from peapod_scale.tools import atomic_files
from peapod_scale.tools.atomic_files import replace_folder

READER = textwrap.dedent("""
    import os, sys
    final, stop = sys.argv[1], sys.argv[2]
    seen = missing = 0
    while not os.path.exists(stop):
        if os.path.isdir(final):
            seen += 1
        else:
            missing += 1
    print(seen, missing)
""")


def _version(root: Path, name: str, version: int) -> Path:
    folder = root / name
    folder.mkdir()
    for part in "abc":
        (folder / f"{part}.txt").write_text(f"{version}\n" * 2000)
    return folder


def test_a_replaced_folder_is_never_missing_for_a_reader(tmp_path):
    """The new folder is complete before it takes the name, and the name always holds a folder."""
    final = _version(tmp_path, "model", 0)
    stop = tmp_path / "stop"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(final), str(stop)], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)  # the reader is looping
        for version in range(1, 200):
            replace_folder(_version(tmp_path, f".model.tmp-{version}", version), final)
    finally:
        stop.touch()
        seen, missing = map(int, reader.communicate(timeout=60)[0].split())
    assert seen > 1000, "the reader did not overlap the replacements"
    assert missing == 0  # deleting the old folder first, or moving it aside, leaves moments with none
    assert (final / "a.txt").read_text().startswith("199\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "stop"]  # no temporary or old folder left


def test_without_an_atomic_exchange_the_folder_is_still_replaced_whole(tmp_path, monkeypatch):
    """A filesystem that cannot swap two names (some network ones) takes the two-rename path."""
    monkeypatch.setattr(atomic_files, "_exchange", lambda a, b: False)
    final = _version(tmp_path, "model", 0)
    replace_folder(_version(tmp_path, ".model.tmp", 1), final)
    assert (final / "c.txt").read_text().startswith("1\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_new_folder_is_renamed_into_place(tmp_path):
    replace_folder(_version(tmp_path, ".model.tmp", 3), tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["a.txt", "b.txt", "c.txt"]
