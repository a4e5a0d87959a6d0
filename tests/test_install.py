"""Installs that keep working: nothing in the repository root shadows an installed package, `python -m` from the
root trains (as srun, torchrun and the SLURM scripts start it), and the tested set resolves from PyPI alone.

The shadowing tests need the real hub-kernels package that transformers >= 5.25 requires (the tested set installs
it): from the repository root, `import kernels` must give the installed one. scripts/check_newest.sh runs this file
(less the resolver tests) against the newest releases the pyproject ranges allow.
"""

import importlib.metadata
import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from helpers import REPO

CONSTRAINTS = REPO / "scripts" / "constraints.txt"
PYPI = "https://pypi.org/simple/"


def _root_importable_names() -> list[str]:
    """Top-level names a process started in the repository root can import from it (besides the project)."""
    names = [p.name for p in REPO.iterdir() if p.is_dir() and (p / "__init__.py").is_file()]
    names += [p.stem for p in REPO.glob("*.py")]
    return sorted(n for n in names if n != "peapod_scale")


def _env(**extra: str) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false", **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("name", _root_importable_names())
def test_no_name_importable_from_the_repository_root_shadows_an_installed_package(name):
    probe = (f"import importlib\n"
             f"try:\n    print(importlib.import_module({name!r}).__file__)\n"
             f"except ModuleNotFoundError as error:\n    print('missing', error.name)\n")
    found = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=_env(), capture_output=True, text=True,
                           timeout=120)
    assert found.returncode == 0, found.stderr[-3000:]
    where = found.stdout.strip().splitlines()[-1]
    owners = importlib.metadata.packages_distributions().get(name, [])
    if owners:  # an installed distribution provides this name: the import must reach it, not the repository's folder
        assert where != "missing " + name, (name, owners)
        assert not Path(where).resolve().is_relative_to(REPO / name) and Path(where).resolve() != REPO / f"{name}.py", \
            (name, owners, where)
    elif name == "kernels":  # nothing installed under the name: the folder must not pose as it either
        assert where == "missing kernels", where


def test_the_tested_set_has_the_hub_kernels_package_that_transformers_imports():
    """Guards the guard: without the real package installed the shadowing test above would check nothing for it."""
    required = importlib.metadata.requires("transformers") or []
    if not any(r.split(";")[0].replace(" ", "").startswith("kernels") for r in required if "extra ==" not in r):
        pytest.skip(f"transformers {importlib.metadata.version('transformers')} does not require kernels")
    assert importlib.metadata.packages_distributions().get("kernels") == ["kernels"]


def _train_args(dataset: Path, run_dir: Path) -> list[str]:
    return ["--data", str(dataset), "--output", str(run_dir), "--deepspeed", "ds_configs/z2.json", "--max-steps", "2",
            "--micro-batch-size", "4", "--eval-split", "none", "--topn-candidates", "3", "--log-every", "1"]


def test_python_m_train_from_the_repository_root_imports_transformers_and_trains(tiny_movielens, tmp_path):
    env = _env(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()))
    run_dir = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "peapod_scale.train", *_train_args(tiny_movielens, run_dir)], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (run_dir / "model").is_dir()


def test_the_slurm_rank_command_line_trains_on_two_ranks_from_the_repository_root(tiny_movielens, tmp_path):
    """What slurm/train.sh starts on every node (slurm/common.sh, LAUNCHER=torchrun), less srun."""
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
               "--max-restarts", "0", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}",
               "--no-python", "bash", "slurm/rank.sh", "python", "-m", "peapod_scale.train",
               *_train_args(tiny_movielens, run_dir)]
    env = _env(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "rank 1/2" in result.stdout + result.stderr
    assert (run_dir / "model").is_dir()


def _constraints(*, keep_torch: str | None = None) -> list[str]:
    """The tested set as scripts/setup_venv.sh applies it: with an installed CUDA torch, that torch replaces the pin."""
    lines = [line.strip() for line in CONSTRAINTS.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if keep_torch:
        lines = [line for line in lines if not line.startswith("torch==")] + [f"torch=={keep_torch}"]
    return lines


def _resolve(tmp_path: Path, constraints: list[str]) -> dict[str, str]:
    """pip's resolver on PyPI alone (this machine's pip configuration, local wheels and caps switched off)."""
    try:
        urllib.request.urlopen(PYPI + "pip/", timeout=10).close()
    except OSError as error:
        pytest.skip(f"PyPI is not reachable from here ({error}): the resolver check needs the index")
    (tmp_path / "constraints.txt").write_text("\n".join(constraints) + "\n")
    report = tmp_path / "report.json"
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull}
    env = {k: v for k, v in env.items() if not k.startswith("PIP_") or k == "PIP_CONFIG_FILE"}
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--isolated", "--dry-run", "--ignore-installed",
                             "--quiet", "--index-url", PYPI, "--report", str(report),
                             "-c", str(tmp_path / "constraints.txt"), f"{REPO}[test]"],
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
            for item in json.loads(report.read_text())["install"]}


def _assert_pins_hold(resolved: dict[str, str], constraints: list[str]) -> None:
    """Every pinned package is resolved, at its pin (all are dependencies of the project or of transformers)."""
    assert {line.split("==")[0]: resolved.get(line.split("==")[0]) for line in constraints} == \
        dict(line.split("==") for line in constraints)


def test_the_tested_set_resolves_from_pypi_alone_on_a_machine_without_torch(tmp_path):
    """A fresh Linux x86-64 machine: PyPI's torch 2.13.0 there is the CUDA build, and it brings its own triton."""
    constraints = _constraints()
    resolved = _resolve(tmp_path, constraints)
    print("resolved (no torch installed):", json.dumps(resolved, sort_keys=True))
    _assert_pins_hold(resolved, constraints)
    assert resolved["torch"] == "2.13.0" and "triton" in resolved and "kernels" in resolved


def test_the_tested_set_resolves_beside_a_cuda_torch_that_setup_venv_keeps(tmp_path):
    """A GPU machine with its own CUDA torch (the lent H100's is 2.11.0): everything else at the tested versions."""
    constraints = _constraints(keep_torch="2.11.0")
    resolved = _resolve(tmp_path, constraints)
    print("resolved (torch 2.11.0 kept):", json.dumps(resolved, sort_keys=True))
    _assert_pins_hold(resolved, constraints)
    assert resolved["torch"] == "2.11.0" and "triton" in resolved
