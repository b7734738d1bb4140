#!/usr/bin/env bash
#   bash benchmarks/results/checkpoint-real-size/interleaved_resume.sh BEFORE_CHECKOUT OUT.jsonl NP [NP ...]
# Interleaved before (a checkout given) / after (this one): gpt2 every step, a background save then a
# cold resume, at each NP, 2 rounds. One JSON line per run, appended to OUT.jsonl.
cd "$(dirname "$0")/../../.." && BEFORE=${1:?a checkout of the code before the change} OUT=${2:?OUT.jsonl} && shift 2
for round in 1 2; do
  for np in "$@"; do
    for code in before after; do
      d=$(mktemp -d /tmp/ir.XXXX)
      load=$(cut -d' ' -f1-3 /proc/loadavg)
      extra=(); [ $code = before ] && extra=(--code "$BEFORE")
      .venv/bin/python benchmarks/checkpoint_bench.py run --out $d --cold --preset gpt2 --np $np --sync every_step --background true "${extra[@]}" | tail -1 |
        python3 -c "import json,sys; r=json.loads(sys.stdin.read()); r['label']='$code'; r['round']=$round; r['load_before']='$load'; r['load_after']=open('/proc/loadavg').read().split()[:3]; r['when']='$(date -u +%T)'; print(json.dumps(r))" >> "$OUT"
      rm -rf $d
    done
  done
done
