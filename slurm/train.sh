#!/usr/bin/env bash
# PeaPOD training on a GPU cluster: one rank per GPU on every node, checkpointed and requeued before the
# time limit or on preemption, resumed by the requeued job from its newest checkpoint.
#
#   sbatch slurm/train.sh --max-steps 20000                               # the defaults below
#   DATA=data/beauty ARCH=t5-3b DS_CONFIG=ds_configs/z3.json \
#     sbatch --nodes=4 --gpus-per-node=8 --time=2-00:00:00 slurm/train.sh --max-steps 20000
#
# Arguments after the script go to peapod_scale/train.py (`peapod-scale train --help`). Every #SBATCH
# line can be overridden on the sbatch command line. Environment: DATA (dataset folder, default
# data/ml-100k), RUN (run folder, default runs/JOBNAME-JOBID: the same for every restart of the job),
# ARCH (default tiny), DS_CONFIG (default ds_configs/z2.json), and those of slurm/common.sh: LAUNCHER
# (torchrun | srun), NPROC_PER_NODE, RDZV_PORT, DS_ACCELERATOR, SHUTDOWN_TIMEOUT, PEAPOD_ROOT, PEAPOD_VENV.
#
# How the time limit and preemption are handled. SLURM signals the BATCH SHELL only (`B:USR1`, 600 s
# before the time limit; `scancel --signal=USR1 --batch JOBID` does the same by hand; a preempting
# scheduler sends SIGTERM). The shell runs srun in the background and `wait`s, since bash runs a trap
# only between commands, and the trap forwards SIGUSR1 to every process of the training step
# (`scancel --signal=USR1 JOBID`: all steps, not the batch shell). Why this way:
#  - the shell that must requeue the job knows that a signal came, and logs when;
#  - USR1 to the step: SLURM signals every process of a step, the data loader workers too; they
#    inherit the trainer's recording handler for USR1 and are forked with SIGTERM blocked
#    (peapod_scale/training/preemption.py), so a preempting scheduler's TERM does not kill them either;
#  - torchrun forwards SIGUSR1 only when told (--signals-to-handle ...,SIGUSR1; by default USR1 kills
#    it), then waits SHUTDOWN_TIMEOUT (480 s, below the 600 s lead, longer than a checkpoint save) for
#    its ranks before it kills them. With LAUNCHER=srun the ranks get the signal straight from SLURM.
# The trainer finishes its step, all ranks agree on the stop step, checkpoint, rank 0 writes
# RUN/preempted.json and every rank exits 75; torchrun turns any worker exit into 1, so the script tests
# the file, not the status, then runs `scontrol requeue`. The requeued job (same id and RUN,
# SLURM_RESTART_COUNT=1, 2, ...) runs this script again and resumes from the newest checkpoint
# (`--resume auto`). Any other end fails the job with a last "peapod-scale slurm: error:" line, not requeued.
#SBATCH --job-name=peapod-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@600
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
#SBATCH --error=%x-%j.err
set -uo pipefail

common="${PEAPOD_ROOT:-${SLURM_SUBMIT_DIR:-$(pwd)}}/slurm/common.sh"
# shellcheck source=slurm/common.sh
source "$common" 2>/dev/null || { echo "peapod-scale slurm: error: $common not found: sbatch from the repository or set PEAPOD_ROOT" | tee /dev/stderr; exit 2; }
peapod_environment

args=(--data "${DATA:-data/ml-100k}" --output "${RUN:-runs/$SLURM_JOB_NAME-$SLURM_JOB_ID}"
      --deepspeed "${DS_CONFIG:-ds_configs/z2.json}" --arch "${ARCH:-tiny}" "$@")
# The options are checked here once, before any rank starts, with train.py's own parser; the run folder
# is the one they name (a --output argument wins over RUN, as in train.py).
run_dir=$(python - "${args[@]}" <<'PY'
import sys
from peapod_scale.config.train import build_parser

parser = build_parser()
parser.error = lambda message: sys.exit(f"peapod-scale train: error: {message}")
print(parser.parse_args(sys.argv[1:]).output)
PY
) || die 2 "bad arguments (the line above): the job is not started and not requeued"

peapod_launch_command python -m peapod_scale.train "${args[@]}"
say "run folder $run_dir"
# A report left by an earlier attempt would requeue this one if its ranks died before replacing it.
rm -f "$run_dir/preempted.json"

signalled=""
pending=""
forward() {
  signalled="$1"
  pending=1
  say "got SIG$1 at $(date -Is): asking the ranks to checkpoint and stop"
  scancel --signal=USR1 "$SLURM_JOB_ID" || say "scancel --signal=USR1 $SLURM_JOB_ID failed"
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM

"${launch[@]}" &
srun_pid=$!
status=0
wait "$srun_pid" || status=$?
while [ -n "$pending" ]; do  # wait was cut short by a signal: wait again for srun's own status
  pending=""
  status=0
  wait "$srun_pid" || status=$?
done

if [ -f "$run_dir/preempted.json" ]; then
  stopped=$(python -c 'import json, sys; d = json.load(open(sys.argv[1])); print("step %s (%s, %s)" % (d["step"], d["checkpoint"], d["signal"]))' \
            "$run_dir/preempted.json" 2>/dev/null || echo "an unreadable preempted.json")
  say "preempted at $stopped: requeueing job $SLURM_JOB_ID (restart $(( restart + 1 ))), it resumes from the checkpoint"
  scontrol requeue "$SLURM_JOB_ID" \
    || die 75 "scontrol requeue $SLURM_JOB_ID failed (submitted with --no-requeue?): checkpointed in $run_dir; sbatch the same command to continue"
  exit 0
fi
if [ -n "$signalled" ]; then
  die 1 "got SIG$signalled but the ranks stopped without a checkpoint (srun exit $status, no $run_dir/preempted.json): not requeued"
fi
if [ "$status" -ne 0 ]; then
  die "$status" "training failed (srun exit $status; the ranks' errors are above): not requeued"
fi
say "done: $run_dir (checkpoints/, model/, tensorboard/, metrics_*.json, train.log)"
