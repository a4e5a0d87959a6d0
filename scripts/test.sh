#!/usr/bin/env bash
# Command (2): set up and run the test suite (real 2-rank DeepSpeed jobs included). Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup_venv.sh
source "${PEAPOD_VENV:-$root/.venv}/bin/activate"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" TOKENIZERS_PARALLELISM=false
python -m pytest -q tests "$@"
