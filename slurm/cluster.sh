#!/usr/bin/env bash
# A real SLURM test cluster on one machine: one controller and N compute hosts, each host a network
# namespace with its own hostname, address, slurmd and sshd. Needs root (namespaces, a bridge).
#
#   bash slurm/cluster.sh install          # apt: slurmctld slurmd slurm-client munge openssh-server
#                                          #      iproute2 (once; idempotent)
#   bash slurm/cluster.sh start [N]        # N hosts (default 2); stops any leftover cluster first
#   bash slurm/cluster.sh status           # hosts, links, daemons, sinfo
#   bash slurm/cluster.sh exec HOST CMD... # run CMD inside HOST, with HOST's hostname
#   bash slurm/cluster.sh slow HOST RATE   # shape HOST's link both ways, RATE in tc units (200mbit)
#   bash slurm/cluster.sh cut HOST         # take HOST's link down (a lost node)
#   bash slurm/cluster.sh heal HOST        # undo slow and cut
#   bash slurm/cluster.sh stop             # kill every daemon and process in the hosts, remove the
#                                          # namespaces, links, /etc/hosts lines and state: nothing left
#   eval "$(bash slurm/cluster.sh env)"    # SLURM_CONF & co, to use sbatch/squeue/srun from this shell
#
# Shape (defaults; HVDLM_CLUSTER_NET=a.b.c picks another private /24):
#   bridge hvdbr0 10.213.0.1 (this machine)    host hvdctl   10.213.0.2    slurmctld
#                                              host hvdnodeI 10.213.0.1I   slurmd + sshd  (I = 1..N)
#   Every host is a network namespace linked to the bridge by a veth (hvdvethc, hvdvethI); no host
#   has a default route, so no packet leaves the bridge. Names resolve through /etc/hosts lines
#   tagged "# hvdlm-cluster" (added by start, removed by stop). One partition, `debug`, the default.
#   Each host runs on its share of this machine's cores: max(1, cores // N) of them (HVDLM_CLUSTER_CPUS
#   to choose another count). Everything in the host is pinned to them (taskset: slurmd, sshd and
#   what they start, `exec`), hvdnode1 on the first ones, hvdnode2 on the next, wrapping around when
#   N exceeds the cores; so a rank there sees its host's CPUs in its affinity and runs that many
#   threads, as on real nodes. slurm.conf gives each node all the machine's cores (or the share, if
#   larger), so that a job may still place up to that many 1-CPU tasks on a host: they share its
#   CPUs. Timings are meaningless (the hosts share memory bandwidth, and wrap around on few cores).
#   All state (configs, logs, spool, keys, the hosts' TMPDIR) lives in HVDLM_CLUSTER_DIR (default
#   /tmp/hvdlm-cluster). One munged (own key and socket there) serves every host: the hosts share
#   this machine's filesystem, so jobs see the project and its venv at the same paths.
#
# Submitting jobs: from this machine, `eval "$(bash slurm/cluster.sh env)"`, then sbatch/squeue/
#   scontrol/sinfo talk to hvdctl over the bridge (sbatch exports your environment, venv included).
#   Batch scripts start on hvdnode1; `srun --mpi=pmix` (also the default, MpiDefault=pmix) starts
#   MPI/Horovod ranks. `--mpi=pmi2` exists but Debian's OpenMPI aborts in MPI_Init under it.
# horovodrun / mpirun across hosts: run them inside a host, e.g.
#   bash slurm/cluster.sh exec hvdnode1 horovodrun -np 2 -H hvdnode1:1,hvdnode2:1 --gloo python x.py
#   bash slurm/cluster.sh exec hvdnode1 mpirun -np 2 -H hvdnode1,hvdnode2 python x.py
#   `exec` puts $HVDLM_CLUSTER_DIR/bin first on PATH: an `ssh` there that adds `-F` with the cluster's
#   client config (root, the cluster's key, no host key checks), so horovodrun (Gloo and MPI) and
#   mpirun reach the other hosts' sshd without touching ~/.ssh. It also sets SLURM_CONF, the OpenMPI
#   run-as-root variables, TMPDIR (per host, inside the state dir) and appends the project venv's bin.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
D=${HVDLM_CLUSTER_DIR:-/tmp/hvdlm-cluster}
NET=${HVDLM_CLUSTER_NET:-10.213.0}
VENV=${HVDLM_VENV:-$ROOT/.venv}
SLURMD_TIMEOUT=${HVDLM_CLUSTER_SLURMD_TIMEOUT:-30}
BRIDGE=hvdbr0
CTL=hvdctl
TAG="# hvdlm-cluster"
LIBEXEC=/usr/sbin

say() { echo "[cluster] $*" >&2; }
die() { echo "[cluster] ERROR: $*" >&2; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "needs root (network namespaces, a bridge, /etc/hosts)"; }

# host name -> address and root-side veth name
addr_of() { if [ "$1" = "$CTL" ]; then echo "$NET.2"; else echo "$NET.$((10 + ${1#hvdnode}))"; fi; }
veth_of() { if [ "$1" = "$CTL" ]; then echo hvdvethc; else echo "hvdveth${1#hvdnode}"; fi; }
our_netns() { ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^($CTL|hvdnode[0-9]+)$" || true; }
nodes() { our_netns | grep -E '^hvdnode' | sort -V || true; }
is_host() { [[ "$1" =~ ^($CTL|hvdnode[0-9]+)$ ]] && [ -e "/run/netns/$1" ]; }

# The command prefix that runs inside host $1 with its hostname: its network namespace (nsenter, not
# `ip netns exec`, which remounts /sys and hides the cgroup mounts slurmd looks at) and a fresh UTS
# namespace. Usage: "${IN_HOST[@]}" CMD... after in_host HOST.
# A compute host's processes are pinned to its CPUs (written by start).
in_host() {
  local pin=()
  [ -s "$D/hosts/$1/cpus" ] && pin=(taskset -c "$(cat "$D/hosts/$1/cpus")")
  # shellcheck disable=SC2016  # $0 and $@ are the inner shell's
  IN_HOST=("${pin[@]}" nsenter --net="/run/netns/$1" -- unshare --uts -- /bin/sh -c 'hostname "$0" && exec "$@"' "$1")
}

# ------------------------------------------------------------------------------------------------
cmd_install() {
  need_root
  local pkgs=(slurmctld slurmd slurm-client munge openssh-server openssh-client iproute2 util-linux
              hostname libpmix2)
  local missing=()
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Keep the packages' init scripts from starting system-wide daemons (slurmd, munged, sshd).
    local policy=/usr/sbin/policy-rc.d ours=0
    if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; ours=1; fi
    local rc=0
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } || rc=$?
    [ "$ours" = 1 ] && rm -f "$policy"
    [ "$rc" = 0 ] || die "apt-get install ${missing[*]} failed"
  fi
  [ -e /usr/lib/x86_64-linux-gnu/slurm-wlm/mpi_pmix.so ] || ls /usr/lib/*/slurm-wlm/mpi_pmix.so >/dev/null 2>&1 \
    || die "SLURM's pmix plugin (mpi_pmix.so) is missing"
  say "installed: $(slurmctld -V), munge $(dpkg-query -W -f='${Version}' munge)"
}

# ------------------------------------------------------------------------------------------------
allowed_cpus() {  # the CPUs this script may run on, one per line (0-3,8 -> 0 1 2 3 8)
  local part
  for part in $(sed -n 's/^Cpus_allowed_list:\s*//p' /proc/self/status | tr ',' ' '); do
    if [[ "$part" == *-* ]]; then seq "${part%-*}" "${part#*-}"; else echo "$part"; fi
  done
}

cpu_share() {  # cpu_share N: CPUs per host
  local n=$1 cores; cores=$(allowed_cpus | wc -l)
  local share=${HVDLM_CLUSTER_CPUS:-$((cores / n))}
  [ "$share" -ge 1 ] || share=1
  echo "$share"
}

host_cpus() {  # host_cpus I SHARE: host I's CPUs, as a taskset list (the next SHARE, wrapping)
  local i=$1 share=$2 cpus j out=()
  mapfile -t cpus < <(allowed_cpus)
  for ((j = 0; j < share; j++)); do out+=("${cpus[$(((((i - 1) * share) + j) % ${#cpus[@]}))]}"); done
  (IFS=,; echo "${out[*]}")
}

write_configs() {
  local n=$1 i h share claim
  share=$(cpu_share "$n")
  claim=$(allowed_cpus | wc -l)
  [ "$claim" -ge "$share" ] || claim=$share
  mkdir -p "$D"/{etc,bin,ctl/state,ssh,munge}
  chmod 755 "$D"
  {
    echo "# hvdlm local test cluster (slurm/cluster.sh); generated, removed by 'cluster.sh stop'"
    echo "ClusterName=hvdlm"
    echo "SlurmctldHost=$CTL($NET.2)"
    echo "SlurmUser=root"
    echo "SlurmdUser=root"
    echo "AuthType=auth/munge"
    echo "CredType=cred/munge"
    echo "AuthInfo=socket=$D/munge/munge.socket"
    echo "SlurmctldPort=6817"
    echo "SlurmdPort=6818"
    echo "StateSaveLocation=$D/ctl/state"
    echo "SlurmctldPidFile=$D/ctl/slurmctld.pid"
    echo "SlurmctldLogFile=$D/ctl/slurmctld.log"
    echo "SlurmdSpoolDir=$D/hosts/%n/spool"
    echo "SlurmdPidFile=$D/hosts/%n/slurmd.pid"
    echo "SlurmdLogFile=$D/hosts/%n/slurmd.log"
    echo "ProctrackType=proctrack/linuxproc"
    echo "TaskPlugin=task/none"
    echo "TaskProlog=$D/etc/task_prolog.sh"
    echo "SelectType=select/cons_tres"
    echo "SelectTypeParameters=CR_CPU"
    echo "SchedulerType=sched/backfill"
    echo "MpiDefault=pmix"
    echo "JobAcctGatherType=jobacct_gather/none"
    echo "AccountingStorageType=accounting_storage/none"
    echo "JobCompType=jobcomp/filetxt"
    echo "JobCompLoc=$D/ctl/jobcomp.log"
    echo "ReturnToService=2"      # a node that was down (cut) comes back when its slurmd answers
    echo "SlurmdTimeout=$SLURMD_TIMEOUT"  # a cut node is marked DOWN (Not responding) after about this
    echo "InactiveLimit=0"
    echo "KillWait=5"
    echo "MinJobAge=300"
    echo "SlurmctldDebug=info"
    echo "SlurmdDebug=info"
    for ((i = 1; i <= n; i++)); do
      echo "NodeName=hvdnode$i NodeAddr=$NET.$((10 + i)) CPUs=$claim State=UNKNOWN"
    done
    echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
  } >"$D/etc/slurm.conf"
  cat >"$D/etc/task_prolog.sh" <<EOF
#!/bin/sh
# Each host's jobs get a TMPDIR of their own inside the cluster's state dir (the hosts share /tmp).
echo "export TMPDIR=$D/hosts/\$SLURMD_NODENAME/tmp"
EOF
  chmod 755 "$D/etc/task_prolog.sh"
  # Each slurmd has its own config dir: mpi.conf must give each host its own PMIx client tmpdir.
  for ((i = 1; i <= n; i++)); do
    h=hvdnode$i
    mkdir -p "$D/hosts/$h"/{etc,spool,tmp,pmix}
    host_cpus "$i" "$share" >"$D/hosts/$h/cpus"
    cp "$D/etc/slurm.conf" "$D/hosts/$h/etc/slurm.conf"
    echo "PMIxCliTmpDirBase=$D/hosts/$h/pmix" >"$D/hosts/$h/etc/mpi.conf"
  done

  # ssh: one client key, one host key, per-host sshd on port 22 of the host's address.
  ssh-keygen -q -t ed25519 -N '' -C hvdlm-cluster -f "$D/ssh/id_ed25519"
  ssh-keygen -q -t ed25519 -N '' -C hvdlm-cluster-host -f "$D/ssh/host_ed25519"
  cp "$D/ssh/id_ed25519.pub" "$D/ssh/authorized_keys"
  cat >"$D/ssh/sshd_config" <<EOF
# hvdlm local test cluster: one sshd per host, started with -o ListenAddress=<host address>
Port 22
HostKey $D/ssh/host_ed25519
AuthorizedKeysFile $D/ssh/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
PrintLastLog no
MaxStartups 100:30:200
MaxSessions 100
EOF
  cat >"$D/ssh/config" <<EOF
# hvdlm local test cluster: client side (used through $D/bin/ssh)
Host $CTL hvdnode* $NET.*
  User root
  IdentityFile $D/ssh/id_ed25519
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  GlobalKnownHostsFile /dev/null
  LogLevel ERROR
  BatchMode yes
  ConnectTimeout 10
EOF
  printf '#!/bin/sh\nexec /usr/bin/ssh -F %s "$@"\n' "$D/ssh/config" >"$D/bin/ssh"
  chmod 755 "$D/bin/ssh"

  # munge: own key, socket, pid, log and seed, owned by the munge user (munged refuses root's files).
  mungekey --create --keyfile="$D/munge/munge.key" 2>/dev/null \
    || dd if=/dev/urandom of="$D/munge/munge.key" bs=1024 count=1 status=none
  chown -R munge:munge "$D/munge"
  chmod 711 "$D/munge"   # munged wants the socket dir searchable by all; the key stays 0600
  chmod 600 "$D/munge/munge.key"
}

hosts_add() {
  local n=$1 i
  hosts_remove
  {
    echo "$NET.2 $CTL $TAG"
    for ((i = 1; i <= n; i++)); do echo "$NET.$((10 + i)) hvdnode$i $TAG"; done
  } >>/etc/hosts
}

hosts_remove() {
  grep -qF "$TAG" /etc/hosts 2>/dev/null || return 0
  local tmp; tmp=$(mktemp)
  grep -vF "$TAG" /etc/hosts >"$tmp" || true
  cat "$tmp" >/etc/hosts   # rewrite in place: /etc/hosts is often a bind mount that rename cannot replace
  rm -f "$tmp"
}

net_add_host() {
  local h=$1 veth addr
  veth=$(veth_of "$h"); addr=$(addr_of "$h")
  ip netns add "$h"
  ip link add "$veth" type veth peer name eth0 netns "$h"
  ip link set "$veth" master "$BRIDGE" up
  ip -n "$h" addr add "$addr/24" dev eth0
  ip -n "$h" link set lo up
  ip -n "$h" link set eth0 up
}

check_subnet_free() {
  local clash
  clash=$(ip -o -4 addr show 2>/dev/null | awk -v net="$NET." -v br="$BRIDGE" '$2 != br && index($4, net) == 1 {print $2 " " $4}')
  [ -z "$clash" ] || die "$NET.0/24 is already used here ($clash): set HVDLM_CLUSTER_NET to another private /24"
  if ip -o -4 route show 2>/dev/null | awk '{print $1}' | grep -qx "$NET.0/24"; then
    die "a route for $NET.0/24 exists already: set HVDLM_CLUSTER_NET to another private /24"
  fi
}

# start a daemon detached from our stdio (a caller capturing output must not wait on it)
daemon_in() {
  local h=$1 log=$2; shift 2
  in_host "$h"
  setsid -w "${IN_HOST[@]}" "$@" </dev/null >>"$log" 2>&1
}

wait_for() {  # wait_for SECONDS CMD...: poll CMD until it succeeds
  local t=$1; shift
  local end=$((SECONDS + t))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || return 1
    sleep 0.2
  done
}

idle_nodes() { SLURM_CONF="$D/etc/slurm.conf" sinfo -h -N -o '%t' 2>/dev/null | grep -c '^idle$' || true; }
all_idle() { [ "$(idle_nodes)" = "$1" ]; }

dump_logs() {
  local f
  for f in "$D"/munge/munged.log "$D"/ctl/*.log "$D"/hosts/*/*.log; do
    [ -s "$f" ] || continue
    echo "----- $f (last 20 lines)" >&2
    tail -n 20 "$f" >&2
  done
}

cmd_start() {
  need_root
  local n=${1:-2} i h t0=$SECONDS
  if ! [[ "$n" =~ ^[0-9]+$ ]] || [ "$n" -lt 1 ] || [ "$n" -gt 50 ]; then die "start N: N must be 1..50, got '$n'"; fi
  for c in slurmctld slurmd sinfo munged mungekey sshd ssh-keygen ip tc nsenter unshare setpriv taskset; do
    command -v "$c" >/dev/null 2>&1 || [ -x "$LIBEXEC/$c" ] || die "'$c' not found: run 'bash slurm/cluster.sh install' first"
  done
  cmd_stop quiet
  check_subnet_free
  say "starting: controller $CTL + $n host(s) in $D, net $NET.0/24"
  write_configs "$n"
  hosts_add "$n"
  echo "$n" >"$D/size"
  # `ip netns add` makes /run/netns (a bind mount of itself); stop undoes that only if we made it
  [ -d /run/netns ] || touch "$D/made_run_netns"

  # network: a bridge with this machine at .1, one namespace per host
  ip link add "$BRIDGE" type bridge
  ip addr add "$NET.1/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  net_add_host "$CTL"
  for ((i = 1; i <= n; i++)); do net_add_host "hvdnode$i"; done

  # munged, as the munge user, in the controller's namespace (so stop finds it with everything else;
  # its socket is a file, reachable from every namespace)
  daemon_in "$CTL" "$D/munge/munged.out" setpriv --reuid=munge --regid=munge --clear-groups -- \
    "$LIBEXEC/munged" --socket="$D/munge/munge.socket" --key-file="$D/munge/munge.key" \
    --pid-file="$D/munge/munged.pid" --log-file="$D/munge/munged.log" --seed-file="$D/munge/munged.seed" \
    || { dump_logs; cmd_stop quiet; die "munged did not start"; }

  # privilege separation dir sshd insists on; removed by stop only if we made it
  if [ ! -d /run/sshd ]; then mkdir -p /run/sshd; chmod 755 /run/sshd; touch "$D/made_run_sshd"; fi

  local ok=1
  daemon_in "$CTL" "$D/ctl/slurmctld.out" "$(command -v slurmctld)" -f "$D/etc/slurm.conf" || ok=0
  for ((i = 1; i <= n; i++)); do
    h=hvdnode$i
    daemon_in "$h" "$D/hosts/$h/sshd.out" /usr/sbin/sshd -f "$D/ssh/sshd_config" \
      -o "ListenAddress=$(addr_of "$h")" -o "PidFile=$D/hosts/$h/sshd.pid" -E "$D/hosts/$h/sshd.log" \
      -o "SetEnv=TMPDIR=$D/hosts/$h/tmp" || ok=0
    daemon_in "$h" "$D/hosts/$h/slurmd.out" "$(command -v slurmd)" -f "$D/hosts/$h/etc/slurm.conf" -N "$h" || ok=0
  done
  if [ "$ok" = 0 ] || ! wait_for 90 all_idle "$n"; then
    say "the cluster did not come up ($(idle_nodes)/$n nodes idle); logs:"
    SLURM_CONF="$D/etc/slurm.conf" sinfo -N >&2 2>&1 || true
    dump_logs
    cmd_stop quiet
    die "start failed"
  fi
  say "up in $((SECONDS - t0)) s: $n node(s) idle in partition debug"
  SLURM_CONF="$D/etc/slurm.conf" sinfo >&2
}

# ------------------------------------------------------------------------------------------------
alive() {  # a zombie (exited, not yet reaped by its parent) counts as gone
  local st; st=$(sed 's/.*) //; s/ .*//' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

ns_pids() {  # the live processes in our namespaces, this script (and its callers) excepted
  local h p
  for h in "$@"; do
    for p in $(ip netns pids "$h" 2>/dev/null || true); do
      [ "$p" != $$ ] && [ "$p" != "$BASHPID" ] && alive "$p" && echo "$p"
    done
  done
  return 0
}

kill_hosts() {  # SIGKILL everything in the hosts, again until nothing is left (a job step may be forking)
  local round pids
  for ((round = 0; round < 100; round++)); do
    mapfile -t pids < <(ns_pids "$@"; munged_pids)
    [ ${#pids[@]} -gt 0 ] || return 0
    kill -KILL "${pids[@]}" 2>/dev/null || true
    sleep 0.05
  done
  say "warning: processes still alive in the hosts: ${pids[*]}"
}

munged_pids() {  # our munged: by its pid file, else any munged whose command line names our socket
  local p
  p=$(cat "$D/munge/munged.pid" 2>/dev/null || true)
  if [ -n "$p" ] && grep -qF "$D/munge/munge.socket" "/proc/$p/cmdline" 2>/dev/null; then echo "$p"; return 0; fi
  for p in /proc/[0-9]*; do
    [ "$(cat "$p/comm" 2>/dev/null)" = munged ] || continue
    grep -qF -- "--socket=$D/munge/munge.socket" "$p/cmdline" 2>/dev/null && echo "${p#/proc/}"
  done
  return 0
}

cmd_stop() {
  local quiet=${1:-} h t0=$SECONDS
  need_root
  local hosts; hosts=$(our_netns)
  # every process living in one of our namespaces: daemons, job steps, ranks, ssh sessions. SIGKILL:
  # nothing here has state worth saving, and a slurmd given SIGTERM waits on its job steps.
  # shellcheck disable=SC2086
  kill_hosts $hosts
  for h in $hosts; do ip netns del "$h" 2>/dev/null || true; done
  local l
  for l in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E '^hvdveth' || true); do
    ip link del "$l" 2>/dev/null || true
  done
  ip link show "$BRIDGE" >/dev/null 2>&1 && ip link del "$BRIDGE"
  hosts_remove
  if [ -e "$D/made_run_sshd" ] && [ -d /run/sshd ]; then rmdir /run/sshd 2>/dev/null || true; fi
  if [ -e "$D/made_run_netns" ] && [ -d /run/netns ] && [ -z "$(ls -A /run/netns)" ]; then
    local had_run_mount=0; [ -e /run/mount ] && had_run_mount=1   # umount makes libmount's /run/mount
    while mountpoint -q /run/netns; do umount /run/netns || break; done
    rmdir /run/netns 2>/dev/null || true
    if [ "$had_run_mount" = 0 ]; then rm -f /run/mount/utab /run/mount/utab.lock; rmdir /run/mount 2>/dev/null || true; fi
  fi
  rm -rf "$D"
  [ "$quiet" = quiet ] || say "stopped in $((SECONDS - t0)) s${hosts:+ (hosts: ${hosts//$'\n'/ })}"
}

# ------------------------------------------------------------------------------------------------
cmd_status() {
  local h rc=0
  if [ -z "$(our_netns)" ]; then echo "no cluster running"; return 1; fi
  echo "state: $D   net: $NET.0/24   bridge: $BRIDGE $(ip -br link show "$BRIDGE" 2>/dev/null | awk '{print $2}')"
  for h in $(our_netns | sort -V); do
    local veth; veth=$(veth_of "$h")
    local link; link=$(ip -br link show "$veth" 2>/dev/null | awk '{print $2}')
    local qd; qd=$(tc qdisc show dev "$veth" 2>/dev/null | awk '$2 == "tbf" {for (i = 1; i <= NF; i++) if ($i == "rate") print "slowed to " $(i + 1)}')
    local procs; procs=$(for p in $(ip netns pids "$h" 2>/dev/null); do cat "/proc/$p/comm" 2>/dev/null; done | sort | uniq -c | awk '{printf "%s%s", sep, $2 ($1 > 1 ? "x" $1 : ""); sep=" "}')
    local cpus; cpus=$(cat "$D/hosts/$h/cpus" 2>/dev/null || true)
    printf '%-9s %-13s link %-5s %s %s [%s]\n' "$h" "$(addr_of "$h")" "${link:-?}" "${cpus:+cpus $cpus}" "${qd:+($qd)}" "$procs"
  done
  if [ -n "$(munged_pids)" ]; then echo "munged: running"; else echo "munged: NOT running"; rc=1; fi
  SLURM_CONF="$D/etc/slurm.conf" sinfo -N -l 2>&1 || rc=1
  return $rc
}

cmd_env() {
  echo "export SLURM_CONF=$D/etc/slurm.conf"
  echo "export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"
}

cmd_exec() {
  need_root
  [ $# -ge 2 ] || die "usage: exec HOST CMD..."
  local h=$1; shift
  is_host "$h" || die "no host '$h' (running: $(our_netns | tr '\n' ' '))"
  in_host "$h"
  exec "${IN_HOST[@]}" env "PATH=$D/bin:$PATH:$VENV/bin" "SLURM_CONF=$D/etc/slurm.conf" \
    "TMPDIR=$D/hosts/$h/tmp" OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "$@"
}

tc_both() {  # tc_both HOST OP ARGS...: the same qdisc on the root side of the link and inside the host
  local h=$1 op=$2; shift 2
  tc qdisc "$op" dev "$(veth_of "$h")" "$@"
  tc -n "$h" qdisc "$op" dev eth0 "$@"
}

cmd_slow() {
  need_root
  [ $# = 2 ] || die "usage: slow HOST RATE (e.g. 200mbit, 10mbit)"
  is_host "$1" || die "no host '$1'"
  # burst must hold a whole GSO segment (up to 64 KiB on a veth) or tbf drops it
  local burst=256kb
  tc_both "$1" replace root tbf rate "$2" burst "$burst" latency 50ms
  say "$1: link shaped to $2 both ways"
}

cmd_cut() {
  need_root
  [ $# = 1 ] || die "usage: cut HOST"
  is_host "$1" || die "no host '$1'"
  ip link set "$(veth_of "$1")" down
  say "$1: link down"
}

cmd_heal() {
  need_root
  [ $# = 1 ] || die "usage: heal HOST"
  is_host "$1" || die "no host '$1'"
  tc qdisc del dev "$(veth_of "$1")" root 2>/dev/null || true
  tc -n "$1" qdisc del dev eth0 root 2>/dev/null || true
  ip link set "$(veth_of "$1")" up
  # A node SLURM marked DOWN while cut is not pinged again (it would re-register on its own only
  # minutes later): resume it, as an admin would. A node drained or downed for another reason stays.
  local info; info=$(SLURM_CONF="$D/etc/slurm.conf" scontrol show node "$1" 2>/dev/null || true)
  if [[ "$info" == *"State=DOWN"* && "$info" == *"Reason=Not responding"* ]]; then
    SLURM_CONF="$D/etc/slurm.conf" scontrol update NodeName="$1" State=RESUME && say "$1: resumed in SLURM"
  fi
  say "$1: link restored"
}

usage() { sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

sub=${1:-}
[ $# -gt 0 ] && shift
case "$sub" in
  install) cmd_install "$@" ;;
  start) cmd_start "$@" ;;
  stop) cmd_stop "$@" ;;
  status) cmd_status "$@" ;;
  env) cmd_env "$@" ;;
  exec) cmd_exec "$@" ;;
  slow) cmd_slow "$@" ;;
  cut) cmd_cut "$@" ;;
  heal) cmd_heal "$@" ;;
  -h | --help | help) usage ;;
  *) usage >&2; exit 2 ;;
esac
