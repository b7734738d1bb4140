#!/usr/bin/env bash
# The standard allreduce sweep on one workstation: 2 ranks, fp32, in place, 1K..256M, every backend
# plus memcpy, once with Horovod over MPI (mpirun) and once over Gloo (horovodrun --gloo).
# Tables, CSV, JSON and PNG go to benchmarks/results/allreduce-<launcher>/r<N>/, and each figure's
# median over the runs to benchmarks/results/allreduce-<launcher>/median.{md,csv,json,png}.
#
#   bash benchmarks/allreduce.sh            # the standard runs (REPEATS_STD=1 each; minutes)
#   bash benchmarks/allreduce.sh knobs      # Horovod's cycle time and fusion threshold, MPI's yield
#                                           # when idle and core binding, REPEATS times interleaved
#   bash benchmarks/allreduce.sh beside     # raw MPI alone and beside Horovod's background thread
#   bash benchmarks/allreduce.sh all        # both
#
# NP (default 2), REPEATS (knob runs, default 2), REPEATS_STD (standard runs, default 1) and OUT
# (default benchmarks/results) are read from the environment. The machines are shared: each run
# waits for 3 quiet seconds (under QUIET_BUSY=10 % busy, at most QUIET_MAX=900 s) and records the
# load average before and after it.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN="$ROOT/.venv/bin"
export PATH="$BIN:$PATH"
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
NP=${NP:-2}
REPEATS=${REPEATS:-2}
OUT=${OUT:-$ROOT/benchmarks/results}
WHAT=${1:-standard}
STANDARD=(--min_bytes 1K --max_bytes 256M --factor 2 --dtypes fp32 --placement in --warmup 5 --iters 20)
KNOB_SIZES=(--min_bytes 1K --max_bytes 64M --factor 4 --dtypes fp32 --placement in --warmup 5 --iters 20 --no_plot)
busy_percent() {  # how busy the whole machine was over the last second, in percent
  local a b
  read -r -a a < /proc/stat; sleep 1; read -r -a b < /proc/stat
  local total=0 idle=$(( b[4] + b[5] - a[4] - a[5] )) i
  for i in 1 2 3 4 5 6 7 8; do total=$(( total + b[i] - a[i] )); done
  echo $(( total > 0 ? 100 * (total - idle) / total : 0 ))
}
wait_quiet() {  # the machine is shared: start a run only after 3 quiet seconds in a row (at most QUIET_MAX s)
  local waited=0 calm=0
  while [ "$calm" -lt 3 ] && [ "$waited" -lt "${QUIET_MAX:-900}" ]; do
    if [ "$(busy_percent)" -le "${QUIET_BUSY:-10}" ]; then calm=$((calm + 1)); else calm=0; fi
    waited=$((waited + 1))
  done
  [ "$calm" -ge 3 ] || echo "[allreduce.sh] still busy after ${QUIET_MAX:-900}s: measuring anyway" >&2
}
untag() { sed -E 's/^\[[0-9,]+\]<std(out|err)>://'; }  # horovodrun prefixes each line with its rank

standard() {
  # REPEATS_STD runs per launcher, alternating launchers; median.{md,csv,json,png} per launcher hold
  # each figure's median over the runs.
  local rep mdir gdir
  mdir="$OUT/allreduce-mpirun"; gdir="$OUT/allreduce-horovodrun-gloo"
  for rep in $(seq "${REPEATS_STD:-1}"); do
    mkdir -p "$mdir/r$rep" "$gdir/r$rep"
    echo "== mpirun -np $NP: Horovod over MPI, torch.distributed gloo, mpi4py, memcpy (run $rep)"
    wait_quiet
    mpirun -np "$NP" --bind-to none hvdlm bench allreduce "${STANDARD[@]}" --out_dir "$mdir/r$rep" \
      | tee "$mdir/r$rep/table.txt"
    echo "== horovodrun -np $NP --gloo: Horovod over Gloo, torch.distributed gloo, memcpy (run $rep)"
    wait_quiet
    horovodrun -np "$NP" --gloo hvdlm bench allreduce "${STANDARD[@]}" --out_dir "$gdir/r$rep" \
      | untag | tee "$gdir/r$rep/table.txt"
  done
  median "$mdir"
  median "$gdir"
}

median() {  # DIR/r*/allreduce.json -> DIR/median.csv, median.json, median.png and median.md
  "$BIN/python" - "$1" <<'EOF'
import json, sys
from pathlib import Path
from hvdlm.bench import allreduce as ar, report

d = Path(sys.argv[1])
docs = [json.loads(f.read_text()) for f in sorted(d.glob("r*/allreduce.json"))]
meta, rows = ar.median_of_runs(docs)
report.write_csv(d / "median.csv", rows, ar.CSV_FIELDS + ["runs"])
report.write_json(d / "median.json", meta, rows)
ar.plot(rows, meta, d / "median.png")
names = list(dict.fromkeys(r["backend"] for r in rows))
by = {(r["backend"], r["bytes"]): r for r in rows}
lines = [f"Median of {len(docs)} runs ({', '.join(meta['dates'])}): avg time per allreduce, busbw in GB/s in "
         "parentheses; memcpy: bytes copied per second per rank.", "",
         "| size | " + " | ".join(meta["backends"][n]["label"] for n in names) + " |",
         "|---" * (len(names) + 1) + "|"]
for size in sorted({r["bytes"] for r in rows}):
    cells = []
    for n in names:
        r = by.get((n, size))
        if r is None:
            cells.append("-")
            continue
        t = r["time_avg_us"]
        cells.append((f"{t:.1f} us" if t < 1000 else f"{t / 1000:.2f} ms") + f" ({r['busbw_GBps']:.2f})")
    lines.append(f"| {report.human_bytes(size)} | " + " | ".join(cells) + " |")
(d / "median.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
}

knobs() {
  # One setting per run (Horovod reads its settings once, at hvd.init), interleaved over repeats so
  # that drift on the machine spreads over all of them. mpi4py, measured first in each MPI run, is
  # the within-run floor.
  local k="$OUT/allreduce-knobs"
  mkdir -p "$k"
  for rep in $(seq "$REPEATS"); do
    for ct in default 0.1 1 5; do
      for y in 0 1; do
        local flags=() name="mpi-cycle$ct-yield$y-r$rep"
        [ "$ct" = default ] || flags+=(--cycle_time_ms "$ct")
        echo "== $name"; wait_quiet
        mpirun -np "$NP" --bind-to none --mca mpi_yield_when_idle "$y" hvdlm bench allreduce "${KNOB_SIZES[@]}" \
          --backends mpi4py,horovod "${flags[@]}" --out_dir "$k/$name" | tail -n 13
      done
    done
    for ft in 0 1M 16M; do
      local name="mpi-fusion$ft-r$rep"
      echo "== $name"; wait_quiet
      mpirun -np "$NP" --bind-to none hvdlm bench allreduce "${KNOB_SIZES[@]}" --backends mpi4py,horovod \
        --fusion_threshold "$ft" --out_dir "$k/$name" | tail -n 13
    done
    local name="mpi-bindcore-r$rep"
    echo "== $name"; wait_quiet
    mpirun -np "$NP" --bind-to core hvdlm bench allreduce "${KNOB_SIZES[@]}" --backends mpi4py,horovod \
      --out_dir "$k/$name" | tail -n 13
    for ct in default 0.1 1 5; do
      local flags=() name="gloo-cycle$ct-r$rep"
      [ "$ct" = default ] || flags+=(--cycle_time_ms "$ct")
      echo "== $name"; wait_quiet
      horovodrun -np "$NP" --gloo hvdlm bench allreduce "${KNOB_SIZES[@]}" --backends horovod,torch-gloo \
        "${flags[@]}" --out_dir "$k/$name" | untag | tail -n 13
    done
  done
  summarize "$k"
  beside
}

beside() {
  # Raw MPI alone (mpi4py, before hvd.init) and the same calls beside Horovod's background thread
  # (mpi4py-hvd), with MPI's yield when idle off and on: what Horovod's cycle costs everything else.
  local rep y name
  for rep in $(seq "$REPEATS"); do
    for y in 0 1; do
      name="yield$y-r$rep"
      echo "== beside Horovod, $name"; wait_quiet
      mkdir -p "$OUT/allreduce-beside/$name"
      mpirun -np "$NP" --bind-to none --mca mpi_yield_when_idle "$y" hvdlm bench allreduce "${KNOB_SIZES[@]}" \
        --backends mpi4py,mpi4py-hvd,horovod --out_dir "$OUT/allreduce-beside/$name" \
        | tail -n 13 | tee "$OUT/allreduce-beside/$name/summary.txt"
    done
  done
}

summarize() {  # one markdown table: Horovod's time at 1K/64K, busbw at 1M/16M/64M, per setting: the
               # median of the repeats, each repeat in parentheses
  "$BIN/python" - "$1" <<'EOF' | tee "$1/summary.md"
import json, statistics, sys
from collections import defaultdict
from pathlib import Path

runs = defaultdict(list)
for f in sorted(Path(sys.argv[1]).glob("*/allreduce.json")):
    runs[f.parent.name.rsplit("-r", 1)[0]].append(json.loads(f.read_text()))

def pick(doc, backend, size, key):
    return next((r[key] for r in doc["rows"] if r["backend"] == backend and r["bytes"] == size), None)

def med(docs, backend, size, key):
    vals = [v for v in (pick(d, backend, size, key) for d in docs) if v is not None]
    return (statistics.median(vals), vals) if vals else (None, [])

K, M = 1024, 1024 * 1024
print("| setting | runs | Horovod 1K avg (us) | Horovod 1K min (us) | Horovod 64K avg (us) | Horovod 1M busbw | "
      "Horovod 16M busbw | Horovod 64M busbw | baseline 1K (us) | baseline 16M busbw | load (1 min) |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
order = lambda name: (name.startswith("gloo"), name.replace("cycledefault", "cycle!"))
for name, docs in sorted(runs.items(), key=lambda kv: order(kv[0])):
    floor = "mpi4py" if name.startswith("mpi") else "torch-gloo"
    cells = []
    for backend, size, key, fmt in (("horovod", K, "time_avg_us", "{:.0f}"), ("horovod", K, "time_min_us", "{:.0f}"),
                                    ("horovod", 64 * K, "time_avg_us", "{:.0f}"),
                                    ("horovod", M, "busbw_GBps", "{:.2f}"), ("horovod", 16 * M, "busbw_GBps", "{:.2f}"),
                                    ("horovod", 64 * M, "busbw_GBps", "{:.2f}"), (floor, K, "time_avg_us", "{:.0f}"),
                                    (floor, 16 * M, "busbw_GBps", "{:.2f}")):
        m, vals = med(docs, backend, size, key)
        cells.append("-" if m is None else fmt.format(m) + (" (" + "/".join(fmt.format(v) for v in vals) + ")"
                                                             if len(vals) > 1 else ""))
    load = "/".join(f"{d['meta']['loadavg_start'][0]:.1f}" for d in docs if d["meta"].get("loadavg_start"))
    print(f"| {name} | {len(docs)} | " + " | ".join(cells) + f" | {load} |")
EOF
}

case "$WHAT" in
  standard) standard ;;
  knobs) knobs ;;
  all) standard; knobs ;;
  beside) beside ;;
  summarize) summarize "$OUT/allreduce-knobs"; median "$OUT/allreduce-mpirun"; median "$OUT/allreduce-horovodrun-gloo" ;;
  *) echo "usage: $0 [standard|knobs|beside|all|summarize]" >&2; exit 2 ;;
esac
