#!/usr/bin/env bash
# Create the virtual environment (default .venv, or $PEAPOD_VENV) and install peapod-scale into it at the tested
# versions (scripts/constraints.txt). A python that already has a CUDA (or ROCm) build of torch keeps it: the venv
# then sees the system site-packages, and only the torch line of the tested set gives way to the installed build.
# Elsewhere torch 2.13.0 is installed: this project's CPU machines take a local CPU build of it; from PyPI alone a
# Linux x86-64 machine gets the CUDA build (several GB; README "Install" says how to take PyTorch's CPU wheels).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${PEAPOD_VENV:-$root/.venv}"
python="${PYTHON:-python3}"

# The version of a GPU build of torch that $1 imports, or nothing. The build, not torch.cuda.is_available():
# a cluster's login node has the CUDA build and no GPU.
# The version is the installed distribution's (2.11.0), which pip compares, not torch.__version__ (2.11.0+cu130).
gpu_torch() {
  "$1" -c "import importlib.metadata as m, torch; print(m.version('torch') if torch.version.cuda or torch.version.hip else '')" \
    2>/dev/null || true
}

if [ ! -x "$venv/bin/python" ]; then
  echo "creating $venv"
  if [ -n "$(gpu_torch "$python")" ]; then
    "$python" -m venv --system-site-packages "$venv"
    # --system-site-packages reaches the base interpreter's packages only: when $python is itself a venv's
    # (a GPU image's /opt/.../.venv), a .pth file adds that venv's site-packages after the new venv's own.
    parent=$("$python" -c "import sys, sysconfig; p = sysconfig.get_paths(); print('\n'.join(dict.fromkeys([p['purelib'], p['platlib']])) if sys.prefix != sys.base_prefix else '')")
    if [ -n "$parent" ]; then
      echo "$parent" > "$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/peapod-parent-venv.pth"
    fi
  else
    "$python" -m venv "$venv"
  fi
fi
constraints="$root/scripts/constraints.txt"
kept="$(gpu_torch "$venv/bin/python")"
if [ -n "$kept" ]; then
  constraints="$venv/peapod-constraints.txt"
  { grep -v '^torch==' "$root/scripts/constraints.txt"; echo "torch==$kept"; } > "$constraints"
fi
stamp="$venv/.peapod-installed"
sharded="$root/scripts/constraints-sharded.txt"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ] || [ "$root/scripts/constraints.txt" -nt "$stamp" ] \
    || [ "$sharded" -nt "$stamp" ]; then
  echo "installing peapod-scale and its dependencies into $venv${kept:+ beside its torch $kept} (first time: about 2 minutes)"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -c "$constraints" -e "$root[test]"
  # The sharded user table's engine, where its pins fit the installed torch (constraints-sharded.txt says why
  # torchrec and FBGEMM go in without their declared dependencies). Optional: without it --user-table auto is dense.
  torch_version="$("$venv/bin/python" -c "import importlib.metadata as m; print(m.version('torch'))")"
  fbgemm=fbgemm-gpu-cpu
  [ -n "$kept" ] && fbgemm=fbgemm-gpu
  if [ "${torch_version%.*}" = "2.13" ]; then
    pins() { grep -E "^($(echo "$*" | tr ' ' '|'))==" "$sharded"; }
    if ! { "$venv/bin/python" -m pip install --quiet --no-deps $(pins torchrec "$fbgemm") \
           && "$venv/bin/python" -m pip install --quiet -c "$constraints" $(pins tensordict torchmetrics pyre-extensions); }; then
      echo "note: the sharded user table's engine (torchrec, $fbgemm) did not install; --user-table auto stays dense"
    fi
  else
    echo "note: torch $torch_version: scripts/constraints-sharded.txt pins torchrec/FBGEMM for torch 2.13 only;" \
         "--user-table auto stays dense"
  fi
  touch "$stamp"
fi
