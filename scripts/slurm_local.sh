#!/usr/bin/env bash
# A private one-node SLURM cluster on localhost, for testing the sweeps' SLURM=1 path against the real thing
# (tests/test_slurm.py). Everything lives in one directory: the config, munged's key and socket, the state, the
# spool, the pid files and the logs; nothing under /etc or /var is read or written, so it runs beside a real
# installation without touching it.
#
#   scripts/slurm_local.sh check        can a cluster be started here? exit 0, or exit 3 with a one-line reason
#   scripts/slurm_local.sh start DIR    write DIR/slurm.conf, start munged, slurmctld and slurmd, wait until the
#                                       node takes jobs; prints the line to give the clients:
#                                       export SLURM_CONF=DIR/slurm.conf
#   scripts/slurm_local.sh stop DIR     cancel every job of this cluster, stop its daemons (bounded waits), keep DIR
#
# Env: SLURM_LOCAL_CPUS (2: CPUs of the node, at most the machine's), SLURM_LOCAL_MAX_ARRAY_SIZE (1001, SLURM's
# default), SLURM_LOCAL_TIMEOUT (60: seconds to wait for the daemons at each step).
# Needs: root (SlurmUser=root; jobs run as the submitting user), slurm-wlm and munge (Debian: apt-get install -y
# slurm-wlm munge). What works in a container: proctrack/linuxproc and task/none (no cgroups), munged --force.
set -euo pipefail

CPUS="${SLURM_LOCAL_CPUS:-2}"
MAX_ARRAY_SIZE="${SLURM_LOCAL_MAX_ARRAY_SIZE:-1001}"
TIMEOUT="${SLURM_LOCAL_TIMEOUT:-60}"

die() { echo "slurm_local: $*" >&2; exit 1; }

# check: the one-line reason a cluster cannot start here (exit 3), or nothing (exit 0).
check() {
    local bin
    for bin in munged slurmctld slurmd sbatch scontrol squeue scancel sinfo; do
        if ! PATH="$PATH:/usr/sbin:/sbin" command -v "$bin" >/dev/null; then
            echo "slurm_local: $bin is not installed (Debian: apt-get install -y slurm-wlm munge)"
            return 3
        fi
    done
    if [[ "$(id -u)" != 0 ]]; then
        echo "slurm_local: needs root (the local cluster runs its daemons as SlurmUser=root)"
        return 3
    fi
    if ! command -v python3 >/dev/null; then
        echo "slurm_local: python3 is needed to pick free ports"
        return 3
    fi
}

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.5 s until it succeeds; fail after SECONDS.
wait_for() {
    local limit="$1" what="$2" end
    shift 2
    end=$(($(date +%s) + limit))
    until "$@" >/dev/null 2>&1; do
        (($(date +%s) < end)) || return 1
        sleep 0.5
    done
}

pid_alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Show the end of a daemon's log when it would not start: that is where SLURM says why.
log_tail() { [[ -f "$1" ]] && { echo "--- last lines of $1:" >&2; tail -n 15 "$1" >&2; }; return 0; }

start() {
    local dir="$1"
    local reason
    reason="$(check)" || { echo "$reason" >&2; exit 3; }
    export PATH="$PATH:/usr/sbin:/sbin"
    ((CPUS <= $(nproc --all))) || die "SLURM_LOCAL_CPUS=$CPUS exceeds this machine's $(nproc --all) CPUs; lower it"
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    if pid_alive "$dir/slurmctld.pid" || pid_alive "$dir/munged.pid"; then
        die "a cluster is already running from $dir; stop it first: $0 stop $dir"
    fi
    mkdir -p "$dir/munge" "$dir/state" "$dir/spool"
    chmod 700 "$dir" "$dir/munge"
    # Two free TCP ports, so that the cluster never collides with a real one (6817/6818) or another test.
    local ports ctld_port slurmd_port
    ports="$(python3 -c 'import socket
ss = [socket.socket() for _ in range(2)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')"
    read -r ctld_port slurmd_port <<<"$ports"
    local host
    host="$(hostname -s)"

    # munged: its own key, socket and pid file. --force: the directories above DIR (/tmp) are world-writable,
    # which munged otherwise refuses as insecure.
    dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$dir/munge/munge.key"
    munged --force --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
        --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munge/munged.seed" \
        || { log_tail "$dir/munged.log"; die "munged did not start"; }

    cat >"$dir/slurm.conf" <<EOF
# Written by scripts/slurm_local.sh: a one-node cluster on localhost, everything under $dir.
ClusterName=bitfitlocal
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
# No cgroups in a container: track job processes by parentage, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
# One CPU per task by default, so that two tasks share the node.
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# Schedule every second (default 60 s), so that a job whose dependency is met starts at once.
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
MaxArraySize=$MAX_ARRAY_SIZE
ReturnToService=2
KillWait=5
InactiveLimit=0
MinJobAge=3600
NodeName=$host NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    export SLURM_CONF="$dir/slurm.conf"
    # -i: ignore any saved state (a fresh cluster every time).
    slurmctld -i || { log_tail "$dir/slurmctld.log"; stop "$dir"; die "slurmctld did not start"; }
    if ! wait_for "$TIMEOUT" "slurmctld" scontrol ping; then
        log_tail "$dir/slurmctld.log"; stop "$dir"; die "slurmctld did not answer within ${TIMEOUT}s"
    fi
    slurmd -N "$host" || { log_tail "$dir/slurmd.log"; stop "$dir"; die "slurmd did not start"; }
    # The node takes jobs once sinfo shows it idle.
    if ! wait_for "$TIMEOUT" "the node" bash -c '[[ "$(sinfo -h -o %t)" == idle ]]'; then
        log_tail "$dir/slurmd.log"; log_tail "$dir/slurmctld.log"; stop "$dir"
        die "the node did not become idle within ${TIMEOUT}s (sinfo: $(sinfo -h -o '%t %E' 2>&1 | head -1))"
    fi
    echo "export SLURM_CONF=$dir/slurm.conf"
}

# stop_pid FILE SECONDS: SIGTERM the daemon of a pid file, SIGKILL it if it is still there after SECONDS.
stop_pid() {
    local file="$1" limit="$2" pid
    [[ -f "$file" ]] || return 0
    pid="$(cat "$file")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    kill "$pid" 2>/dev/null || true
    wait_for "$limit" "$file" bash -c "! kill -0 $pid" || kill -KILL "$pid" 2>/dev/null || true
}

# Processes of this cluster that outlived its daemons: a job's processes (SLURM_JOB_ID set by slurmd) and the
# slurmstepd that ran them, found by this cluster's SLURM_CONF in their environment (the daemons were started with
# it, slurmstepd inherits it, jobs get it from the submitter). This script and its callers are never among them.
leftovers() {
    local conf="$1" env_file pid env ancestors=" " p="$$"
    local stat
    while [[ "$p" =~ ^[1-9][0-9]*$ ]]; do  # our own ancestry: the parent is the field after ") STATE" in /proc/<pid>/stat
        ancestors+="$p "
        stat="$(cat "/proc/$p/stat" 2>/dev/null)" || break
        read -r _ p _ <<<"${stat##*) }"
    done
    for env_file in /proc/[0-9]*/environ; do
        pid="${env_file#/proc/}"
        pid="${pid%/environ}"
        [[ "$ancestors" == *" $pid "* || "$pid" == "$BASHPID" ]] && continue
        env="$({ tr '\0' '\n' <"$env_file"; } 2>/dev/null)" || continue
        grep -qxF "SLURM_CONF=$conf" <<<"$env" || continue
        if grep -q '^SLURM_JOB_ID=' <<<"$env" || [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == slurmstepd ]]; then
            echo "$pid"
        fi
    done
    return 0
}

stop() {
    local dir="$1"
    [[ -d "$dir" ]] || return 0
    dir="$(cd "$dir" && pwd)"
    export PATH="$PATH:/usr/sbin:/sbin" SLURM_CONF="$dir/slurm.conf"
    if [[ -f "$dir/slurm.conf" ]] && pid_alive "$dir/slurmctld.pid"; then
        # Cancel every job first, so that no job process outlives the cluster.
        local jobs
        jobs="$(timeout 20 squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')" || true
        if [[ -n "${jobs// /}" ]]; then
            # shellcheck disable=SC2086
            timeout 20 scancel $jobs 2>/dev/null || true
            wait_for 30 "jobs to end" bash -c '[[ -z "$(squeue -h 2>/dev/null)" ]]' || true
        fi
        timeout 20 scontrol shutdown >/dev/null 2>&1 || true
    fi
    stop_pid "$dir/slurmd.pid" 15
    stop_pid "$dir/slurmctld.pid" 15
    local pid
    for pid in $(leftovers "$dir/slurm.conf"); do kill -KILL "$pid" 2>/dev/null || true; done
    stop_pid "$dir/munged.pid" 10
}

case "${1:-}" in
    check) check ;;
    start) [[ $# == 2 ]] || { echo "usage: $0 start DIR" >&2; exit 2; }; start "$2" ;;
    stop) [[ $# == 2 ]] || { echo "usage: $0 stop DIR" >&2; exit 2; }; stop "$2" ;;
    *) echo "usage: $0 check | start DIR | stop DIR" >&2; exit 2 ;;
esac
