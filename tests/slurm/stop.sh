#!/usr/bin/env bash
# Stops the daemons tests/slurm/start.sh started (by their pid files in $AXFLOW_SLURM_DIR),
# newest first, and the configless config link slurmd left. Its state, accounting database and
# logs stay; `--purge` removes them too. munged is the system's and stays up.
set -euo pipefail

DIR=${AXFLOW_SLURM_DIR:-/var/tmp/axflow-slurm}
for pidfile in slurmd.pid slurmctld.pid slurmdbd.pid db/run/mariadbd.pid; do
    pidfile=$DIR/$pidfile
    [[ -s $pidfile ]] || continue
    pid=$(cat "$pidfile")
    if kill "$pid" 2>/dev/null; then
        for ((i = 0; i < 120 && $(kill -0 "$pid" 2>/dev/null && echo 1 || echo 0); i++)); do
            sleep 0.25
        done
        echo "stopped $(basename "$pidfile" .pid) ($pid)" >&2
    fi
    rm -f "$pidfile"
done
# slurmd's configless cache link: left behind, every SLURM command (and so every `import
# snakemake`, whose slurm plugin asks `scontrol` at import) waits out a timeout on a dead controller.
if [[ $(readlink /run/slurm/conf 2>/dev/null) == "$DIR"/* ]]; then
    rm -f /run/slurm/conf
    echo "removed /run/slurm/conf" >&2
fi
if [[ ${1:-} == --purge ]]; then
    rm -rf "$DIR"
    echo "removed $DIR" >&2
fi
