#!/usr/bin/env bash
# Checkpoint and resume at real size (issue 29): gpt2 and gpt2-medium on byte data (block 32, batch
# 1: CPU steps of seconds, the state at full size), every_step and diloco int8, 2 and 4 ranks, this
# checkout against the code before the change (BEFORE, a checkout of b99866e: its resume runs with
# --watchdog false, since with the watchdog on it ends there, see the first row), the page cache
# dropped before each resume (needs root). One JSON line per run into results.jsonl.
#   bash benchmarks/results/checkpoint-real-size/run.sh BEFORE_CHECKOUT
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
BEFORE=$1
cd "$ROOT"
[ -d data/default ] || .venv/bin/hvdlm prepare --out_dir data/default
bench() {  # label, then checkpoint_bench.py's arguments
  local label=$1; shift
  local out; out=$(mktemp -d /tmp/ckbench.XXXX)
  echo "$label load $(cut -d' ' -f1-3 /proc/loadavg) $(date -u +%T)" >&2
  .venv/bin/python benchmarks/checkpoint_bench.py run --out "$out" --cold "$@" | tail -1 |
    python3 -c "import json,sys; r=json.loads(sys.stdin.read()); r['label']='$label'; r['load']=open('/proc/loadavg').read().split()[:3]; print(json.dumps(r))" >> "$HERE/results.jsonl"
  rm -rf "$out"
}
for np in 2 4; do
  for sync in every_step diloco; do
    bench after --preset gpt2 --np $np --sync $sync --background true
    bench after-sync --preset gpt2 --np $np --sync $sync --background false
    bench before --preset gpt2 --np $np --sync $sync --code "$BEFORE" --watchdog false
  done
done
bench before-watchdog --preset gpt2 --np 2 --sync every_step --code "$BEFORE"
for sync in every_step diloco; do
  bench after --preset gpt2-medium --np 2 --sync $sync --background true
  bench after-sync --preset gpt2-medium --np 2 --sync $sync --background false
done
