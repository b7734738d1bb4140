#!/bin/bash
# interleaved rounds: before / after, each one bench train invocation (hvdlm 1 rank, bare, hvdlm 2 ranks MPI, DDP)
set -u
# before = 68310ad (the step as it was), after = fba62db (issue 31's step: no host read between logged
# steps, the stop check read check_lag steps late); each a worktree:
#   git worktree add /tmp/ov/before 68310ad && git worktree add /tmp/ov/after fba62db
for round in 1 2 3; do
  for which in before after; do
    echo "== round $round $which $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
    cd /tmp/ov/$which
    PYTHONPATH=/tmp/ov/$which timeout 900 /work/main/.venv/bin/hvdlm bench train --data_dir /work/main/data/default \
      --preset tiny --block_size 64 --global_batch_size 12 --steps 300 --warmup 5 \
      --runs single,bare,horovod-mpi,ddp --repeats 1 --out_dir /tmp/ov/q-$which-$round --no_plot 2>&1 | tail -12
  done
done
echo "== done $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
