#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine, as root, with accounting,
# so the SLURM profile can be tested against a real scheduler (tests/test_slurm.py).
#
# Debian's slurm-wlm, slurmdbd, munge and MariaDB; the daemons are started
# directly because containers have no systemd. Safe to run again: a running
# daemon is left alone. Usage: sudo tests/slurm/start_cluster.sh
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "start_cluster.sh: run as root (it installs packages and starts daemons)" >&2
    exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null \
    || ! command -v mariadbd >/dev/null; then
    # A clean machine may have no package lists yet.
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        slurm-wlm slurmdbd munge mariadb-server >/dev/null
fi

node=$(hostname -s)
cpus=$(nproc)
# Leave 2 GB to the system; slurmd refuses to start if RealMemory exceeds what it sees.
memory=$(($(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 2048))
mkdir -p /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /run/mysqld

cat >/etc/slurm/slurm.conf <<EOF
ClusterName=iclprobe
SlurmctldHost=${node}
SlurmUser=root
SlurmdUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
# Finished jobs stay visible to squeue for a while; sacct keeps them for good.
MinJobAge=300
NodeName=${node} CPUs=${cpus} RealMemory=${memory} State=UNKNOWN
PartitionName=debug Nodes=${node} Default=YES MaxTime=INFINITE State=UP
EOF

cat >/etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
chmod 600 /etc/slurm/slurmdbd.conf

running() { pgrep -x "$1" >/dev/null; }
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local seconds=$1 what=$2
    shift 2
    for _ in $(seq "$seconds"); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 1
    done
    echo "start_cluster.sh: $what did not come up within ${seconds} s" >&2
    exit 1
}

chown munge:munge /run/munge
running munged || runuser -u munge -- /usr/sbin/munged
wait_for 10 munge munge -n

chown mysql:mysql /run/mysqld
# setsid: in a session of its own, as the other daemons put themselves, so that a
# signal to the caller's process group (a CI timeout, Ctrl-C) does not stop MariaDB.
running mariadbd || (setsid mysqld_safe </dev/null >/var/log/slurm/mariadb.log 2>&1 &)
wait_for 30 MariaDB mysqladmin ping
mysql -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"

running slurmdbd || /usr/sbin/slurmdbd
wait_for 30 slurmdbd sacctmgr -n list cluster
running slurmctld || /usr/sbin/slurmctld
wait_for 30 slurmctld scontrol ping
running slurmd || /usr/sbin/slurmd
wait_for 30 "node ${node}" bash -c "sinfo -h -N -o %T | grep -qE '^(idle|mixed|allocated)'"

sacctmgr -i add cluster iclprobe >/dev/null 2>&1 || true
sacctmgr -i add account iclprobe Cluster=iclprobe >/dev/null 2>&1 || true
sacctmgr -i add user root Account=iclprobe >/dev/null 2>&1 || true
sinfo
