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
for sync in every_step diloco; do
  bench after --preset gpt2 --np 2 --sync $sync --background true
  bench after-sync --preset gpt2 --np 2 --sync $sync --background false
  bench before --preset gpt2 --np 2 --sync $sync --code "$BEFORE" --watchdog false
done
bench after --preset gpt2 --np 4 --sync every_step --background true
bench after-sync --preset gpt2 --np 4 --sync every_step --background false
# a DiLoCo state above 2 GiB (GPT-2's shape 1.5x wider); no background copy: 4 ranks of it fill 24 GiB
bench after-sync --preset gpt2 --np 2 --sync diloco --background false --extra="--n_embd 1152"
bench after-sync --preset gpt2 --np 4 --sync diloco --background false --extra="--n_embd 1152" --steps 3  # did not fit: 4 x 8.2 GB
bench before-watchdog --preset gpt2 --np 2 --sync every_step --code "$BEFORE" --steps 3
bench after-sync --preset gpt2 --np 4 --sync diloco --background false
# (gpt2 diloco with background copies at 4 ranks was left out: ~20 GB of the machine's 23)
bench after --preset gpt2-medium --np 2 --sync every_step --background true
bench after-sync --preset gpt2-medium --np 2 --sync every_step --background false
bench after-sync --preset gpt2-medium --np 2 --sync diloco --background false --steps 3
bench after-sync --preset gpt2 --np 4 --sync every_step --background false --extra="--n_embd 1152" --steps 3
bench after --preset gpt2 --np 2 --sync every_step --background true --extra="--compression powersgd"
