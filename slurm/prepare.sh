#!/usr/bin/env bash
# Build a Parquet dataset on a CPU node: `peapod-scale prepare` as one task (it is one process).
#
#   sbatch slurm/prepare.sh --source p5 --input ../shared/data/p5/beauty --output data/beauty
#
# Arguments go to `peapod-scale prepare` (see its --help); the folder appears whole or not at all.
# Environment: PEAPOD_ROOT (the repository, default the submit folder), PEAPOD_VENV.
#SBATCH --job-name=peapod-prepare
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=4
#SBATCH --time=04:00:00
#SBATCH --output=%x-%j.out
#SBATCH --error=%x-%j.err
set -uo pipefail

common="${PEAPOD_ROOT:-${SLURM_SUBMIT_DIR:-$(pwd)}}/slurm/common.sh"
# shellcheck source=slurm/common.sh
source "$common" 2>/dev/null || { echo "peapod-scale slurm: error: $common not found: sbatch from the repository or set PEAPOD_ROOT" | tee /dev/stderr; exit 2; }
peapod_python
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"
say "job $SLURM_JOB_ID on node ${SLURMD_NODENAME:-?}: peapod-scale prepare $*"
status=0
python -m peapod_scale.cli prepare "$@" || status=$?
[ "$status" -eq 0 ] || die "$status" "prepare failed (exit $status; its reason is above)"
