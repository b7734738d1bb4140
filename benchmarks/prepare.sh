#!/usr/bin/env bash
# `hvdlm prepare` (byte and BPE) beside nanoGPT's OpenWebText preparation (Hugging Face `datasets`
# map(num_proc) with the same `tokenizers` BPE, into a np.memmap), on JSONL corpora of growing
# size generated from this machine's text: tokens/s and the peak memory of each whole process tree.
#   bash benchmarks/prepare.sh [SIZES_GB [BPE_SIZES_GB]]   # default 0.6,2.4,6 for both ("" for none); corpora under /tmp, deleted after
# Writes benchmarks/results/prepare.json. `datasets` is a benchmark-only dependency, installed here into
# $HVDLM_BENCH_SITE (default ~/.cache/hvdlm/bench-site), seen by the baseline's process only.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY="$ROOT/.venv/bin/python"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's hvdlm, whatever the venv has installed
SIZES=${1-0.6,2.4,6}  # "" for none
BPE_SIZES=${2-$SIZES}  # "" for none
WORK=${HVDLM_BENCH_WORK:-/tmp/hvdlm-prepare-bench}
# the baseline's `datasets` (and what it pulls in) in a folder of its own, outside the venv
export HVDLM_BENCH_SITE=${HVDLM_BENCH_SITE:-$HOME/.cache/hvdlm/bench-site}
PYTHONPATH="$HVDLM_BENCH_SITE" "$PY" -c 'import datasets' 2>/dev/null ||
  "$PY" -m pip install -q --disable-pip-version-check --target "$HVDLM_BENCH_SITE" datasets
trap 'rm -rf "$WORK"' EXIT
echo "load before: $(uptime)"
lscpu | grep 'Model name'
"$PY" "$ROOT/benchmarks/prepare_bench.py" --sizes "$SIZES" --bpe_sizes "$BPE_SIZES" --work "$WORK" --json "$ROOT/benchmarks/results/prepare.json"
echo "load after: $(uptime)"
