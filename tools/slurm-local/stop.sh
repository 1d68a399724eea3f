#!/usr/bin/env bash
# Stop the single-node SLURM started by tools/slurm-local/start.sh: cancel its jobs, stop each
# daemon by the PID in its pid file (slurmd, slurmctld, and munged only if start.sh started it),
# and remove the /etc/slurm links start.sh made. Safe to run twice. Same SLURM_LOCAL_DIR as
# start.sh.
set -uo pipefail

STATE=${SLURM_LOCAL_DIR:-${TMPDIR:-/tmp}/transfergrid-slurm}
unset SLURM_CONF

running() { # running NAME PIDFILE: is the process in PIDFILE alive and called NAME?
  local pid
  pid=$(cat "$2" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ]
}
stop_daemon() { # stop_daemon NAME PIDFILE: SIGTERM, wait up to 10 s, then SIGKILL
  local pid
  if running "$1" "$2"; then
    pid=$(cat "$2")
    kill "$pid"
    for _ in $(seq 100); do [ -e "/proc/$pid" ] || break; sleep 0.1; done
    [ -e "/proc/$pid" ] && kill -KILL "$pid"
    echo "stopped $1 ($pid)"
  fi
  rm -f "$2"
}
ours() { [ "$(readlink "/etc/slurm/$1")" = "$STATE/etc/$1" ]; }

# Cancel what still runs in this cluster, so that no job outlives its slurmd.
if ours slurm.conf && running slurmctld "$STATE/run/slurmctld.pid"; then
  jobs=$(squeue -h -t pending,running,configuring,completing -o %A 2>/dev/null)
  if [ -n "$jobs" ]; then
    # shellcheck disable=SC2086  # one job id per word
    scancel $jobs
    for _ in $(seq 40); do
      [ -z "$(squeue -h -t running,configuring,completing -o %A 2>/dev/null)" ] && break
      sleep 0.25
    done
    echo "cancelled jobs:" $jobs
  fi
fi
stop_daemon slurmd "$STATE/run/slurmd.pid"
stop_daemon slurmctld "$STATE/run/slurmctld.pid"
stop_daemon munged "$STATE/run/munged.pid"
rm -f "$STATE/run/config.sha256"
for name in slurm.conf gres.conf; do
  ours "$name" && rm -f "/etc/slurm/$name"
done
exit 0
