#!/usr/bin/env bash
# exchange_probe.py on the test cluster: 2 and 4 hosts, the link free and shaped (every host alike).
# Needs the 4-host cluster and nothing else running; writes probe.jsonl beside this script.
# HOSTS="2 3 4" LINKS=free OUT=probe-1207.jsonl: other host counts, links, file (the rerun of 2026-12-07).
cd "$(dirname "$0")/../../../.."
out=benchmarks/results/plan/cluster/${OUT:-probe.jsonl}
bin=$(dirname "$(command -v python)")  # the venv's horovodrun and python, on every host (one filesystem)
for hosts in ${HOSTS:-2 4}; do
  names=$(seq -s ' ' -f 'hvdnode%g' 1 "$hosts"); list=$(for h in $names; do printf '%s:1,' "$h"; done)
  for link in ${LINKS:-free 100mbit 10mbit}; do
    for h in $names; do bash slurm/cluster.sh heal $h >/dev/null; done
    [ $link = free ] || for h in $names; do bash slurm/cluster.sh slow $h $link >/dev/null; done
    sizes=64K,8M; [ $link = 10mbit ] && sizes=64K,2M
    bash slurm/cluster.sh exec hvdnode1 "$bin/horovodrun" -np $hosts -H "${list%,}" --gloo \
      "$bin/python" "$PWD/benchmarks/results/plan/cluster/exchange_probe.py" --sizes $sizes --label "$hosts hosts $link" \
      | sed -n 's/^\[0\]<stdout>://p' >> $out
  done
  for h in $names; do bash slurm/cluster.sh heal $h >/dev/null; done
done
