"""The wheel users install: it carries the kernels and the DeepSpeed configs, and trains outside a clone."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(REPO),
                    "-w", str(root)], check=True, capture_output=True, timeout=300)
    (wheel,) = root.glob("peapod_scale-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(root / "site"), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    return root / "site"


def test_the_wheel_holds_every_module_of_the_package_and_the_kernels(installed):
    shipped = {p.relative_to(installed / "peapod_scale").as_posix() for p in (installed / "peapod_scale").rglob("*.py")}
    in_clone = {p.relative_to(REPO / "peapod_scale").as_posix() for p in (REPO / "peapod_scale").rglob("*.py")}
    in_clone |= {f"kernels/{p.name}" for p in (REPO / "kernels").glob("*.py")}
    assert in_clone - shipped == set()


def test_an_installed_wheel_trains_with_a_shipped_config_by_name(installed, tiny_movielens, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(installed), "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu",
           "TOKENIZERS_PARALLELISM": "false"}
    where = subprocess.run([sys.executable, "-c", "import peapod_scale; print(peapod_scale.__file__)"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(installed)), where  # the wheel's copy, not the clone's
    result = subprocess.run([sys.executable, "-m", "peapod_scale.cli", "train", "--data", str(tiny_movielens), "--output", "run",
                             "--deepspeed", "z2", "--max-steps", "2", "--micro-batch-size", "4", "--eval-split", "none",
                             "--topn-candidates", "3"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["deepspeed"]["zero_optimization"]["stage"] == 2


def test_an_unknown_config_name_lists_the_shipped_ones(tmp_path):
    from peapod_scale.distributed import ds_config

    with pytest.raises(FileNotFoundError, match="z1, z2, z3, z3_offload"):
        ds_config.locate("z9")
    assert ds_config.locate("ds_configs/z3.json").name == "z3.json"
