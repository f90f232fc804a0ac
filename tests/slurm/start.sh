#!/usr/bin/env bash
# A real single-node SLURM cluster for tests/test_slurm.py, from Debian's packages: munge,
# a private MariaDB, slurmdbd (accounting, which the Snakemake plugin reads through sacct),
# slurmctld and slurmd, all talking over 127.0.0.1. Idempotent: a daemon already running from
# this directory is left alone, so a second call returns at once.
#
#   sudo tests/slurm/start.sh     # then sinfo, sbatch, sacct on this machine reach it
#   sudo tests/slurm/stop.sh      # stops what this script started
#
# Configs, state, logs and the database live in $AXFLOW_SLURM_DIR (default /var/tmp/axflow-slurm);
# slurmd runs configless and serves the config at /run/slurm/conf, where SLURM's commands look
# when /etc/slurm/slurm.conf is absent, so nothing under /etc/slurm is written (a machine that
# has one is left alone). The node advertises what `slurmd -C` finds: this machine's CPUs and
# memory.
# Exit status 77: this machine cannot host it (not root, no apt-get, or a SLURM config of its own).
set -euo pipefail

DIR=${AXFLOW_SLURM_DIR:-/var/tmp/axflow-slurm}
CLUSTER=axflow
PARTITION=axflow
DB_PORT=${AXFLOW_SLURM_DB_PORT:-13306}   # not 3306: a system MariaDB may hold that one
CTLD_PORT=6817 SLURMD_PORT=6818 DBD_PORT=6819
PACKAGES=(munge slurmctld slurmd slurmdbd slurm-client mariadb-server)

skip() { echo "SKIP: $*" >&2; exit 77; }
die() { echo "ERROR: $*" >&2; exit 1; }
running() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
wait_for() {  # wait_for <seconds> <what> <command...>: poll until the command succeeds
    local seconds=$1 what=$2
    shift 2
    for ((i = 0; i < seconds * 4; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.25
    done
    die "$what did not come up within ${seconds}s; see $DIR/log/ and $DIR/db/run/"
}

[[ $(id -u) == 0 ]] || skip "starting SLURM needs root (daemons, munge key, packages); run as root"
[[ ! -e /etc/slurm/slurm.conf ]] \
    || skip "/etc/slurm/slurm.conf exists: this machine belongs to a SLURM cluster of its own"

missing=()
for cmd in munged mariadbd slurmdbd slurmctld slurmd sbatch sacct; do
    command -v "$cmd" >/dev/null || missing+=("$cmd")
done
if ((${#missing[@]})); then
    command -v apt-get >/dev/null || skip "${missing[*]} missing and no apt-get to install ${PACKAGES[*]}"
    echo "installing ${PACKAGES[*]} (missing: ${missing[*]})" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
fi

mkdir -p "$DIR"/{state,spool,log}
export SLURM_CONF=$DIR/slurm.conf

# munge: the system daemon and key (Debian's postinst makes the key; make one if it did not).
if [[ ! -s /etc/munge/munge.key ]]; then
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 600 /etc/munge/munge.key
fi
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    install -d -o munge -g munge -m 755 /run/munge
    runuser -u munge -- munged
    wait_for 10 munged sh -c 'munge -n </dev/null | unmunge'
fi

# MariaDB: a private instance on loopback; its files (data, socket, pid, log) belong to mysql.
DB=$DIR/db
SOCK=$DB/run/mysqld.sock
if [[ ! -d $DB/data/mysql ]]; then
    install -d -o mysql -g mysql "$DB" "$DB/run"
    mariadb-install-db --user=mysql --datadir="$DB/data" --skip-test-db \
        --auth-root-authentication-method=socket >"$DIR/log/mariadb-install.log" 2>&1 \
        || die "mariadb-install-db failed; see $DIR/log/mariadb-install.log"
fi
if ! running "$DB/run/mariadbd.pid"; then
    # The buffer pool size and lock wait timeout are the values SLURM's accounting docs ask for.
    mariadbd --user=mysql --datadir="$DB/data" --socket="$SOCK" --port="$DB_PORT" \
        --bind-address=127.0.0.1 --pid-file="$DB/run/mariadbd.pid" \
        --log-error="$DB/run/mariadbd.log" --innodb-buffer-pool-size=128M \
        --innodb-lock-wait-timeout=900 </dev/null >/dev/null 2>&1 &
    disown
    wait_for 60 MariaDB mariadb --socket="$SOCK" -e 'SELECT 1'
fi

# Configs, written once: a rerun keeps the database password that MariaDB already holds.
if [[ ! -s $DIR/slurmdbd.conf ]]; then
    password=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
    mariadb --socket="$SOCK" <<SQL
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$password';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$password';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
SQL
    umask 077
    cat >"$DIR/slurmdbd.conf.tmp" <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$password
StorageLoc=slurm_acct_db
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/slurmdbd.pid
CONF
    mv "$DIR/slurmdbd.conf.tmp" "$DIR/slurmdbd.conf"
    umask 022
fi

if [[ ! -s $DIR/slurm.conf ]]; then
    # This machine as slurmd sees it (NodeName, CPUs, sockets, cores, RealMemory).
    node=$(slurmd -C | head -n 1)
    [[ $node == NodeName=* ]] || die "slurmd -C printed no node line: $node"
    cat >"$DIR/slurm.conf.tmp" <<CONF
ClusterName=$CLUSTER
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
# No cgroups: containers rarely delegate them, and one test node needs no confinement.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# sacct shows each job's --comment, where the Snakemake plugin writes the rule's name.
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge=300
# slurmd fetches this config from slurmctld and serves it at /run/slurm/conf, where every
# command on the node finds it: the plugin's jobstep strips SLURM_CONF from its nested srun.
SlurmctldParameters=enable_configless
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
    mv "$DIR/slurm.conf.tmp" "$DIR/slurm.conf"
fi

if ! running "$DIR/slurmdbd.pid"; then
    slurmdbd
    wait_for 60 slurmdbd sacctmgr --noheader list cluster
fi
if ! sacctmgr --noheader --parsable2 list cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr --immediate add cluster "$CLUSTER" >/dev/null
fi
if ! running "$DIR/slurmctld.pid"; then
    slurmctld
    wait_for 60 slurmctld scontrol ping
fi
if ! running "$DIR/slurmd.pid"; then
    env -u SLURM_CONF slurmd --conf-server "127.0.0.1:$CTLD_PORT"
fi
# The node is up when sinfo lists it idle, mixed or allocated (not down, drained, unknown).
wait_for 60 "slurmd ($(hostname -s))" \
    sh -c "sinfo --noheader --responding --states=idle,mixed,allocated -o %N | grep -q ."
echo "SLURM cluster '$CLUSTER' is up (config: /run/slurm/conf/slurm.conf, from $SLURM_CONF)" >&2
sinfo --Node --long >&2
