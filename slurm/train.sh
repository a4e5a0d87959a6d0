#!/usr/bin/env bash
# Multi-node PeaPOD training: one srun task per node, each starting torchrun with NPROC_PER_NODE ranks
# that meet through a c10d rendezvous on the first node of the allocation.
#
#   sbatch slurm/train.sh                                      # defaults below
#   DATA=data/beauty ARCH=t5-base DS_CONFIG=ds_configs/z3.json sbatch --nodes 4 slurm/train.sh --max-steps 20000
#
# Extra arguments are passed to peapod_scale/train.py.
#SBATCH --job-name=peapod-scale
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --output=peapod-%j.out
set -euo pipefail

root="${PEAPOD_ROOT:-${SLURM_SUBMIT_DIR:-$(pwd)}}"
cd "$root"
if [ -f "${PEAPOD_VENV:-$root/.venv}/bin/activate" ]; then
  source "${PEAPOD_VENV:-$root/.venv}/bin/activate"
fi

gpus=$(python -c "import torch; print(torch.cuda.device_count())")
nproc="${NPROC_PER_NODE:-$(( gpus > 0 ? gpus : 1 ))}"
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( ${SLURM_CPUS_ON_NODE:-$(nproc)} / nproc > 0 ? ${SLURM_CPUS_ON_NODE:-$(nproc)} / nproc : 1 ))}"

echo "job $SLURM_JOB_ID: $SLURM_NNODES node(s) x $nproc rank(s), rendezvous on $head_node"
srun --kill-on-bad-exit=1 --export=ALL \
  python -m torch.distributed.run \
    --nnodes "$SLURM_NNODES" --nproc_per_node "$nproc" \
    --rdzv_backend c10d --rdzv_endpoint "$head_node:${RDZV_PORT:-29400}" --rdzv_id "$SLURM_JOB_ID" \
    -m peapod_scale.train \
      --data "${DATA:-data/ml-100k}" --output "${RUN:-runs/slurm-$SLURM_JOB_ID}" \
      --deepspeed "${DS_CONFIG:-ds_configs/z2.json}" --arch "${ARCH:-tiny}" "$@"
