#!/usr/bin/env bash
# The measured half of `hvdlm plan`'s check: real `hvdlm train` runs on the test cluster
# (slurm/cluster.sh, 1 rank per host, Gloo, global batch 12), every link of the hosts in use shaped
# alike with tc tbf, through `hvdlm bench sync`. check.py sets plan's predictions beside what these
# runs recorded. Needs root and a 4-host cluster (bash slurm/cluster.sh start 4) with nothing else
# running on this machine. From the repository root:
#   bash benchmarks/results/plan/cluster/run.sh OUT MODEL HOSTS GROUP LINKS
#   GROUP: step (every-step methods: 4 steps after 3 of warmup) or periodic (local_sgd/diloco, H=10:
#   two whole periods, steps 10-30); LINKS: bench sync's --links, e.g. free,100mbit:none+powersgd
set -euo pipefail
out=$1 model=$2 hosts=$3 group=$4 links=$5
names=$(seq -s ' ' -f 'hvdnode%g' 1 "$hosts")
list=$(for h in $names; do printf '%s:1,' "$h"; done)
window=4; [ "$group" = periodic ] && window=20
methods=none,fp16,bf16,powersgd; [ "$group" = periodic ] && methods=local_sgd,diloco,diloco-bf16,diloco-int8,diloco-overlap
hvdlm bench sync --hosts "${list%,}" --via 'bash slurm/cluster.sh exec hvdnode1' --controller gloo \
  --preset "$model" --global_batch 12 --steps 31 --warmup 3 --lr_warmup 5 --sync_every 10 --overlap_steps 4 \
  --eval_interval 30 --eval_sequences 4 --poll 0.05 --timeout 1800 --reuse \
  --slow_cmd "for h in $names; do bash slurm/cluster.sh slow \$h {rate}; done" \
  --heal_cmd "for h in $names; do bash slurm/cluster.sh heal \$h; done" \
  --tx_bytes_cmd 'ip netns exec {host} cat /sys/class/net/eth0/statistics/tx_bytes' \
  --methods "$methods" --links "$links" --shaped_window "$window" --out_dir "$out/$model-${hosts}h-$group"
