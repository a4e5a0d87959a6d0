#!/usr/bin/env bash
# One rank of a slurm/*.sh job (started by torchrun or directly by srun): log where it runs, then exec
# the command, so that signals from torchrun or SLURM reach the command itself. The emulated nodes of
# scripts/slurm_local.sh share one hostname: SLURM_NODEID / SLURMD_NODENAME tell them apart.
echo "peapod-scale slurm: rank ${RANK:-${SLURM_PROCID:-0}}/${WORLD_SIZE:-${SLURM_NTASKS:-1}}" \
     "(local ${LOCAL_RANK:-${SLURM_LOCALID:-0}}) on node ${SLURM_NODEID:-?} (${SLURMD_NODENAME:-?}, host $(hostname -s))"
exec "$@"
