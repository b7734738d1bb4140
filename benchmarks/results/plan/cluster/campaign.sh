#!/usr/bin/env bash
# The runs behind RESULTS.md's "hvdlm plan against the test cluster", in the order they were run
# (the most informative first). A run that fails is logged and the campaign goes on.
cd "$(dirname "$0")/../../../.."
r=benchmarks/results/plan/cluster/run.sh out=benchmarks/results/plan/cluster/runs
S=none+fp16+bf16+powersgd P=local_sgd+diloco+diloco-bf16+diloco-int8+diloco-overlap
go() { echo "== $(date -u +%T) $*"; bash $r $out "$@" || echo "== FAILED: $*"; }
for h in 2 4 3; do
  go tiny $h step "free:$S,1gbit:$S,100mbit:$S,10mbit:$S"
  go tiny $h periodic "free:$P,1gbit:$P,100mbit:$P,10mbit:$P"
  [ $h = 3 ] && continue
  # mini every step at 10 Mbit/s: 35-52 s a step (43 MB fp32); its bandwidth term is tiny's
  go mini $h step "free:$S,100mbit:$S,10mbit:powersgd"
  go mini $h periodic "free:$P,100mbit:$P,10mbit:diloco-bf16+diloco-int8"
done
go mini 3 step "free:$S,100mbit:$S,10mbit:powersgd"
go mini 3 periodic "free:$P,100mbit:$P,10mbit:diloco-bf16+diloco-int8"
echo "== $(date -u +%T) done"
