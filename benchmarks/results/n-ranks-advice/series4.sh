#!/bin/bash
# The 4-rank part, cut to fit the session (the lead's decision, replacing series.sh's 4-rank cells,
# which would have run past the session; PowerSGD rank 4 was
# cut from the 2-rank cells too): the settings the README recommends and their baseline,
# on both corpora, and the old against the new inner lr. Started once the 2-rank cells are done.
R=/work/main/benchmarks/results/n-ranks-advice
D=/work/main/data/default; S=/work/main/data/second
while [ ! -e $R/d4-main.log ]; do sleep 10; done
kill 18833 2>/dev/null; sleep 1; pkill -f "n-ranks-advice/d4-main"; sleep 5; rm -rf $R/d4-main $R/d4-main.log
$R/run.sh d4-main --ranks 4 --steps 1000 --data_dir $D --methods none,powersgd --powersgd_rank 8
$R/run.sh d4-diloco-h25-tuned --ranks 4 --steps 1000 --data_dir $D --methods diloco-int8 --sync_every 25 --train_args "--outer_lr 1.2 --outer_momentum 0"
$R/run.sh d4-lr-new --ranks 4 --steps 1000 --data_dir $D --methods diloco --sync_every 50 --train_args "--lr 0.001"
$R/run.sh d4-lr-old --ranks 4 --steps 1000 --data_dir $D --methods diloco --sync_every 50 --train_args "--lr 0.004"
$R/run.sh s4-main --ranks 4 --steps 1000 --data_dir $S --methods none,powersgd --powersgd_rank 8
$R/run.sh s4-diloco-h50 --ranks 4 --steps 1000 --data_dir $S --methods diloco --sync_every 50
echo SERIES4 DONE
