#!/usr/bin/env bash
# A single-node Slurm cluster on localhost, with accounting, for tests and development.
#
#   hpc/slurm_local.sh up [--install]   start munge, MariaDB, slurmdbd, slurmctld, slurmd (idempotent)
#   hpc/slurm_local.sh status           daemons, node state, accounting
#   hpc/slurm_local.sh down [--purge]   stop them all (--purge: also forget jobs and accounting)
#
# Works without systemd (CI containers, sandboxes), as root. `--install` apt-installs the
# Debian packages first when missing. Accounting (slurmdbd + MariaDB) is not optional: without
# it `sacct` fails and submitit cannot see that a job was cancelled (result() blocks forever).
# Settings that matter, and why:
#   ProctrackType=proctrack/linuxproc, TaskPlugin=task/none  no cgroups without systemd
#   AuthInfo=cred_expire=10     a requeued job otherwise waits 120 s before it may run again
#   CPUs/RealMemory only        (no sockets/threads) so that each CPU is a schedulable core
#   JobRequeue=1                preempted/timed-out submitit jobs requeue themselves
#   SchedulerParameters=bf_interval=1,sched_interval=2
#                               a requeued job becomes eligible again without an event that
#                               wakes the scheduler: with the defaults (30/60 s) it sat PENDING
#                               ~40 s after its credential delay had passed
set -euo pipefail

CLUSTER=${S2L_SLURM_CLUSTER:-s2l}
NODE=localhost
STATE=${S2L_SLURM_STATE:-/var/lib/s2l-slurm}  # spool, state, logs, pid files
ETC=/etc/slurm
DB_PASS=s2l-local-only
PKGS="slurm-wlm slurmdbd munge mariadb-server"

log() { echo "[slurm_local] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "must run as root (it starts system daemons)"; }

installed() { command -v slurmctld >/dev/null && command -v slurmdbd >/dev/null &&
              command -v munged >/dev/null && command -v mariadbd >/dev/null; }

install_pkgs() {
    installed && return 0
    log "installing $PKGS"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq $PKGS >/dev/null
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() {  # wait_for SECONDS NAME COMMAND...: until COMMAND succeeds; fail fast if NAME died
    local n=$(( $1 * 5 )) what=$2 pidfile; shift 2
    pidfile="$STATE/run/$what.pid"
    for _ in $(seq "$n"); do
        "$@" >/dev/null 2>&1 && return 0
        if [ -f "$pidfile" ] && ! alive "$pidfile"; then
            tail -5 "$STATE/log/$what.log" >&2 || true
            die "$what died (log: $STATE/log/$what.log)"
        fi
        sleep 0.2
    done
    die "timed out waiting for $what (logs in $STATE/log)"
}

start_munge() {
    mkdir -p /run/munge /var/log/munge /var/lib/munge /etc/munge
    [ -s /etc/munge/munge.key ] || mungekey --create --keyfile /etc/munge/munge.key
    chown -R munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge
    chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key
    if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        runuser -u munge -- /usr/sbin/munged --force
        wait_for 10 munged sh -c 'munge -n | unmunge'
    fi
}

start_mariadb() {
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    if [ ! -d /var/lib/mysql/mysql ]; then
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql >"$STATE/log/mariadb-install.log" 2>&1
    fi
    if ! mariadb-admin ping >/dev/null 2>&1; then
        setsid nohup mariadbd --user=mysql --datadir=/var/lib/mysql --bind-address=127.0.0.1 \
            --socket=/run/mysqld/mysqld.sock --pid-file=/run/mysqld/mariadb.pid \
            --innodb-buffer-pool-size=64M >"$STATE/log/mariadb.log" 2>&1 </dev/null &
        wait_for 60 mariadb mariadb-admin ping
    fi
    mariadb -u root <<SQL
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
SQL
}

write_configs() {
    mkdir -p "$ETC" "$STATE"/{ctld,spool,log,run}
    local cpus mem
    cpus=$(slurmd -C | sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' | head -1)
    mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -1)
    mem=$(( mem * 95 / 100 ))  # leave the daemons some room
    cat >"$ETC/slurm.conf.new" <<EOF
# written by s2l hpc/slurm_local.sh
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
JobRequeue=1
ReturnToService=2
KillWait=5
MinJobAge=60
InactiveLimit=0
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    cat >"$ETC/slurmdbd.conf.new" <<EOF
# written by s2l hpc/slurm_local.sh
AuthType=auth/munge
DbdAddr=127.0.0.1
DbdHost=localhost
SlurmUser=root
LogFile=$STATE/log/slurmdbd.log
PidFile=$STATE/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
    # Replace only on change, so a re-run of `up` against running daemons changes nothing;
    # a changed slurm.conf is applied to running daemons by `scontrol reconfigure` (start_slurm).
    CHANGED=""
    for f in slurm.conf slurmdbd.conf; do
        if cmp -s "$ETC/$f.new" "$ETC/$f"; then rm "$ETC/$f.new"; else mv "$ETC/$f.new" "$ETC/$f"; CHANGED="$CHANGED $f"; fi
    done
    chmod 600 "$ETC/slurmdbd.conf"
}

start_slurm() {
    alive "$STATE/run/slurmdbd.pid" || slurmdbd
    wait_for 60 slurmdbd sacctmgr -n list cluster
    sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER" ||
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    local was_up=""
    alive "$STATE/run/slurmctld.pid" && was_up=1 || slurmctld
    wait_for 60 slurmctld scontrol ping
    if [ -n "$was_up" ] && [[ "$CHANGED" == *slurm.conf* ]]; then
        log "slurm.conf changed: scontrol reconfigure"
        scontrol reconfigure
    fi
    alive "$STATE/run/slurmd.pid" || slurmd -N "$NODE"
    # A node left DOWN/DRAIN by an earlier unclean stop comes back with RESUME.
    local state
    for _ in $(seq 300); do
        state=$(sinfo -h -n "$NODE" -o %t 2>/dev/null || true)
        case "$state" in
            idle|mix|alloc) break ;;
            down*|drain*|fail*) scontrol update nodename="$NODE" state=resume 2>/dev/null || true ;;
        esac
        sleep 0.2
    done
    case "$state" in idle|mix|alloc) ;; *) die "node $NODE is '$state', not idle" ;; esac
    wait_for 30 "sacct" sacct -n -X -S now
}

up() {
    need_root
    [ "${1:-}" = "--install" ] && install_pkgs
    installed || die "Slurm packages missing; run: $0 up --install  (apt: $PKGS)"
    local t0=$SECONDS
    mkdir -p "$STATE"/{log,run}
    write_configs
    start_munge
    start_mariadb
    start_slurm
    log "cluster '$CLUSTER' up in $(( SECONDS - t0 )) s: node $NODE $(sinfo -h -o '%c CPUs %m MB')"
}

stop_pid() {  # stop_pid PIDFILE NAME
    if alive "$1"; then
        local pid; pid=$(cat "$1")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$pid" 2>/dev/null || true
        log "stopped $2"
    fi
    rm -f "$1"
}

down() {
    need_root
    if command -v scancel >/dev/null && scontrol ping >/dev/null 2>&1; then
        scancel --user=root 2>/dev/null || true  # so no job keeps running without its daemons
    fi
    stop_pid "$STATE/run/slurmd.pid" slurmd
    stop_pid "$STATE/run/slurmctld.pid" slurmctld
    stop_pid "$STATE/run/slurmdbd.pid" slurmdbd
    if [ "${1:-}" = "--purge" ]; then
        # Job ids restart at 1 without the controller's state, so old accounting rows must go
        # too, or sacct mixes old and new jobs of one id. Through the server (deleting its
        # files would leave MariaDB's dictionary inconsistent): start it if a hard stop (end
        # of a session, a crash) left it down.
        if command -v mariadbd >/dev/null; then
            mkdir -p "$STATE/log"
            start_mariadb
            mariadb -u root -e "DROP DATABASE IF EXISTS slurm_acct_db" ||
                die "could not drop slurm_acct_db"
        fi
        rm -rf "${STATE:?}"/ctld "${STATE:?}"/spool
        log "purged job state and accounting"
    fi
    stop_pid /run/mysqld/mariadb.pid mariadb
    if [ -f /run/munge/munged.pid ]; then stop_pid /run/munge/munged.pid munged; fi
}

status() {
    local rc=0
    for pf in "$STATE"/run/slurmd.pid "$STATE"/run/slurmctld.pid "$STATE"/run/slurmdbd.pid \
              /run/mysqld/mariadb.pid; do
        d=$(basename "$pf" .pid)
        if alive "$pf"; then echo "$d: running (pid $(cat "$pf"))"; else echo "$d: stopped"; rc=1; fi
    done
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then echo "munged: running"; else echo "munged: stopped"; rc=1; fi
    [ $rc = 0 ] && sinfo && sacct -n -X -S now-1hour -o JobID,State | tail -5
    return $rc
}

case "${1:-}" in
    up) shift; up "$@" ;;
    down) shift; down "$@" ;;
    status) status ;;
    *) echo "usage: $0 up [--install] | down [--purge] | status" >&2; exit 2 ;;
esac
