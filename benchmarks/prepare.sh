#!/usr/bin/env bash
# `hvdlm prepare` (byte and BPE) beside nanoGPT's OpenWebText preparation (Hugging Face `datasets`
# map(num_proc) with the same `tokenizers` BPE, into a np.memmap), on JSONL corpora of growing
# size generated from this machine's text: tokens/s and the peak memory of each whole process tree.
#   bash benchmarks/prepare.sh [SIZES_GB [BPE_SIZES_GB]]   # default 0.6,2.4,6 for both; corpora under /tmp, deleted after
# Writes benchmarks/results/prepare.json. `datasets` is a benchmark-only dependency, installed here.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY="$ROOT/.venv/bin/python"
SIZES=${1:-0.6,2.4,6}
BPE_SIZES=${2:-$SIZES}
WORK=${HVDLM_BENCH_WORK:-/tmp/hvdlm-prepare-bench}
"$PY" -c 'import datasets' 2>/dev/null || "$PY" -m pip install -q --disable-pip-version-check datasets
trap 'rm -rf "$WORK"' EXIT
echo "load before: $(uptime)"
lscpu | grep 'Model name'
"$PY" "$ROOT/benchmarks/prepare_bench.py" --sizes "$SIZES" --bpe_sizes "$BPE_SIZES" --work "$WORK" --json "$ROOT/benchmarks/results/prepare.json"
echo "load after: $(uptime)"
