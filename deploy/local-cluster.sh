#!/usr/bin/env bash
# A one-node SLURM cluster on this machine (controller and compute node on localhost), for trying the
# SLURM launcher, the nightly sbatch script and sweep workers without a real cluster; the slow tests
# use it. Debian/Ubuntu, as root. Idempotent: a second call finds the cluster running and exits 0.
#   sudo deploy/local-cluster.sh          start (installs slurm-wlm and munge where missing)
#   sinfo; squeue                         look at it
#   sudo deploy/local-cluster.sh stop     stop slurmd, slurmctld (munged keeps running)
# Settings that work with Debian's slurm-wlm 22.05 in a container without systemd or cgroups:
# proctrack/linuxproc, task/none, no cgroup.conf; no accounting database (slurmdbd), so `sacct`
# answers nothing and submitit says so in a warning. All CPUs, no GPU; memory is not scheduled.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# written by embedsweep deploy/local-cluster.sh"
NODE=$(hostname -s)

say() { echo "local-cluster: $*"; }
ready() { sinfo -h -n "$NODE" -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated|completing)'; }

if [[ ${1:-start} == stop ]]; then
  for d in slurmd slurmctld; do
    if [[ -f /run/$d.pid ]] && kill "$(cat /run/$d.pid)" 2>/dev/null; then say "stopped $d"; fi
  done
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  ready && { say "already running: node $NODE is $(sinfo -h -n "$NODE" -o '%T')"; exit 0; }
  echo "local-cluster: run as root (it installs packages and starts daemons)" >&2
  exit 1
fi
start=$(date +%s)

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  say "installing slurm-wlm and munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q slurm-wlm munge </dev/null >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q slurm-wlm munge </dev/null >/dev/null; }
fi

# munge: every SLURM message is signed with this key; munged runs as its own user.
# Created under umask 077: never readable by others, not even between its creation and the chmod.
if [[ ! -s /etc/munge/munge.key ]]; then
  (umask 077 && { mungekey --create --force 2>/dev/null || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; })
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  say "starting munged"
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi

cpus=$(nproc)
mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
wanted=$(cat <<CONF
$MARK
ClusterName=embedsweep
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Seconds between SIGTERM and SIGKILL when a job is cancelled or preempted.
KillWait=10
# A requeued job waits for its old credential to expire before it starts again (default 120 s).
AuthInfo=cred_expire=30
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=local Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF
)
if [[ -f $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
  echo "local-cluster: $CONF exists and was not written by this script; refusing to replace it" >&2
  exit 1
fi
if [[ -f $CONF ]] && [[ $(cat "$CONF") == "$wanted" ]]; then
  if ready; then
    say "already running: node $NODE is $(sinfo -h -n "$NODE" -o '%T')"
    exit 0
  fi
else
  printf '%s\n' "$wanted" > "$CONF"
  # Daemons running with an older configuration: restart them below.
  for d in slurmd slurmctld; do
    if [[ -f /run/$d.pid ]] && kill "$(cat /run/$d.pid)" 2>/dev/null; then
      say "restarting $d for the new $CONF"
      for _ in $(seq 50); do kill -0 "$(cat /run/$d.pid 2>/dev/null)" 2>/dev/null || break; sleep 0.2; done
    fi
  done
fi
install -d -m 0755 /var/spool/slurmctld /var/spool/slurmd /var/log/slurm

running() { [[ -f /run/$1.pid ]] && kill -0 "$(cat "/run/$1.pid")" 2>/dev/null; }
running slurmctld || { say "starting slurmctld"; /usr/sbin/slurmctld; }
running slurmd || { say "starting slurmd"; /usr/sbin/slurmd; }

for _ in $(seq 120); do
  ready && break
  # A node that was down (say, the machine restarted) stays down until it is told to resume.
  if sinfo -h -n "$NODE" -o '%T' 2>/dev/null | grep -qE '^(down|drain)'; then
    scontrol update nodename="$NODE" state=resume 2>/dev/null || true
  fi
  sleep 0.5
done
if ! ready; then
  echo "local-cluster: node $NODE did not come up; see /var/log/slurm/slurmctld.log and slurmd.log" >&2
  exit 1
fi
say "node $NODE up ($cpus CPUs, ${mem_mb} MB) in $(( $(date +%s) - start )) s"
