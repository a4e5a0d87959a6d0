#!/usr/bin/env bash
# Distributed evaluation of a trained run (its model/ folder) over the allocation's ranks: users are
# sharded over the ranks and the metrics gathered, the same numbers as one `peapod-scale evaluate`.
#
#   RUN=runs/peapod-train-1234 DATA=data/ml-100k sbatch slurm/evaluate.sh --split test --constrained-decoding
#
# Arguments after the script go to `peapod-scale evaluate` (see its --help); the metrics JSON goes to
# RUN/metrics_<split>.json unless --output says otherwise. Environment: RUN (required), DATA (default
# data/ml-100k) and those of slurm/common.sh (LAUNCHER, NPROC_PER_NODE, DS_ACCELERATOR, ...).
#SBATCH --job-name=peapod-evaluate
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=04:00:00
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
#SBATCH --error=%x-%j.err
set -uo pipefail

common="${PEAPOD_ROOT:-${SLURM_SUBMIT_DIR:-$(pwd)}}/slurm/common.sh"
# shellcheck source=slurm/common.sh
source "$common" 2>/dev/null || { echo "peapod-scale slurm: error: $common not found: sbatch from the repository or set PEAPOD_ROOT" | tee /dev/stderr; exit 2; }
peapod_environment
[ -n "${RUN:-}" ] || die 2 "set RUN to the run folder to evaluate (RUN=runs/NAME sbatch slurm/evaluate.sh)"
[ -d "$RUN" ] || die 2 "RUN=$RUN: no such run folder"

peapod_launch_command python -m peapod_scale.cli evaluate --run-dir "$RUN" --data "${DATA:-data/ml-100k}" "$@"
status=0
"${launch[@]}" || status=$?
[ "$status" -eq 0 ] || die "$status" "evaluation failed (srun exit $status; the ranks' errors are above)"
say "done: metrics of $RUN written"
