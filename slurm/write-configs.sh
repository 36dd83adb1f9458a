# shellcheck shell=bash
# Sourced by local-cluster.sh: writes slurm.conf, slurmdbd.conf, cgroup.conf and
# gres.conf for the local test cluster into "$ETC".
#
# Why these settings (each was needed on a one-machine test cluster):
# - several slurmd on one host ("multiple-slurmd"), each on its own port, all at
#   127.0.0.1; config_overrides lets them advertise more CPUs than exist;
# - accounting through slurmdbd, because submitit reads job states only via sacct;
# - cred_expire=10 and a 2 s scheduler tick so a requeued job restarts in seconds;
# - cgroup v1 enforces --mem (jobs over it end OUT_OF_MEMORY); without usable
#   cgroups we fall back to linuxproc tracking and no memory enforcement.

write_configs() {
    local host proctrack taskplugin last_port
    host=$(hostname -s)
    last_port=$((SLURMD_BASE_PORT + NODES - 1))
    if [[ "$CGROUP_MODE" == v1 ]]; then
        proctrack=proctrack/cgroup
        taskplugin=task/cgroup,task/affinity
    else
        proctrack=proctrack/linuxproc
        taskplugin=task/none
    fi

    cat >"$ETC/slurm.conf.new" <<EOF
# Written by hpcadapt slurm/local-cluster.sh; rewritten on every 'up'.
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
CryptoType=crypto/munge
MpiDefault=none
MailProg=/bin/true
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/slurmd-%n
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
SlurmdParameters=config_overrides
ProctrackType=$proctrack
TaskPlugin=$taskplugin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$DEF_MEM_PER_CPU_MB
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
KillWait=5
ReturnToService=2
InactiveLimit=0
MinJobAge=300
SlurmctldTimeout=60
SlurmdTimeout=120
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=5
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
JobCompType=jobcomp/none
GresTypes=gpu
NodeName=n[1-$NODES] NodeHostname=$host NodeAddr=127.0.0.1 Port=[$SLURMD_BASE_PORT-$last_port] CPUs=$CPUS_PER_NODE Boards=1 SocketsPerBoard=1 CoresPerSocket=$CPUS_PER_NODE ThreadsPerCore=1 RealMemory=$MEM_PER_NODE_MB Gres=gpu:$GPUS_PER_NODE State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

    cat >"$ETC/slurmdbd.conf.new" <<EOF
# Written by hpcadapt slurm/local-cluster.sh. Holds the database password: mode 600.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(cat "$STATE/db.secret")
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$ETC/slurmdbd.conf.new"

    if [[ "$CGROUP_MODE" == v1 ]]; then
        cat >"$ETC/cgroup.conf.new" <<EOF
CgroupPlugin=cgroup/v1
CgroupMountpoint=/sys/fs/cgroup
ConstrainRAMSpace=yes
ConstrainSwapSpace=no
ConstrainCores=no
ConstrainDevices=no
EOF
    else
        printf 'CgroupPlugin=autodetect\n' >"$ETC/cgroup.conf.new"
    fi

    # Stand-in GPUs: character devices (copies of /dev/null) so slurmd can count
    # them; scheduling and CUDA_VISIBLE_DEVICES work, nothing computes on them.
    printf 'NodeName=n[1-%s] Name=gpu File=%s/gpu/gpu[0-%s]\n' \
        "$NODES" "$STATE" "$((GPUS_PER_NODE - 1))" >"$ETC/gres.conf.new"

    local f
    for f in slurm.conf slurmdbd.conf cgroup.conf gres.conf; do
        mv -f "$ETC/$f.new" "$ETC/$f"
    done
}
