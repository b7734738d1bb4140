#!/usr/bin/env bash
#   bash benchmarks/results/checkpoint-real-size/hash_while_sending.sh BEFORE_CHECKOUT
# interleaved before (72f079c: hash then send) / after (hash while sending), gpt2 every step, cold resume
cd "$(dirname "$0")/../../.." && BEFORE=${1:?a checkout of 72f079c (before the change)}
OUT=benchmarks/results/checkpoint-real-size/hash-while-sending.jsonl
for round in 1 2; do
  for np in 2 4; do
    for code in before after; do
      d=$(mktemp -d /tmp/ov.XXXX)
      load=$(cut -d' ' -f1-3 /proc/loadavg)
      extra=(); [ $code = before ] && extra=(--code "$BEFORE")
      .venv/bin/python benchmarks/checkpoint_bench.py run --out $d --cold --preset gpt2 --np $np --sync every_step --background true "${extra[@]}" | tail -1 |
        python3 -c "import json,sys; r=json.loads(sys.stdin.read()); r['label']='$code'; r['round']=$round; r['load_before']='$load'; r['load_after']=open('/proc/loadavg').read().split()[:3]; r['when']='$(date -u +%T)'; print(json.dumps(r))" >> $OUT
      rm -rf $d
    done
  done
done
