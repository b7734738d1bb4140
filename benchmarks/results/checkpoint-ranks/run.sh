#!/usr/bin/env bash
# The main checkpoint's size and each rank's peak memory above its resting RSS during a checkpoint
# save, under --sync diloco at 2 and 4 ranks, for hvdlm at CODE (a checkout) with the `mini` preset.
#   bash benchmarks/results/checkpoint-ranks/run.sh /path/to/checkout LABEL
# Memory: tests/sync_probe.py checkpoint_memory (resets the kernel's high-water mark before each
# save, reads VmHWM after it). Loss and speed are not measured: the figures do not depend on load.
set -euo pipefail
CODE=$1 LABEL=$2
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 PYTHONPATH=$CODE
for np in 2 4; do
  out=$(mktemp -d)
  "$ROOT/.venv/bin/horovodrun" -np $np --gloo "$ROOT/.venv/bin/python" "$ROOT/tests/sync_probe.py" checkpoint_memory \
    "$out/peaks" -- --data_dir "$ROOT/data/default" --out_dir "$out/run" --preset mini --block_size 64 \
    --global_batch_size 4 --batch_size 1 --max_steps 2 --eval_interval 0 --eval_sequences 4 --progress false \
    --sample_tokens 0 --sync diloco --sync_every 2 --checkpoint_interval 1 --keep_checkpoints 1 >"$out/log" 2>&1
  python3 - "$out" $np "$LABEL" <<'PY'
import json, os, sys
out, np, label = sys.argv[1], int(sys.argv[2]), sys.argv[3]
peaks = [max(json.load(open(f"{out}/peaks.{r}"))) for r in range(np)]
ranks = os.path.join(out, "run", "ranks")
own = sum(os.path.getsize(os.path.join(ranks, f)) for f in os.listdir(ranks) if f.startswith("step00000002")) / np if os.path.isdir(ranks) else 0
print(json.dumps({"code": label, "ranks": np, "main_MB": round(os.path.getsize(f"{out}/run/checkpoint.pt") / 2**20, 2),
                  "rank_file_MB_each": round(own / 2**20, 2),
                  "peak_MB_by_rank": [round(p, 1) for p in peaks]}))
PY
  rm -rf "$out"
done
