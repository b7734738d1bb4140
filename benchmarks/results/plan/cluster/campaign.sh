#!/usr/bin/env bash
# The runs behind RESULTS.md's "hvdlm plan against the test cluster", in the order they were run
# (2026-12-03, 14:10-, AMD EPYC, 2 cores; 4 hosts on 2 cores: each rank's compute is its own run's).
# OUT=DIR writes the runs there instead of runs/ (a rerun beside the recorded ones: check.py's --runs).
# A run that fails is logged and the campaign goes on. The mini runs are the slow ones (2.4 s a
# step at 2 hosts, about twice that at 4): mini is measured on fewer links and not at 3 hosts.
cd "$(dirname "$0")/../../../.."
r=benchmarks/results/plan/cluster/run.sh out=${OUT:-benchmarks/results/plan/cluster/runs}
S=none+fp16+bf16+powersgd P=local_sgd+diloco+diloco-bf16+diloco-int8+diloco-overlap
# ONLY=tiny (or mini) runs that model's lines alone (a repeat of the fast part: plan_exposed_check --against).
go() { [ -n "${ONLY:-}" ] && [ "$1" != "$ONLY" ] && return; echo "== $(date -u +%T) $*"; bash $r $out "$@" || echo "== FAILED: $*"; }
if [ "${1:-}" != second ]; then  # the first part (run with --eval_interval 10; see check.py)
  go tiny 2 step "free:$S,1gbit:$S,100mbit:$S,10mbit:$S"
  go tiny 2 periodic "free:$P,1gbit:$P,100mbit:$P,10mbit:$P"
  # mini every step at 10 Mbit/s: 35-52 s a step (43 MB fp32); its bandwidth term is tiny's
  go mini 2 step "free:$S,100mbit:$S,10mbit:powersgd"
fi
go mini 2 periodic "free:local_sgd,100mbit:$P,10mbit:diloco-bf16+diloco-int8"
for h in 4 3; do
  go tiny $h step "free:$S,1gbit:$S,100mbit:$S,10mbit:$S"
  go tiny $h periodic "free:$P,1gbit:$P,100mbit:$P,10mbit:$P"
done
go mini 4 step "100mbit:$S"
go mini 4 periodic "100mbit:diloco+diloco-bf16+diloco-overlap"
# the overlapped rows of the first part again: their evaluation after the sync waited for the slice
go tiny 2 periodic "free:diloco-overlap,1gbit:diloco-overlap,100mbit:diloco-overlap,10mbit:diloco-overlap"
echo "== $(date -u +%T) done"
