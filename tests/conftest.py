"""Shared by the whole suite. pytest puts this folder on ``sys.path`` (rootdir-less ``prepend`` import mode), which
is how test modules reach ``helpers.py``; session fixtures here prepare data once for every module that needs it."""

from pathlib import Path

import pytest

from peapod_scale.data.prepare.dataset import prepare_dataset


@pytest.fixture(scope="session")
def tiny_movielens(tmp_path_factory) -> Path:
    """10 users walking a ring of 15 items, 6 ratings each, 4 negatives: a dataset that trains in seconds."""
    root = tmp_path_factory.mktemp("tiny-movielens")
    lines = [f"{u}\t{(u + k) % 15 + 1}\t4\t{100 * u + k}" for u in range(1, 11) for k in range(6)]
    (root / "u.data").write_text("\n".join(lines) + "\n")
    prepare_dataset("movielens", str(root / "u.data"), str(root / "ds"), seed=0, num_negatives=4)
    return root / "ds"
