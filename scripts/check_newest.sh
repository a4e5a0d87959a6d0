#!/usr/bin/env bash
# The newest releases the pyproject ranges allow, no constraints: does peapod-scale still import, train through
# `python -m` from the repository root, and start the way slurm/train.sh starts its ranks? CI runs this beside the
# suite (which tests the pinned set, scripts/constraints.txt), so that a dependency release that breaks peapod-scale
# is caught at the next landing. Its own venv: $PEAPOD_NEWEST_VENV, default .venv-newest. Extra arguments go to pytest.
# On this project's machines pip is capped at torch 2.14.1 (a CUDA build on local disk); elsewhere pip takes PyPI's newest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${PEAPOD_NEWEST_VENV:-$root/.venv-newest}"
[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
echo "installing the newest releases into $venv (first time: about 2 minutes)"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet --upgrade --upgrade-strategy eager -e "$root[test]"
"$venv/bin/python" - <<'PY'
import importlib.metadata as m
names = ["torch", "triton", "deepspeed", "transformers", "kernels", "datasets", "pyarrow", "tensorboard", "tokenizers",
         "safetensors", "numpy", "tqdm", "pytest", "matplotlib"]
print("newest releases:", ", ".join(f"{n} {m.version(n)}" for n in names if any(True for _ in m.distributions(name=n))))
PY
source "$venv/bin/activate"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" TOKENIZERS_PARALLELISM=false
python -m pytest -q tests/test_install.py -k "not resolves" "$@"
