#!/usr/bin/env bash
# A real Slurm cluster on this one machine, for tests and for trying hpcadapt
# without a site cluster: controller + accounting (slurmdbd on MariaDB) + N slurmd
# "nodes" (multiple-slurmd on 127.0.0.1), optional stand-in GPUs via gres.
#
#   bash slurm/local-cluster.sh install   # apt packages only
#   bash slurm/local-cluster.sh up        # install if needed, configure, start, wait
#   bash slurm/local-cluster.sh status    # what runs, sinfo, the shared job folder
#   bash slurm/local-cluster.sh down      # cancel jobs, stop what 'up' started
#
# Needs root and Debian (no systemd needed). Everything lives in one state folder,
# $HPCADAPT_SLURM_STATE (default /var/lib/hpcadapt-slurm); /etc/slurm/*.conf become
# symlinks into it so plain sbatch/sinfo find the cluster. 'up' twice is a no-op.
# 'down' stops only daemons whose pid files live in the state folder (never by name).
set -euo pipefail

STATE=${HPCADAPT_SLURM_STATE:-/var/lib/hpcadapt-slurm}
CLUSTER=${HPCADAPT_SLURM_CLUSTER:-hpcadapt}
PARTITION=${HPCADAPT_SLURM_PARTITION:-debug}
NODES=${HPCADAPT_SLURM_NODES:-2}
CPUS_PER_NODE=${HPCADAPT_SLURM_CPUS:-4}
MEM_PER_NODE_MB=${HPCADAPT_SLURM_MEM_MB:-12000}
GPUS_PER_NODE=${HPCADAPT_SLURM_GPUS:-2}
DEF_MEM_PER_CPU_MB=500
CTLD_PORT=6817
DBD_PORT=6819
DB_PORT=${HPCADAPT_SLURM_DB_PORT:-3307}
SLURMD_BASE_PORT=17001
READY_TIMEOUT_S=${HPCADAPT_SLURM_READY_TIMEOUT:-90}
PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server)

ETC=$STATE/etc
RUN=$STATE/run
LOG=$STATE/log
# Job logs and outputs must be on a path every node sees. Here all nodes are this
# host, so any folder works; tests and users still take it from here explicitly.
SHARED=$STATE/shared
HOSTS_TAG="# hpcadapt-slurm"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=slurm/write-configs.sh
source "$HERE/write-configs.sh"

say() { printf '[local-cluster] %s\n' "$*"; }
die() { printf '[local-cluster] ERROR: %s\n' "$*" >&2; exit 1; }

need_root() { [[ $(id -u) == 0 ]] || die "must run as root (it installs packages and starts daemons)"; }

packages_present() {
    local bin
    for bin in slurmctld slurmd slurmdbd sbatch sacctmgr munged mariadbd mariadb-install-db; do
        command -v "$bin" >/dev/null 2>&1 || return 1
    done
}

cmd_install() {
    need_root
    if packages_present; then say "packages already installed"; return; fi
    command -v apt-get >/dev/null || die "apt-get not found: this script supports Debian/Ubuntu only"
    say "installing ${PACKAGES[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
}

# --- pid-file helpers: we only ever signal a pid we wrote, and only if the
# --- process still has the expected name (guards against pid reuse).
pid_alive() {  # pidfile expected_comm
    local pid
    [[ -s "$1" ]] || return 1
    pid=$(tr -d '[:space:]' <"$1")
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/comm ]] || return 1
    [[ "$(cat "/proc/$pid/comm")" == "$2"* ]]
}

stop_pidfile() {  # pidfile expected_comm
    local pid i
    if ! pid_alive "$1" "$2"; then rm -f "$1"; return; fi
    pid=$(tr -d '[:space:]' <"$1")
    say "stopping $2 (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do
        [[ -d /proc/$pid ]] || break
        sleep 0.2
    done
    if [[ -d /proc/$pid ]]; then kill -KILL "$pid" 2>/dev/null || true; fi
    rm -f "$1"
}

wait_for() {  # seconds description command...
    local limit=$1 what=$2; shift 2
    local t0=$SECONDS
    until "$@" >/dev/null 2>&1; do
        (( SECONDS - t0 < limit )) || return 1
        sleep 0.3
    done
}

# --- cgroup v1 works where we can make a memory cgroup; else linuxproc fallback.
detect_cgroup_mode() {
    local probe=/sys/fs/cgroup/memory/hpcadapt-probe.$$
    if [[ -d /sys/fs/cgroup/memory ]] && ! mountpoint -q /sys/fs/cgroup/memory 2>/dev/null; then
        echo none; return
    fi
    if mkdir "$probe" 2>/dev/null; then rmdir "$probe"; echo v1; else echo none; fi
}

prepare_dirs() {
    mkdir -p "$ETC" "$RUN" "$LOG" "$STATE/spool/ctld" "$STATE/gpu" "$SHARED"
    chmod 1777 "$SHARED"
    local i n
    for n in $(seq 1 "$NODES"); do mkdir -p "$STATE/spool/slurmd-n$n"; done
    for i in $(seq 0 $((GPUS_PER_NODE - 1))); do
        [[ -c "$STATE/gpu/gpu$i" ]] || mknod "$STATE/gpu/gpu$i" c 1 3
    done
    if [[ ! -s "$STATE/db.secret" ]]; then
        (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$STATE/db.secret")
    fi
    # munged refuses group/world-writable folders; keep its own.
    install -d -o munge -g munge -m 0700 "$RUN/munge" "$LOG/munge"
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge
}

link_etc() {
    # Clients (sbatch, sinfo, sacct) read /etc/slurm; point it at our files, but
    # never overwrite a site's real configuration.
    mkdir -p /etc/slurm
    local f
    for f in slurm.conf slurmdbd.conf cgroup.conf gres.conf; do
        if [[ -e /etc/slurm/$f && ! -L /etc/slurm/$f ]]; then
            die "/etc/slurm/$f exists and is not ours; move it away or use the site cluster"
        fi
        ln -sfn "$ETC/$f" "/etc/slurm/$f"
    done
}

add_hosts() {
    local names
    names=$(for n in $(seq 1 "$NODES"); do printf 'n%s ' "$n"; done)
    if ! grep -q "$HOSTS_TAG" /etc/hosts; then
        # /etc/hosts may be a bind mount: append in place, never replace the file.
        printf '127.0.0.1 %s%s\n' "$names" "$HOSTS_TAG" >>/etc/hosts
    fi
}

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if munge_works; then return; fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        (umask 077; dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none)
        chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
    fi
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged --pid-file="$RUN/munge/munged.pid" \
        --log-file="$LOG/munge/munged.log" --seed-file=/var/lib/munge/munged.seed
    wait_for 15 munge munge_works || die "munged did not answer; see $LOG/munge/munged.log"
}

db_sql() { mariadb --no-defaults --protocol=socket --socket="$RUN/mysqld.sock" -u root "$@"; }

start_mariadb() {
    if pid_alive "$RUN/mariadbd.pid" mariadbd; then return; fi
    if [[ ! -d "$STATE/mysql/mysql" ]]; then
        say "initialising MariaDB data folder"
        mkdir -p "$STATE/mysql"; chown mysql:mysql "$STATE/mysql"
        mariadb-install-db --no-defaults --user=mysql --datadir="$STATE/mysql" \
            --auth-root-authentication-method=socket --skip-test-db >"$LOG/mariadb-install.log" 2>&1 \
            || die "mariadb-install-db failed; see $LOG/mariadb-install.log"
    fi
    chown mysql:mysql "$RUN"  # pid file and socket are written by the mysql user
    say "starting mariadbd on 127.0.0.1:$DB_PORT"
    setsid nohup /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$STATE/mysql" \
        --socket="$RUN/mysqld.sock" --pid-file="$RUN/mariadbd.pid" --port="$DB_PORT" \
        --bind-address=127.0.0.1 --log-error="$LOG/mariadb.log" </dev/null >/dev/null 2>&1 &
    wait_for 60 mariadb db_sql -e "SELECT 1" || die "MariaDB did not start; see $LOG/mariadb.log"
    chown root:root "$RUN"; chmod 755 "$RUN"
    local pass; pass=$(cat "$STATE/db.secret")
    db_sql <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$pass';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF
}

start_slurmdbd() {
    if pid_alive "$RUN/slurmdbd.pid" slurmdbd; then return; fi
    say "starting slurmdbd"
    SLURM_CONF=$ETC/slurm.conf /usr/sbin/slurmdbd
    wait_for 30 slurmdbd sacctmgr -n show cluster || die "slurmdbd did not answer; see $LOG/slurmdbd.log"
}

cluster_registered() { sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER"; }

ensure_accounts() {
    cluster_registered || sacctmgr -i add cluster "$CLUSTER" >/dev/null
    if ! sacctmgr -n -P show account hpcadapt format=account | grep -qx hpcadapt; then
        sacctmgr -i add account hpcadapt Cluster="$CLUSTER" Description="local test account" >/dev/null
        sacctmgr -i add user root Account=hpcadapt Cluster="$CLUSTER" >/dev/null
    fi
}

start_slurmctld() {
    if pid_alive "$RUN/slurmctld.pid" slurmctld; then return; fi
    say "starting slurmctld"
    SLURM_CONF=$ETC/slurm.conf /usr/sbin/slurmctld
    wait_for 30 slurmctld scontrol ping || die "slurmctld did not answer; see $LOG/slurmctld.log"
}

start_slurmds() {
    local n
    for n in $(seq 1 "$NODES"); do
        if pid_alive "$RUN/slurmd-n$n.pid" slurmd; then continue; fi
        say "starting slurmd n$n"
        SLURM_CONF=$ETC/slurm.conf /usr/sbin/slurmd -N "n$n"
    done
}

nodes_idle() {
    local states
    states=$(sinfo -h -N -p "$PARTITION" -o '%t' 2>/dev/null) || return 1
    [[ $(grep -c . <<<"$states") -ge $NODES ]] || return 1
    ! grep -qv '^idle$\|^mix$\|^alloc$' <<<"$states"
}

all_running() {
    pid_alive "$RUN/mariadbd.pid" mariadbd && pid_alive "$RUN/slurmdbd.pid" slurmdbd \
        && pid_alive "$RUN/slurmctld.pid" slurmctld || return 1
    local n
    for n in $(seq 1 "$NODES"); do pid_alive "$RUN/slurmd-n$n.pid" slurmd || return 1; done
    munge_works
}

cmd_up() {
    need_root
    local t0=$SECONDS
    if all_running && cluster_registered && nodes_idle; then
        say "already up (nothing to do)"; print_env; return
    fi
    packages_present || cmd_install
    CGROUP_MODE=$(detect_cgroup_mode)
    say "cgroup mode: $CGROUP_MODE"
    prepare_dirs
    write_configs
    link_etc
    add_hosts
    start_munge
    start_mariadb
    start_slurmdbd
    ensure_accounts
    start_slurmctld
    start_slurmds
    # A node that was DOWN from an earlier run comes back on its own (ReturnToService=2)
    # but only after it registers; resume explicitly to save the wait.
    scontrol update nodename="n[1-$NODES]" state=resume >/dev/null 2>&1 || true
    wait_for "$READY_TIMEOUT_S" "cluster" cluster_registered || die "cluster $CLUSTER never appeared in sacctmgr"
    wait_for "$READY_TIMEOUT_S" "nodes" nodes_idle \
        || { sinfo -N >&2 || true; die "nodes not idle after ${READY_TIMEOUT_S}s; see $LOG/slurmd-n*.log"; }
    say "ready in $((SECONDS - t0)) s"
    print_env
}

print_env() {
    say "cluster=$CLUSTER partition=$PARTITION nodes=$NODES x ${CPUS_PER_NODE} CPUs x ${GPUS_PER_NODE} stand-in GPUs"
    say "shared job folder (logs/outputs on every node): $SHARED"
}

cmd_down() {
    need_root
    if command -v squeue >/dev/null && pid_alive "$RUN/slurmctld.pid" slurmctld; then
        local jobs; jobs=$(squeue -h -o '%i' 2>/dev/null | tr '\n' ' ')
        if [[ -n "${jobs// /}" ]]; then
            say "cancelling jobs: $jobs"
            # shellcheck disable=SC2086
            scancel $jobs || true
            sleep 1
        fi
    fi
    local n
    for n in $(seq 1 "$NODES"); do stop_pidfile "$RUN/slurmd-n$n.pid" slurmd; done
    stop_pidfile "$RUN/slurmctld.pid" slurmctld
    stop_pidfile "$RUN/slurmdbd.pid" slurmdbd
    stop_pidfile "$RUN/mariadbd.pid" mariadbd
    stop_pidfile "$RUN/munge/munged.pid" munged
    say "down"
}

cmd_status() {
    local name file comm n
    for pair in "munged:$RUN/munge/munged.pid" "mariadbd:$RUN/mariadbd.pid" \
        "slurmdbd:$RUN/slurmdbd.pid" "slurmctld:$RUN/slurmctld.pid"; do
        comm=${pair%%:*}; file=${pair#*:}
        if pid_alive "$file" "$comm"; then say "$comm: running (pid $(cat "$file"))"; else say "$comm: not running (from here)"; fi
    done
    for n in $(seq 1 "$NODES"); do
        name="slurmd n$n"
        if pid_alive "$RUN/slurmd-n$n.pid" slurmd; then say "$name: running (pid $(cat "$RUN/slurmd-n$n.pid"))"; else say "$name: not running"; fi
    done
    if command -v sinfo >/dev/null && sinfo -h >/dev/null 2>&1; then
        sinfo -N -o '%N %P %t %c %m %G'
        squeue -o '%i %j %T %M %R' 2>/dev/null || true
    fi
    say "state folder: $STATE; shared job folder: $SHARED"
}

case "${1:-}" in
    install) cmd_install ;;
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *) echo "usage: $0 {install|up|down|status}" >&2; exit 2 ;;
esac
