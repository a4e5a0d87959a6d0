#!/usr/bin/env bash
# Command (1): set up, prepare the embedded MovieLens-100K, train PeaPOD on 2 DeepSpeed ranks (ZeRO-2),
# evaluate on the test split against the popularity and transition baselines.
# Override with PEAPOD_NPROC (ranks; default every GPU, or 2 on CPU), PEAPOD_STEPS, PEAPOD_ARCH,
# PEAPOD_DATA, PEAPOD_RUN; any further flag goes to the trainer.
# Evaluation decodes with --constrained-decoding: a random-init model given 2,000 steps still spells many
# answers that are not candidates (73.8 % of its top-N answers unconstrained, issue 15), each a miss.
# --lr 3e-3 was tried for this budget and lowered top-N HR@10 to .3552 (test, 943 users; issue 15).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup_venv.sh
source "${PEAPOD_VENV:-$root/.venv}/bin/activate"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" TOKENIZERS_PARALLELISM=false

data="${PEAPOD_DATA:-$root/data/ml-100k}"
run="${PEAPOD_RUN:-$root/runs/ml-100k-$(date +%Y%m%d-%H%M%S)}"
if [ ! -f "$data/manifest.json" ]; then
  peapod-scale prepare --source movielens --output "$data"
fi
gpus=$(python -c "import torch; print(torch.cuda.device_count())")
nproc="${PEAPOD_NPROC:-$([ "$gpus" -gt 0 ] && echo "$gpus" || echo 2)}"  # every GPU, or 2 CPU ranks
deepspeed --num_gpus "$nproc" peapod_scale/train.py \
  --data "$data" --output "$run" --deepspeed ds_configs/z2.json \
  --arch "${PEAPOD_ARCH:-tiny}" --max-steps "${PEAPOD_STEPS:-2000}" --dropout 0 \
  --constrained-decoding "$@"
echo "run folder: $run   (tensorboard --logdir $run/tensorboard)"
