#!/usr/bin/env bash
# Stop the one-node cluster that start_cluster.sh started: slurmd, slurmctld,
# slurmdbd, MariaDB and munge, in that order, each by the PID in its PID file.
# A daemon that is not running is skipped; one that ignores SIGTERM for 30 s
# gets SIGKILL. Exits 1 if a daemon is still alive at the end.
# Usage: sudo tests/slurm/stop_cluster.sh
set -uo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "stop_cluster.sh: run as root (the daemons run as root, mysql and munge)" >&2
    exit 1
fi

alive() { kill -0 "$1" 2>/dev/null; }
wait_gone() {  # wait_gone PID SECONDS
    for _ in $(seq $(($2 * 10))); do
        alive "$1" || return 0
        sleep 0.1
    done
    ! alive "$1"
}

status=0
stop() {  # stop NAME PIDFILE
    local name=$1 pidfile=$2 pid ppid parent=""
    [[ -s $pidfile ]] || { echo "$name: not running (no $pidfile)"; return; }
    pid=$(<"$pidfile")
    # A PID file left behind by a crash may name an unrelated process by now.
    if ! alive "$pid" || [[ $(cat "/proc/$pid/comm" 2>/dev/null) != "$name" ]]; then
        echo "$name: not running (stale $pidfile)"
        rm -f "$pidfile"
        return
    fi
    # mariadbd runs under mysqld_safe, which exits once mariadbd shuts down cleanly.
    ppid=$(awk '{print $4}' "/proc/$pid/stat")
    [[ $(cat "/proc/$ppid/comm" 2>/dev/null) == mysqld_safe ]] && parent=$ppid
    kill -TERM "$pid"
    if ! wait_gone "$pid" 30; then
        echo "$name: PID $pid ignored SIGTERM for 30 s; sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null
        wait_gone "$pid" 5 || { echo "$name: PID $pid is still alive" >&2; status=1; }
    fi
    if [[ -n $parent ]] && ! wait_gone "$parent" 10; then
        kill -TERM "$parent" 2>/dev/null
        wait_gone "$parent" 5 || { echo "mysqld_safe: PID $parent is still alive" >&2; status=1; }
    fi
    echo "$name: stopped PID $pid"
}

stop slurmd /run/slurmd.pid
stop slurmctld /run/slurmctld.pid
stop slurmdbd /run/slurmdbd.pid
stop mariadbd /run/mysqld/mysqld.pid
stop munged /run/munge/munged.pid
exit $status
