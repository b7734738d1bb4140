#!/usr/bin/env bash
# Checks hvdlm's GPU path on one machine with one or more CUDA GPUs, in about 5-10 minutes (most of
# it the first install's Horovod build with NCCL; seconds once cached):
#
#   bash scripts/gpu_check.sh          # logs and runs in a fresh /tmp/hvdlm-gpu-check.*; GPU_CHECK_DIR=... to choose
#
# 1. installs (scripts/install.sh with HVDLM_NCCL=1 unless you set HVDLM_NCCL), then counts the GPUs
#    torch sees (G) and prepares the default corpus with byte tokens;
# 2. trains `--preset mini --precision bf16` for 50 steps on G ranks (`horovodrun -np G`, one rank
#    per GPU) under every-step sync with each --compression (none, fp16, bf16, powersgd), under
#    --sync local_sgd, and under --sync diloco with compression none, bf16 and int8 (--sync_every 10),
#    with HVDLM_ALWAYS_EXCHANGE=1: on one GPU every exchange still goes through Horovod's NCCL ops
#    (a one-rank communicator) instead of the alone shortcut;
# 3. `hvdlm sample` from the first run; `hvdlm bench allreduce` over NCCL, 1 KiB to 1 GiB, when G >= 2;
# 4. GPT-2 124M's shape (`--preset gpt2` on GPT-2's tokenizer: tiktoken is installed for it) for 100
#    steps on one GPU, compiled (the GPU default) and not, each beside the bare PyTorch loop of the
#    same model, batch, precision and compile setting (`python -m hvdlm.bench.bare`): tokens/s and
#    MFU are the median of the steps after the first 20 (compilation and warm-up excluded), and the
#    bare loop's row says hvdlm's tokens/s as a fraction of its own.
# It ends with one markdown table (check, status, val loss, tokens/s, MFU/notes) and exits 1 if any
# check failed; each check runs whatever the others did (none without the install and the data).
# Without a GPU it exits 1 at once, with one line on stderr.
# The project has never yet run this on a GPU: a failure may be this script's own mistake.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${HVDLM_VENV:-$ROOT/.venv}

# 0. a GPU, or one line and out ---------------------------------------------------------------
G=0
if command -v nvidia-smi >/dev/null 2>&1; then
  G=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ')
else  # no driver tools: ask torch, if there is one
  PROBE=python3
  [ -x "$VENV/bin/python" ] && PROBE=$VENV/bin/python
  G=$("$PROBE" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null)
fi
if ! [ "${G:-0}" -gt 0 ] 2>/dev/null; then
  echo "gpu_check: no GPU here (nvidia-smi finds none): this script checks hvdlm's GPU path and needs a CUDA GPU" >&2
  exit 1
fi

WORK=${GPU_CHECK_DIR:-$(mktemp -d /tmp/hvdlm-gpu-check.XXXXXX)}
mkdir -p "$WORK/logs" "$WORK/runs"
echo "gpu_check: logs and runs in $WORK"
if [ "$(id -u)" = 0 ]; then  # OpenMPI refuses root unless told (containers)
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi

ROWS=()
FAILED=0
row() {  # check, status, val loss, tokens/s, notes
  ROWS+=("| $1 | $2 | $3 | $4 | $5 |")
  [ "$2" = FAILED ] && FAILED=1
  echo "gpu_check: $1: $2 ${5:+($5)}"
}
report() {
  echo
  echo "| check | status | val loss | tokens/s | MFU/notes |"
  echo "|---|---|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
  exit "$FAILED"
}

# 1. install, GPUs, data -------------------------------------------------------------------------
echo "gpu_check: installing (log: $WORK/logs/install.log) ..."
if HVDLM_NCCL=${HVDLM_NCCL:-1} bash "$ROOT/scripts/install.sh" >"$WORK/logs/install.log" 2>&1; then
  row install ok - - "$(grep -m1 '^\[install\] NCCL:' "$WORK/logs/install.log" | sed 's/^\[install\] //')"
else
  row install FAILED - - "see $WORK/logs/install.log"
  report
fi
export PATH="$VENV/bin:$PATH"
PY=$VENV/bin/python
G=$("$PY" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
if [ "$G" -lt 1 ]; then
  row "torch sees a GPU" FAILED - - "nvidia-smi lists one, torch.cuda.device_count() is 0"
  report
fi
DATA=$WORK/data
if hvdlm prepare --tokenizer byte --out_dir "$DATA" >"$WORK/logs/prepare.log" 2>&1; then
  row prepare ok - - "default corpus, byte tokens; $G GPU(s): $("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))')"
else
  row prepare FAILED - - "see $WORK/logs/prepare.log"
  report
fi

# 2. training on G ranks -------------------------------------------------------------------------
figures() {  # metrics.jsonl -> "val loss|tokens/s|MFU or why none", from the run's summary record
  "$PY" - "$1" <<'EOF'
import math, sys
from hvdlm.metrics import read_jsonl
try:
    s = [r for r in read_jsonl(sys.argv[1], "summary") if r.get("finished")][-1]
except (OSError, IndexError, ValueError):
    sys.exit(print("-|-|no finished summary in metrics.jsonl"))
v = s.get("val_loss")
val = f"{v:.4f}" if isinstance(v, (int, float)) and math.isfinite(v) else "-"
mfu = f"MFU {100 * s['mfu']:.1f}% of {s['mfu_against']}" if "mfu" in s else "no MFU (GPU not in hvdlm.mfu.GPU_PEAKS)"
print(f"{val}|{s['tokens_per_s']:,.0f}|{mfu}")
EOF
}
train() {  # check name, steps, then hvdlm train flags; the run goes to runs/NAME (spaces made dashes)
  local name=$1 steps=$2 dir=${1// /-} rc val tok notes
  shift 2
  echo "gpu_check: $name: $steps steps on $G rank(s) ..."
  horovodrun -np "$G" -H "localhost:$G" hvdlm train --data_dir "$DATA" --out_dir "$WORK/runs/$dir" \
    --max_steps "$steps" --precision bf16 --warmup_steps 10 --eval_interval 0 --sample_tokens 0 \
    --progress false --resume false "$@" >"$WORK/logs/$dir.log" 2>&1
  rc=$?
  IFS='|' read -r val tok notes <<<"$(figures "$WORK/runs/$dir/metrics.jsonl")"
  if [ "$rc" = 0 ] && [ "$val" != - ]; then
    row "$name" ok "$val" "$tok" "$notes"
  else
    row "$name" FAILED "$val" "$tok" "exit $rc; $notes; see $WORK/logs/$dir.log"
  fi
}
export HVDLM_ALWAYS_EXCHANGE=1  # one GPU too: every exchange through Horovod (NCCL), not the alone shortcut
for c in none fp16 bf16 powersgd; do
  train "every_step $c" 50 --preset mini --sync every_step --compression "$c"
done
train "local_sgd none" 50 --preset mini --sync local_sgd --sync_every 10 --compression none
for c in none bf16 int8; do
  train "diloco $c" 50 --preset mini --sync diloco --sync_every 10 --compression "$c"
done

# 3. sampling on the GPU; the allreduce over NCCL ---------------------------------------------------
if hvdlm sample --out_dir "$WORK/runs/every_step-none" --prompt "def " --tokens 100 >"$WORK/logs/sample.log" 2>&1 \
    && [ -s "$WORK/logs/sample.log" ]; then
  row sample ok - - "100 tokens from 'every_step none'"
else
  row sample FAILED - - "see $WORK/logs/sample.log"
fi
bench_figures() {  # allreduce.csv -> "ok|notes" when every Horovod row went over NCCL and none was wrong
  "$PY" - "$1" <<'EOF'
import sys
from hvdlm.bench.output import read_csv
try:
    rows = read_csv(sys.argv[1])
except OSError:
    sys.exit(print("FAILED|no allreduce.csv"))
hv = [r for r in rows if r["backend"] == "horovod"]
if not hv:
    sys.exit(print("FAILED|no horovod rows"))
big, wrong = max(hv, key=lambda r: r["bytes"]), sum(r["wrong"] for r in rows)
ok = all("NCCL" in r["transport"] for r in hv) and not wrong
print(f"{'ok' if ok else 'FAILED'}|horovod ({big['transport']}): {big['busbw_GBps']:.1f} GB/s busbw at "
      f"{big['bytes'] / 2**20:.0f} MiB; {wrong} wrong elements")
EOF
}
if [ "$G" -ge 2 ]; then  # an allreduce benchmark needs 2 ranks (one GPU's NCCL path: the training above)
  echo "gpu_check: bench allreduce on $G ranks ..."
  horovodrun -np "$G" -H "localhost:$G" hvdlm bench allreduce --backends horovod,torch-nccl --device cuda \
    --min_bytes 1K --max_bytes 1G --factor 8 --out_dir "$WORK/bench" --no_plot >"$WORK/logs/bench.log" 2>&1
  rc=$?
  IFS='|' read -r status notes <<<"$(bench_figures "$WORK/bench/allreduce.csv")"
  [ "$rc" = 0 ] || { status=FAILED; notes="exit $rc; $notes; see $WORK/logs/bench.log"; }
  row "bench allreduce" "$status" - - "$notes"
else
  row "bench allreduce" skipped - - "needs 2 GPUs, this machine has 1"
fi

# 4. GPT-2 124M: its tokenizer, one GPU, compiled and not ------------------------------------------
steady() {  # metrics.jsonl -> "tokens/s|MFU": the median over the train records after step 20
  "$PY" - "$1" <<'EOF'
import statistics, sys
from hvdlm.metrics import read_jsonl
try:
    rows = [r for r in read_jsonl(sys.argv[1], "train") if r["step"] > 20]
    tok = statistics.median(r["tokens_per_s"] for r in rows)
except (OSError, ValueError, statistics.StatisticsError):
    sys.exit(print("-|no train records after step 20"))
mfu = [r["mfu"] for r in rows if "mfu" in r]
print(f"{tok:,.0f}|" + (f"MFU {100 * statistics.median(mfu):.1f}% (median after step 20)" if mfu else "no MFU"))
EOF
}
DATA2=$WORK/data-gpt2
if "$PY" -m pip install -q tiktoken >"$WORK/logs/gpt2-prepare.log" 2>&1 \
    && hvdlm prepare --tokenizer gpt2 --out_dir "$DATA2" >>"$WORK/logs/gpt2-prepare.log" 2>&1; then
  for compiled in true false; do
    name="gpt2 124M compile $compiled" dir=gpt2-compile-$compiled
    echo "gpu_check: $name: 100 steps on 1 GPU ..."
    horovodrun -np 1 -H localhost:1 hvdlm train --data_dir "$DATA2" --out_dir "$WORK/runs/$dir" --preset gpt2 \
      --batch_size 8 --max_steps 100 --log_interval 1 --warmup_steps 10 --eval_interval 0 --sample_tokens 0 \
      --progress false --resume false --compile "$compiled" >"$WORK/logs/$dir.log" 2>&1
    rc=$?
    IFS='|' read -r tok notes <<<"$(steady "$WORK/runs/$dir/metrics.jsonl")"
    if [ "$rc" = 0 ] && [ "$tok" != - ]; then row "$name" ok - "$tok" "$notes"
    else row "$name" FAILED - "$tok" "exit $rc; $notes; see $WORK/logs/$dir.log"; fi
    echo "gpu_check: bare PyTorch loop, $name: 100 steps on 1 GPU ..."
    "$PY" -m hvdlm.bench.bare --data_dir "$DATA2" --out_dir "$WORK/runs/bare-$dir" --preset gpt2 \
      --batch_size 8 --max_steps 100 --log_interval 1 --warmup_steps 10 --compile "$compiled" \
      >"$WORK/logs/bare-$dir.log" 2>&1
    rc=$?
    IFS='|' read -r bare_tok bare_notes <<<"$(steady "$WORK/runs/bare-$dir/metrics.jsonl")"
    if [ "$rc" = 0 ] && [ "$bare_tok" != - ]; then
      row "bare PyTorch, $name" ok - "$bare_tok" "hvdlm at $("$PY" -c "import sys; a, b = (float(v.replace(',', '')) \
        if v != '-' else float('nan') for v in sys.argv[1:]); print(f'{a / b:.3f}')" "$tok" "$bare_tok")x the bare loop's tokens/s"
    else row "bare PyTorch, $name" FAILED - "$bare_tok" "exit $rc; see $WORK/logs/bare-$dir.log"; fi
  done
else
  row "gpt2 124M" FAILED - - "tiktoken or prepare --tokenizer gpt2 failed; see $WORK/logs/gpt2-prepare.log"
fi

report
