#!/bin/bash
# The whole series: 2-rank cells as two parallel streams (one per corpus), then every 4-rank
# invocation one at a time.
R=/work/main/benchmarks/results/n-ranks-advice
D=/work/main/data/default; S=/work/main/data/second
cell() {  # cell PREFIX RANKS DATA
  $R/run.sh $1-main --ranks $2 --steps 1000 --data_dir $3 --methods none,powersgd,local_sgd,diloco --powersgd_rank 8 --sync_every 50
  $R/run.sh $1-psgd-r4 --ranks $2 --steps 1000 --data_dir $3 --methods powersgd --powersgd_rank 4
  $R/run.sh $1-diloco-h25-tuned --ranks $2 --steps 1000 --data_dir $3 --methods diloco-bf16,diloco-int8 --sync_every 25 --train_args "--outer_lr 1.2 --outer_momentum 0"
}
cell d2 2 $D & cell s2 2 $S & wait
cell d4 4 $D
$R/run.sh d4-lr-old --ranks 4 --steps 1000 --data_dir $D --methods diloco --sync_every 50 --train_args "--lr 0.004"
$R/run.sh d4-lr-new --ranks 4 --steps 1000 --data_dir $D --methods diloco --sync_every 50 --train_args "--lr 0.001"
cell s4 4 $S
echo SERIES DONE
