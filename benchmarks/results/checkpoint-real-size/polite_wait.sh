#!/usr/bin/env bash
#   bash benchmarks/results/checkpoint-real-size/polite_wait.sh BEFORE_CHECKOUT
# Interleaved before (cad43ce: Horovod's spinning synchronize) / after (fa69079: sleep between polls),
# gpt2 every step, a save then a cold resume, 4 and 2 ranks, 2 rounds. One JSON line per run.
cd "$(dirname "$0")/../../.." && BEFORE=${1:?a checkout of cad43ce (before the change)}
OUT=benchmarks/results/checkpoint-real-size/polite-wait.jsonl
for round in 1 2; do
  for np in 4 2; do
    for code in before after; do
      d=$(mktemp -d /tmp/pw.XXXX)
      load=$(cut -d' ' -f1-3 /proc/loadavg)
      extra=(); [ $code = before ] && extra=(--code "$BEFORE")
      .venv/bin/python benchmarks/checkpoint_bench.py run --out $d --cold --preset gpt2 --np $np --sync every_step --background true "${extra[@]}" | tail -1 |
        python3 -c "import json,sys; r=json.loads(sys.stdin.read()); r['label']='$code'; r['round']=$round; r['load_before']='$load'; r['load_after']=open('/proc/loadavg').read().split()[:3]; r['when']='$(date -u +%T)'; print(json.dumps(r))" >> $OUT
      rm -rf $d
    done
  done
done
