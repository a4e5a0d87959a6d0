#!/usr/bin/env bash
# Create the virtual environment (default .venv, or $PEAPOD_VENV) and install peapod-scale into it.
# CPU machines get the pinned CPU build of torch; a machine whose python already has a CUDA torch
# keeps it (the venv then sees the system site-packages).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${PEAPOD_VENV:-$root/.venv}"
python="${PYTHON:-python3}"

has_cuda_torch() { "$1" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; }

if [ ! -x "$venv/bin/python" ]; then
  echo "creating $venv"
  if has_cuda_torch "$python"; then
    "$python" -m venv --system-site-packages "$venv"
  else
    "$python" -m venv "$venv"
  fi
fi
constraints=()
if ! has_cuda_torch "$venv/bin/python"; then
  constraints=(-c "$root/scripts/constraints-cpu.txt")
fi
stamp="$venv/.peapod-installed"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  echo "installing peapod-scale and its dependencies into $venv (first time: about 2 minutes)"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet "${constraints[@]}" -e "$root[test]"
  touch "$stamp"
fi
