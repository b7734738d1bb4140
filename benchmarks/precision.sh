#!/usr/bin/env bash
# fp32 against bf16 autocast, one rank, same model/batch/threads, interleaved (noisy machines):
# the measurement behind `--precision auto`. Prints tokens/s per run and the bf16/fp32 ratio.
#   bash benchmarks/precision.sh [STEPS] [REPEATS]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HVDLM="$ROOT/.venv/bin/hvdlm"
STEPS=${1:-15}
REPEATS=${2:-2}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
DATA=$ROOT/data/default
[ -f "$DATA/meta.json" ] || "$HVDLM" prepare --out_dir "$DATA" >/dev/null

run() {  # preset block batch precision -> tokens/s of the training steps
  local out="$WORK/$1-$4-$RANDOM"
  "$HVDLM" train --data_dir "$DATA" --out_dir "$out" --preset "$1" --block_size "$2" --batch_size "$3" \
    --precision "$4" --max_steps "$STEPS" --warmup_steps 2 --eval_interval 0 --eval_sequences 4 \
    --sample_tokens 0 --progress false >/dev/null
  python3 -c "import json,sys; print(round([json.loads(l) for l in open(sys.argv[1])][-1]['tokens_per_s']))" "$out/metrics.jsonl"
}

printf "%-6s %6s %6s %10s %10s %7s\n" preset block batch fp32_tok/s bf16_tok/s ratio
for r in $(seq "$REPEATS"); do
  for spec in "tiny 128 16" "mini 256 12"; do
    set -- $spec
    a=$(run "$1" "$2" "$3" fp32); b=$(run "$1" "$2" "$3" bf16)
    printf "%-6s %6s %6s %10s %10s %7.2f\n" "$1" "$2" "$3" "$a" "$b" "$(python3 -c "print($b/$a)")"
  done
done
