#!/usr/bin/env bash
# Start a real single-node SLURM (munge + slurmctld + slurmd) on this machine, to try
# profiles/slurm without a cluster. Debian 12 (SLURM 22.05), run as root, no systemd needed.
#
#   bash tools/slurm-local/start.sh            # install what is missing, start, wait until ready
#   timeout 3600 snakemake --workflow-profile profiles/slurm --slurm-no-account
#   bash tools/slurm-local/stop.sh             # stops what start.sh started, by PID
#
# Idempotent: a second run starts only what is not running, and restarts slurmctld/slurmd when
# the generated config changed. Light mode: no accounting database (slurmdbd), so Snakemake's
# SLURM plugin must query job status with squeue (profiles/slurm does).
#
# The configs are generated in the state directory and linked from /etc/slurm/, where every SLURM
# command looks by default: inside a job, Snakemake's jobstep plugin runs srun with all SLURM_*
# variables removed, SLURM_CONF included, so a config anywhere else is not found there. An
# /etc/slurm/slurm.conf that start.sh did not link (a real SLURM installation) is never replaced.
#
# Settings (environment):
#   SLURM_LOCAL_DIR          state directory: configs, spool, logs, pid files
#                            (default ${TMPDIR:-/tmp}/transfergrid-slurm)
#   SLURM_LOCAL_GPUS         number of fake GPUs (default 2, at most 4; 0 = none)
#   SLURM_LOCAL_PARTITION    partition name (default debug)
#   SLURM_LOCAL_CTLD_PORT    slurmctld port (default 6817)
#   SLURM_LOCAL_SLURMD_PORT  slurmd port (default 6818)
#   SLURM_LOCAL_MIN_JOB_AGE  seconds a finished job stays listed by squeue (default 600)
#   SLURM_LOCAL_WAIT         seconds to wait for the node to become ready (default 60)
#   SLURM_LOCAL_NO_INSTALL=1 never call apt-get; fail if a package is missing
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE=${SLURM_LOCAL_DIR:-${TMPDIR:-/tmp}/transfergrid-slurm}
GPUS=${SLURM_LOCAL_GPUS:-2}
PARTITION=${SLURM_LOCAL_PARTITION:-debug}
CTLD_PORT=${SLURM_LOCAL_CTLD_PORT:-6817}
SLURMD_PORT=${SLURM_LOCAL_SLURMD_PORT:-6818}
MIN_JOB_AGE=${SLURM_LOCAL_MIN_JOB_AGE:-600}
WAIT=${SLURM_LOCAL_WAIT:-60}
CLUSTER=transfergrid
PACKAGES=(munge slurm-client slurmctld slurmd)
unset SLURM_CONF # this SLURM is found at the default path

# ------------------------------------------------------------------ helpers
log() { printf '[slurm-local %3ss] %s\n' "$SECONDS" "$*"; }
die() {
  printf '[slurm-local] error: %s\n' "$*" >&2
  exit 1
}
running() { # running NAME PIDFILE: is the process in PIDFILE alive and called NAME?
  local pid
  pid=$(cat "$2" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ]
}
stop_daemon() { # stop_daemon NAME PIDFILE
  local pid
  if running "$1" "$2"; then
    pid=$(cat "$2")
    kill "$pid"
    for _ in $(seq 100); do [ -e "/proc/$pid" ] || break; sleep 0.1; done
  fi
  rm -f "$2"
}
wait_for() { # wait_for SECONDS WHAT COMMAND...: retry COMMAND 4 times a second
  local seconds=$1 what=$2
  shift 2
  for _ in $(seq $((seconds * 4))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
  die "timed out after ${seconds}s waiting for $what"
}
port_in_use() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

[ "$(id -u)" = 0 ] || die "run as root (the daemons and apt-get need it)"

# ------------------------------------------------------------------ packages
missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "${SLURM_LOCAL_NO_INSTALL:-0}" = 1 ] && die "missing Debian packages: ${missing[*]}"
  log "installing ${missing[*]} (log: /tmp/slurm-local-apt.log)"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; } \
    >/tmp/slurm-local-apt.log 2>&1 || {
    tail -n 30 /tmp/slurm-local-apt.log >&2
    die "apt-get failed"
  }
fi

# ------------------------------------------------------------------ config
mkdir -p "$STATE"/{etc,spool/slurmctld,spool/slurmd,log,run}
touch "$STATE/.slurm-local" # marks a state directory of this script (see the /etc/slurm links)
HOST=$(hostname -s)
# The node's CPUs, sockets, cores and memory as slurmd itself sees them, so that slurmd never
# finds the node smaller than configured (which would drain it).
hardware=$(slurmd -C | head -1)
topology=$(grep -o 'CPUs=[0-9]* .*ThreadsPerCore=[0-9]*' <<<"$hardware")
mem_mb=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hardware")
mem_mb=$((mem_mb > 2048 ? mem_mb - 1024 : mem_mb)) # leave 1 GiB to the system

# Fake GPUs: one harmless character device per GPU. SLURM only needs a device file to hand out,
# and sets CUDA_VISIBLE_DEVICES in each job to the index of the one it granted.
devices=(/dev/null /dev/zero /dev/full /dev/urandom)
[ "$GPUS" -le ${#devices[@]} ] || die "at most ${#devices[@]} fake GPUs"
gres=""
[ "$GPUS" -gt 0 ] && gres="Gres=gpu:fake:$GPUS"
{
  echo "# Generated by tools/slurm-local/start.sh: $GPUS fake GPU(s), no hardware detection."
  echo "AutoDetect=off"
  for ((i = 0; i < GPUS; i++)); do echo "NodeName=$HOST Name=gpu Type=fake File=${devices[$i]}"; done
} >"$STATE/etc/gres.conf.new"
sed -e "s|@CLUSTER@|$CLUSTER|g" -e "s|@HOST@|$HOST|g" -e "s|@STATE@|$STATE|g" \
  -e "s|@CTLD_PORT@|$CTLD_PORT|g" -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" \
  -e "s|@MIN_JOB_AGE@|$MIN_JOB_AGE|g" -e "s|@GRES@|$gres|g" -e "s|@TOPOLOGY@|$topology|g" \
  -e "s|@MEM_MB@|$mem_mb|g" -e "s|@PARTITION@|$PARTITION|g" \
  "$HERE/slurm.conf.in" >"$STATE/etc/slurm.conf.new"
# Replace a config only when it changed, so that its hash tells whether to restart the daemons.
for name in slurm.conf gres.conf; do
  file=$STATE/etc/$name
  if cmp -s "$file.new" "$file"; then rm "$file.new"; else mv "$file.new" "$file"; fi
done

# Link both from /etc/slurm (gres.conf is read from slurm.conf's directory). A link into another
# state directory of this script is replaced unless that SLURM still runs; anything else stays.
mkdir -p /etc/slurm
for name in slurm.conf gres.conf; do
  link=/etc/slurm/$name
  target=$(readlink "$link" || true)
  [ "$target" = "$STATE/etc/$name" ] && continue
  if [ -L "$link" ] && [ -f "${target%/etc/$name}/.slurm-local" ]; then
    running slurmctld "${target%/etc/$name}/run/slurmctld.pid" &&
      die "a local SLURM with state ${target%/etc/$name} is running; stop it first (SLURM_LOCAL_DIR=... stop.sh)"
  elif [ -e "$link" ]; then
    die "$link was not made by this script (a real SLURM installation?); not replacing it"
  fi
  ln -sfn "$STATE/etc/$name" "$link"
done

# ------------------------------------------------------------------ munge
# Authentication between the SLURM daemons and commands. A munged that already runs (a system
# service) is used as it is; one started here is recorded in run/munged.pid so that stop.sh
# stops it, and only it.
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
fi
if ! (munge -n | unmunge) >/dev/null 2>&1; then
  log "starting munged"
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  runuser -u munge -- /usr/sbin/munged
  wait_for 10 munged bash -c 'munge -n | unmunge'
  cp /run/munge/munged.pid "$STATE/run/munged.pid"
fi

# ------------------------------------------------------------------ slurmctld + slurmd
config_hash=$(cat "$STATE/etc/slurm.conf" "$STATE/etc/gres.conf" | sha256sum | cut -d' ' -f1)
if [ "$config_hash" != "$(cat "$STATE/run/config.sha256" 2>/dev/null)" ]; then
  # First start, or the config changed since the daemons started: (re)start both.
  stop_daemon slurmd "$STATE/run/slurmd.pid"
  stop_daemon slurmctld "$STATE/run/slurmctld.pid"
fi
if ! running slurmctld "$STATE/run/slurmctld.pid"; then
  port_in_use "$CTLD_PORT" && die "port $CTLD_PORT is taken (another SLURM?); set SLURM_LOCAL_CTLD_PORT"
  log "starting slurmctld (port $CTLD_PORT)"
  /usr/sbin/slurmctld
fi
wait_for 30 slurmctld scontrol ping
slurmd_started=0
if ! running slurmd "$STATE/run/slurmd.pid"; then
  port_in_use "$SLURMD_PORT" && die "port $SLURMD_PORT is taken (another slurmd?); set SLURM_LOCAL_SLURMD_PORT"
  log "starting slurmd (port $SLURMD_PORT)"
  slurmd_started=$(date +%s)
  /usr/sbin/slurmd
fi
echo "$config_hash" >"$STATE/run/config.sha256"

# ------------------------------------------------------------------ ready?
# slurmctld restores the node's last state from its state files, so "idle" alone may be stale:
# after starting slurmd, wait until the node has registered again.
registered() {
  local since
  since=$(scontrol show node "$HOST" | sed -n 's/.*SlurmdStartTime=\([^ ]*\).*/\1/p')
  [ -n "$since" ] && [ "$since" != None ] && [ "$(date -d "$since" +%s)" -ge $((slurmd_started - 1)) ]
}
wait_for "$WAIT" "slurmd to register" registered
node_state() { sinfo -h -n "$HOST" -o %T 2>/dev/null | head -1; }
for _ in $(seq $((WAIT * 4))); do
  case $(node_state) in
    idle | mixed | allocated) break ;;
    drain* | down*) scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true ;;
  esac
  sleep 0.25
done
case $(node_state) in
  idle | mixed | allocated) ;;
  *)
    scontrol show node "$HOST" >&2 || true
    tail -n 20 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 || true
    die "node $HOST is not ready after ${WAIT}s"
    ;;
esac
log "ready: partition $PARTITION on node $HOST, $GPUS fake GPU(s), state in $STATE"
sinfo -o '%P %a %D %T %c %m %G'
