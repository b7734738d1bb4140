# shellcheck shell=bash
# Shell functions shared by the hvdlm batch templates (train.sbatch, bench_allreduce.sbatch).
# Sourced by them inside the job; nothing here is meant to be edited per run: the knobs are at the
# top of each template. Every failure ends the job at once with one line in its output file,
#   hvdlm: error: <what>; <what to do>
# never a hang until the time limit.

hvdlm_say() { echo "hvdlm: $*"; }
hvdlm_die() {  # hvdlm_die STATUS MESSAGE
  local rc=$1; shift
  echo "hvdlm: error: $*" >&2
  exit "$rc"
}

# ------------------------------------------------------------------------------------------------
# The environment every rank inherits. Each setting says why; each keeps a value you exported
# before sbatch (sbatch passes your environment along).
hvdlm_environment() {
  # OpenMPI refuses to start as root (containers, CI) unless told; never set for other users.
  if [ "$(id -u)" = 0 ]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  fi
  # Output lines reach the job's output file as they are printed, not in 4 KiB blocks at exit.
  export PYTHONUNBUFFERED=1
  # Since SLURM 22.05 srun no longer inherits sbatch's --cpus-per-task: pass it on, so each rank
  # gets (and is bound to) its cores and hvdlm sizes torch's threads to them.
  if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then
    export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK
    # OpenMP/MKL pools of torch and numpy: one per rank's cores, not one per core of the node.
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$SLURM_CPUS_PER_TASK}
  fi
  # OpenMPI's TCP transport and launcher try every interface, including loopback and container
  # bridges that carry the same address on every node (docker0, virbr0): connections to those hang.
  # (An exclude list replaces OpenMPI's default one, so it must name lo itself.) Not with
  # horovodrun, which finds the interfaces all hosts share and passes OpenMPI an include list:
  # both lists at once crash OpenMPI (hvdlm_launch drops these for it).
  if [ -z "${OMPI_MCA_btl_tcp_if_include:-}${OMPI_MCA_btl_tcp_if_exclude:-}" ]; then
    export OMPI_MCA_btl_tcp_if_exclude=lo,docker0,virbr0 OMPI_MCA_oob_tcp_if_exclude=lo,docker0,virbr0
    HVDLM_TCP_EXCLUDE=1
  fi
  # NCCL (GPUs): print its warnings (a fallback from InfiniBand to sockets, a bad NIC) in the job
  # output; NCCL_DEBUG=INFO when you debug a hang. Its bootstrap, too, must avoid loopback and
  # container bridges. On InfiniBand/RoCE NCCL finds the HCAs itself (NCCL_IB_HCA to pick some).
  export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
  export NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-^lo,docker0,virbr0}
  # Horovod: a rank stuck for 60 s makes rank 0 print which ranks the others wait for; after
  # HOROVOD_STALL_SHUTDOWN_TIME_SECONDS the job ends instead of burning the allocation.
  export HOROVOD_STALL_CHECK_TIME_SECONDS=${HOROVOD_STALL_CHECK_TIME_SECONDS:-60}
  export HOROVOD_STALL_SHUTDOWN_TIME_SECONDS=${HOROVOD_STALL_SHUTDOWN_TIME_SECONDS:-600}
}

# ------------------------------------------------------------------------------------------------
# What the job got, and whether hvdlm can run there.
hvdlm_job_start() {
  [ -n "${SLURM_JOB_ID:-}" ] || hvdlm_die 2 "this is a SLURM batch script: submit it with sbatch, not bash"
  cd "${SLURM_SUBMIT_DIR:-.}" || hvdlm_die 2 "cannot enter the submit directory ${SLURM_SUBMIT_DIR}"
  if [ -n "${VENV:-}" ]; then
    [ -f "$VENV/bin/activate" ] || hvdlm_die 2 "VENV=$VENV is not a virtual environment (no bin/activate)"
    # shellcheck disable=SC1091
    source "$VENV/bin/activate"
  fi
  hvdlm_environment
  local restarts=""
  [ "${SLURM_RESTART_COUNT:-0}" != 0 ] && restarts=", restart ${SLURM_RESTART_COUNT}"
  hvdlm_say "job ${SLURM_JOB_ID} (${SLURM_JOB_NAME}${restarts}) on ${SLURM_JOB_NUM_NODES} node(s)" \
    "${SLURM_JOB_NODELIST}: ${SLURM_NTASKS} task(s) (${SLURM_TASKS_PER_NODE} per node)," \
    "launcher ${LAUNCHER}; started $(date '+%F %T')"
  hvdlm_check_nodes
}

# Every node must find hvdlm and the Python packages behind it (a node-local install, a module not
# loaded, a venv not on the shared filesystem): one srun task per node checks, in about a second.
hvdlm_check_nodes() {
  local out rc=0
  # shellcheck disable=SC2016  # expanded on each node
  out=$(srun --nodes="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 --ntasks="$SLURM_JOB_NUM_NODES" \
    --mpi=none --kill-on-bad-exit=0 --overlap bash -c '
    host=$(hostname)
    if ! exe=$(command -v hvdlm); then
      echo "MISSING $host: no hvdlm command on PATH=$PATH"; exit 1
    fi
    py=$(sed -n "1s/^#! *//p" "$exe"); py=${py:-python3}
    $py -c "
import importlib.util as u, sys
missing = [m for m in (\"hvdlm\", \"torch\", \"horovod.torch\", \"mpi4py\") if u.find_spec(m.split(\".\")[0]) is None]
if missing:
    print(\"MISSING $host: python \" + sys.executable + \" lacks \" + \", \".join(missing)); sys.exit(1)
" || exit 1' 2>&1) || rc=$?
  if [ "$rc" != 0 ]; then
    local missing; missing=$(grep '^MISSING ' <<<"$out" | sed 's/^MISSING //' | sort | sed 's/$/;/' | paste -sd ' ' - | sed 's/;$//')
    [ -n "$missing" ] || missing="srun could not run a check on every node: $(tail -n 3 <<<"$out" | paste -sd ' ' -)"
    hvdlm_die 2 "hvdlm is not installed on every node of the job ($missing); install it where all nodes see it" \
      "(bash scripts/install.sh on the shared filesystem) and set VENV in the template, or activate it before sbatch"
  fi
}

hvdlm_check_data() {  # hvdlm_check_data DIR
  [ -d "$1" ] || hvdlm_die 2 "data_dir $1 does not exist (from $(pwd)): prepare it first with" \
    "\`hvdlm prepare FILES... --out_dir $1\` or set DATA_DIR in the template"
  [ -f "$1/meta.json" ] || hvdlm_die 2 "data_dir $1 has no meta.json: it was not written by \`hvdlm prepare\`" \
    "(or preparing it did not finish); run \`hvdlm prepare FILES... --out_dir $1\`"
}

# ------------------------------------------------------------------------------------------------
# Launching: srun (SLURM starts the ranks, MPI wires up through PMIx or PMI2), or horovodrun with the
# allocation's hosts (it reaches the other nodes over ssh).

# "host1:2,host2:2" from the allocation, for horovodrun -H
hvdlm_host_slots() {
  local hosts counts=() item n reps i out=() j=0
  mapfile -t hosts < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
  # SLURM_TASKS_PER_NODE looks like "2(x3),1": 2 tasks on each of 3 nodes, then 1
  IFS=, read -ra items <<<"$SLURM_TASKS_PER_NODE"
  for item in "${items[@]}"; do
    n=${item%%(*}; reps=1
    [[ "$item" == *"(x"* ]] && reps=${item#*(x} && reps=${reps%)}
    for ((i = 0; i < reps; i++)); do counts+=("$n"); done
  done
  for ((j = 0; j < ${#hosts[@]}; j++)); do out+=("${hosts[$j]}:${counts[$j]:-1}"); done
  (IFS=,; echo "${out[*]}")
}

# hvdlm_launch ARGS...: run `hvdlm ARGS...` on every task of the allocation, in the background;
# sets HVDLM_LAUNCHER_PID. Use hvdlm_wait to wait for it.
hvdlm_launch() {
  case "$LAUNCHER" in
    srun)
      # --wait: once one rank has ended, the others get SRUN_WAIT seconds to end too, then srun
      #   ends them: a rank that crashes does not leave the rest in an allreduce until the time
      #   limit. Not --kill-on-bad-exit: it would also kill ranks still shutting down after one
      #   rank's exit status 75 (stopped with a checkpoint), which is not a failure.
      srun --mpi="$SRUN_MPI" --kill-on-bad-exit=0 --wait="${SRUN_WAIT:-60}" hvdlm "$@" &
      ;;
    horovodrun)
      local slots; slots=$(hvdlm_host_slots)
      hvdlm_say "horovodrun -np $SLURM_NTASKS -H $slots ${HOROVODRUN_ARGS:-}"
      local drop=()
      [ "${HVDLM_TCP_EXCLUDE:-}" = 1 ] && drop=(-u OMPI_MCA_btl_tcp_if_exclude -u OMPI_MCA_oob_tcp_if_exclude)
      # shellcheck disable=SC2086  # HOROVODRUN_ARGS is a list of options
      env "${drop[@]}" horovodrun -np "$SLURM_NTASKS" -H "$slots" ${HOROVODRUN_ARGS:-} hvdlm "$@" &
      ;;
    *) hvdlm_die 2 "LAUNCHER=$LAUNCHER: choose srun or horovodrun" ;;
  esac
  HVDLM_LAUNCHER_PID=$!
  HVDLM_LAUNCH_TIME=$(date +%s)
}

# Wait for the launcher; a trapped signal interrupts `wait`, so wait again until it has exited.
# Sets HVDLM_RC to its exit status.
hvdlm_wait() {
  HVDLM_RC=0
  while :; do
    # shellcheck disable=SC2034  # read by the templates
    wait "$HVDLM_LAUNCHER_PID" && HVDLM_RC=0 || HVDLM_RC=$?
    kill -0 "$HVDLM_LAUNCHER_PID" 2>/dev/null || break
  done
}

# True when the training just launched stopped on a signal with a checkpoint: the last record of
# OUT_DIR/metrics.jsonl is this run's summary, with stopped_by set. Needed because horovodrun --gloo
# reports 1 for ranks that all exited with 75, and a launcher may kill ranks still shutting down.
hvdlm_stopped_with_checkpoint() {  # hvdlm_stopped_with_checkpoint OUT_DIR
  local m="$1/metrics.jsonl"
  [ -f "$m" ] && [ "$(stat -c %Y "$m")" -ge "${HVDLM_LAUNCH_TIME:-0}" ] \
    && tail -n 1 "$m" | grep -q '"kind": "summary".*"stopped_by": "SIG'
}

# The hvdlm processes below a pid on this node (for horovodrun, whose ranks are not SLURM tasks).
hvdlm_ranks_below() {
  local p args
  for p in $(pgrep -P "$1" 2>/dev/null); do
    args=$(tr '\0' '\n' <"/proc/$p/cmdline" 2>/dev/null | head -n 2 | sed 's#.*/##' | paste -sd ' ' -)
    case "$args" in hvdlm\ * | python*\ hvdlm) echo "$p" ;; esac
    hvdlm_ranks_below "$p"
  done
}

# Pass a signal on to the ranks. srun forwards what it gets to every task. horovodrun does not:
# signal the ranks it started on this node (rank 0 among them); hvdlm's ranks agree through an
# allreduce, so one rank that hears it stops them all at the same step.
hvdlm_forward_signal() {  # hvdlm_forward_signal SIGNAL
  [ -n "${HVDLM_LAUNCHER_PID:-}" ] || return 0
  case "$LAUNCHER" in
    srun) kill -s "$1" "$HVDLM_LAUNCHER_PID" 2>/dev/null || true ;;
    horovodrun)
      local pids; pids=$(hvdlm_ranks_below "$HVDLM_LAUNCHER_PID")
      # shellcheck disable=SC2086
      if [ -n "$pids" ]; then kill -s "$1" $pids 2>/dev/null || true; fi
      ;;
  esac
}

# ------------------------------------------------------------------------------------------------
# Preflight: a short check of the allocation's links (hvdlm/preflight.py), always over srun: it
# needs MPI (mpi4py) between the ranks whichever launcher trains.
hvdlm_preflight() {  # hvdlm_preflight ARGS... (hvdlm preflight options)
  local rc=0
  hvdlm_say "preflight: checking the links between the ${SLURM_NTASKS} tasks"
  # all ranks reach the same verdict and exit with the same status; --wait as for training
  srun --mpi="$SRUN_MPI" --kill-on-bad-exit=0 --wait="${SRUN_WAIT:-60}" hvdlm preflight "$@" || rc=$?
  if [ "$rc" != 0 ]; then
    hvdlm_die "$rc" "job ${SLURM_JOB_ID}: preflight failed (exit $rc) on ${SLURM_JOB_NODELIST}; nothing was" \
      "trained. The 'hvdlm: error: preflight:' line above names the slow ranks and hosts."
  fi
}
