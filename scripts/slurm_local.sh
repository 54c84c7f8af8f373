#!/usr/bin/env bash
# A one-machine SLURM cluster (Debian's slurm-wlm: slurmctld + slurmd + munge) for running the real
# launcher scripts here: `bash scripts/slurm_local.sh start` brings it up (installing the packages when
# missing and allowed), `stop` takes it down, `env` prints the SLURM_CONF export to use it. Everything
# lives under $SLURM_LOCAL (default /tmp/photon-slurm); the node is this host with its CPUs, oversubscribed
# so several tasks can share them. Needs root (the daemons run as root, as the package's defaults do).
set -euo pipefail
ROOT=${SLURM_LOCAL:-/tmp/photon-slurm}
CONF=$ROOT/etc/slurm.conf
HOST=$(hostname -s)

install_packages() {
    command -v slurmctld >/dev/null && command -v munged >/dev/null && return 0
    export DEBIAN_FRONTEND=noninteractive
    # a fresh machine may have no (or stale) package lists: refresh them once if the first try fails
    apt-get install -y -q slurm-wlm munge >/dev/null 2>&1 || { apt-get update -q >/dev/null && \
        apt-get install -y -q slurm-wlm munge >/dev/null; }
}

write_config() {
    mkdir -p "$ROOT"/{etc,state,spool,log,run}
    local cpus mem
    cpus=$(nproc)
    mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    cat > "$CONF" <<EOF
ClusterName=photon-local
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
StateSaveLocation=$ROOT/state
SlurmdSpoolDir=$ROOT/spool
SlurmctldPidFile=$ROOT/run/slurmctld.pid
SlurmdPidFile=$ROOT/run/slurmd.pid
SlurmctldLogFile=$ROOT/log/slurmctld.log
SlurmdLogFile=$ROOT/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
KillWait=5
InactiveLimit=0
NodeName=$HOST CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:8
EOF
}

start() {
    install_packages
    write_config
    export SLURM_CONF=$CONF
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown -R munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge 2>/dev/null || true
    if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then  # no munged, or one that lost its socket
        pkill -x munged || true
        sleep 1
        runuser -u munge -- munged --force
    fi
    stop  # daemons of another configuration would not see this one
    slurmctld
    slurmd
    for _ in $(seq 60); do
        if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
            echo "slurm up: $(sinfo -h -o '%P %D %T %C')"
            return 0
        fi
        sleep 1
    done
    echo "slurm did not come up; logs in $ROOT/log" >&2
    tail -n 5 "$ROOT"/log/*.log >&2 || true
    return 1
}

stop() {
    pkill -x slurmd || true
    pkill -x slurmctld || true
    for _ in $(seq 30); do
        pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null || return 0
        sleep 0.5
    done
    pkill -9 -x slurmd || true
    pkill -9 -x slurmctld || true
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
