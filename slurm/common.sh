# Sourced by slurm/train.sh, evaluate.sh and prepare.sh inside a job: the Python environment, and for the
# distributed ones the srun line that starts one rank per GPU on every node. Not a job script itself.
#
# Environment it reads (all optional):
#   PEAPOD_ROOT     the repository (default: the folder sbatch was run from)
#   PEAPOD_VENV     virtual environment to activate (default: PEAPOD_ROOT/.venv, when it exists)
#   LAUNCHER        torchrun (default): one srun task per node, each a torchrun of NPROC_PER_NODE ranks
#                   meeting in a c10d rendezvous on the first node; or srun: one srun task per rank, no
#                   torchrun (MASTER_ADDR = first node, MASTER_PORT from the job id, ranks from SLURM_PROCID)
#   NPROC_PER_NODE  ranks per node (default: the GPUs torch sees on the node, 1 on CPUs)
#   RDZV_PORT       rendezvous / MASTER_PORT (default 15000 + job id % 20000, as peapod_scale.distributed.ranks)
#   DS_ACCELERATOR  cpu: train on CPUs on purpose, even where SLURM granted GPUs (the local test cluster)
#   SHUTDOWN_TIMEOUT  seconds torchrun lets its ranks finish after forwarding a signal (default 480)

say() { echo "peapod-scale slurm: $*"; }
die() {  # die STATUS MESSAGE: the job's last log line, in both the output and the error file
  local status="$1"
  shift
  echo "peapod-scale slurm: error: $*"
  echo "peapod-scale slurm: error: $*" >&2
  exit "$status"
}

# The repository as working folder and its virtual environment active.
peapod_python() {
  root="${PEAPOD_ROOT:-${SLURM_SUBMIT_DIR:-$(pwd)}}"
  cd "$root" || die 2 "PEAPOD_ROOT=$root: no such folder"
  local venv="${PEAPOD_VENV:-$root/.venv}"
  if [ -f "$venv/bin/activate" ]; then
    # shellcheck disable=SC1091
    source "$venv/bin/activate"
  fi
  python -c "import peapod_scale" 2>/dev/null \
    || die 2 "python cannot import peapod_scale from $root (set PEAPOD_ROOT to the repository, PEAPOD_VENV to its venv)"
}

# Everything a distributed job needs before peapod_launch_command: threads, NCCL, ranks per node, rendezvous.
peapod_environment() {
  peapod_python

  # As torchtitan's SLURM script: NCCL warnings only, Python tracebacks on a crash; a rank stuck in a
  # collective whose peer died raises instead of hanging. Cluster-specific ones (uncomment on yours):
  #   export NCCL_SOCKET_IFNAME=ib0   NCCL_IB_DISABLE=1   FI_PROVIDER=efa
  export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
  export PYTHONFAULTHANDLER="${PYTHONFAULTHANDLER:-1}"
  export TORCH_NCCL_ASYNC_ERROR_HANDLING="${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}"
  export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"  # loader workers fork after tokenizing

  launcher="${LAUNCHER:-torchrun}"
  case "$launcher" in torchrun|srun) ;; *) die 2 "LAUNCHER=$launcher: use torchrun or srun" ;; esac

  # Ranks per node: the GPUs this node's processes can see. SLURM_GPUS_ON_NODE is what SLURM granted;
  # torch seeing none of them means a CPU-only torch or devices confined away: refuse rather than train
  # one slow CPU rank per node without saying so.
  local granted="${SLURM_GPUS_ON_NODE:-0}" visible=0
  if [ "${DS_ACCELERATOR:-}" != cpu ]; then
    visible=$(python -c "import torch; print(torch.cuda.device_count())") || die 1 "python could not import torch"
  fi
  if [ "$visible" -gt 0 ]; then
    nproc="${NPROC_PER_NODE:-$visible}"
  elif [ "$granted" -gt 0 ] && [ "${DS_ACCELERATOR:-}" != cpu ]; then
    die 1 "SLURM granted $granted GPU(s) per node (CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-}) but torch sees none: install a CUDA build of torch, or set DS_ACCELERATOR=cpu to train on CPUs on purpose"
  else
    nproc="${NPROC_PER_NODE:-1}"
    export DS_ACCELERATOR=cpu
  fi

  # CPUs: since Slurm 22.05 srun no longer inherits --cpus-per-task from sbatch; pass it on explicitly.
  cpus_per_node="${SLURM_CPUS_PER_TASK:-$(nproc)}"
  if [ -z "${OMP_NUM_THREADS:-}" ]; then
    export OMP_NUM_THREADS=$(( cpus_per_node / nproc > 0 ? cpus_per_node / nproc : 1 ))
  fi

  head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
  port="${RDZV_PORT:-$(( 15000 + SLURM_JOB_ID % 20000 ))}"  # = peapod_scale.distributed.ranks.job_port
  restart="${SLURM_RESTART_COUNT:-0}"
}

# peapod_launch_command CMD...: sets the array `launch` to the srun line running CMD on every rank.
# slurm/rank.sh logs each rank's node (SLURM_NODEID / SLURMD_NODENAME: the emulated nodes of the
# local cluster share one hostname) before it execs CMD, so a signal reaches CMD itself.
peapod_launch_command() {
  local rank_sh="$root/slurm/rank.sh"
  if [ "$launcher" = torchrun ]; then
    launch=(srun --kill-on-bad-exit=1 --export=ALL --ntasks-per-node=1 --cpus-per-task="$cpus_per_node"
            python -m torch.distributed.run
              --nnodes "$SLURM_NNODES" --nproc-per-node "$nproc" --max-restarts 0
              --rdzv-backend c10d --rdzv-endpoint "$head_node:$port" --rdzv-id "$SLURM_JOB_ID"
              --signals-to-handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1
              --shutdown-timeout "${SHUTDOWN_TIMEOUT:-480}"
              --no-python bash "$rank_sh" "$@")
  else
    export MASTER_ADDR="$head_node" MASTER_PORT="$port"
    launch=(srun --kill-on-bad-exit=1 --export=ALL --ntasks=$(( SLURM_NNODES * nproc ))
            --ntasks-per-node="$nproc" --cpus-per-task=$(( cpus_per_node / nproc > 0 ? cpus_per_node / nproc : 1 ))
            bash "$rank_sh" "$@")
  fi
  say "job $SLURM_JOB_ID (restart $restart) at $(date -Is): $SLURM_NNODES node(s) x $nproc rank(s) [$SLURM_JOB_NODELIST]," \
      "launcher $launcher, rendezvous $head_node:$port, granted ${SLURM_GPUS_ON_NODE:-0} GPU(s) and" \
      "$cpus_per_node CPU(s) per node, $OMP_NUM_THREADS thread(s) per rank, accelerator ${DS_ACCELERATOR:-cuda}"
}
