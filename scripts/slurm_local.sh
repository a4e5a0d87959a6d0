#!/usr/bin/env bash
# A real two-node SLURM cluster on this one machine (nodes 127.0.0.1 and 127.0.0.2), for trying
# `sbatch slurm/train.sh` without a cluster and for the tests. Idempotent:
#   bash scripts/slurm_local.sh start [DIR]   # prints the SLURM_CONF to export
#   bash scripts/slurm_local.sh stop  [DIR]
# PEAPOD_SLURM_PORT (default 16817) moves its four ports, so two clusters can coexist.
# Needs root and Debian's slurmctld, slurmd, slurm-client and munge (installed if missing).
#
# Each node advertises what a GPU node of a real cluster has, so that slurm/*.sh run here with their
# #SBATCH lines unchanged: PEAPOD_SLURM_GPUS (default 8) count-only GPUs and PEAPOD_SLURM_CPUS (default
# 32) CPUs, oversubscribed on this machine's cores. The GPUs are GRES entries whose device files are links
# to /dev/null (slurmd drops a GPU without File= and refuses a File= that is not a device): SLURM grants
# and counts them, sets CUDA_VISIBLE_DEVICES and SLURM_GPUS_ON_NODE, but there is no GPU behind them,
# so jobs set DS_ACCELERATOR=cpu to train on CPUs on purpose. Every start begins from an empty state
# (no queued jobs, no node kept drained by an earlier configuration). PEAPOD_SLURM_FIRST_JOB_ID (default
# 1) numbers the jobs, e.g. to keep the job-id-derived rendezvous ports of two clusters apart.
set -euo pipefail
action="${1:?usage: slurm_local.sh start|stop [DIR]}"
dir="$(mkdir -p "${2:-/tmp/peapod-slurm}" && cd "${2:-/tmp/peapod-slurm}" && pwd)"
conf="$dir/slurm.conf"
port="${PEAPOD_SLURM_PORT:-16817}"  # slurmctld; slurmd and the two nodes use the next ports

stop() {
  if [ -f "$conf" ]; then
    SLURM_CONF="$conf" scancel --full --quiet --user root 2>/dev/null || true
    SLURM_CONF="$conf" scontrol shutdown >/dev/null 2>&1 || true
  fi
  for pidfile in "$dir"/slurmd-*.pid "$dir"/slurmctld.pid "$dir"/munged.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile" 2>/dev/null || true)
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
    rm -f "$pidfile"
  done
  sleep 0.5
}

start() {
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
  fi
  stop
  rm -rf "$dir/state" "$dir/dev" "$dir/log/jobcomp.txt"  # job ids start again: no old records under them
  mkdir -p "$dir/state" "$dir/spool" "$dir/munge" "$dir/log" "$dir/dev"
  chmod 755 "$dir" "$dir/munge"
  [ -f "$dir/munge/munge.key" ] || mungekey --create --keyfile="$dir/munge/munge.key"
  chmod 600 "$dir/munge/munge.key"
  munged --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket.2" --pid-file="$dir/munged.pid" \
    --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munge.seed"
  local cpus gpus gres host
  cpus="${PEAPOD_SLURM_CPUS:-32}"
  gpus="${PEAPOD_SLURM_GPUS:-8}"
  host=$(hostname -s)
  gres=""
  if [ "$gpus" -gt 0 ]; then gres="Gres=gpu:$gpus"; fi
  echo "AutoDetect=off" > "$dir/gres.conf"
  for ((i = 0; i < gpus; i++)); do
    ln -s /dev/null "$dir/dev/gpu$i"
    echo "Name=gpu File=$dir/dev/gpu$i" >> "$dir/gres.conf"
  done
  cat > "$conf" <<CONF
ClusterName=peapod-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket.2,cred_expire=10
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
MinJobAge=5
SchedulerParameters=sched_interval=2,bf_interval=2
FirstJobId=${PEAPOD_SLURM_FIRST_JOB_ID:-1}
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName=127.0.0.1 NodeAddr=127.0.0.1 NodeHostname=$host Port=$((port + 2)) CPUs=$cpus $gres State=UNKNOWN
NodeName=127.0.0.2 NodeAddr=127.0.0.2 NodeHostname=$host Port=$((port + 3)) CPUs=$cpus $gres State=UNKNOWN
PartitionName=local Nodes=127.0.0.1,127.0.0.2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
  (cd / && slurmctld -i -f "$conf" </dev/null)
  for node in 127.0.0.1 127.0.0.2; do
    (cd / && mkdir -p "$dir/spool/$node" && slurmd -f "$conf" -N "$node" </dev/null)
  done
  for _ in $(seq 1 50); do
    if [ "$(SLURM_CONF="$conf" sinfo -h -o '%T' 2>/dev/null | grep -c idle)" -ge 1 ] \
       && [ "$(SLURM_CONF="$conf" sinfo -h -N -o '%N %T' 2>/dev/null | grep -c idle)" -eq 2 ]; then
      echo "export SLURM_CONF=$conf"
      return 0
    fi
    sleep 0.2
  done
  echo "the local SLURM cluster did not come up; logs in $dir/log" >&2
  SLURM_CONF="$conf" sinfo -N >&2 || true
  return 1
}

case "$action" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: slurm_local.sh start|stop [DIR]" >&2; exit 2 ;;
esac
