#!/usr/bin/env bash
# Fine-tuning from a pretrained model against training from scratch (issue 22), and the same
# continuation under --sync diloco. `mini` on 2 ranks (horovodrun --gloo), byte tokens.
# Run from the repository root with data/default and data/second prepared (benchmarks/RESULTS.md).
# Usage: bash benchmarks/results/pretrained/run.sh [STEPS [DILOCO_STEPS]]   (runs go to out/pretrained/)
set -euo pipefail
STEPS=${1:-200}
DILOCO_STEPS=${2:-100}
OUT=out/pretrained
RES=benchmarks/results/pretrained
COMMON="--preset mini --batch_size 6 --warmup_steps 50 --eval_sequences 64 --sample_tokens 0 --progress false --tensorboard false"
train() { horovodrun -np 2 --gloo hvdlm train "$@"; }

# 1. Pretrain on the default corpus (the stdlib's Python sources), 300 steps, and export it.
[ -f $OUT/pretrain/checkpoint.pt ] || train $COMMON --data_dir data/default --max_steps 300 --eval_interval 50 \
    --out_dir $OUT/pretrain
[ -f $OUT/export/model.safetensors ] || hvdlm export --out_dir $OUT/pretrain $OUT/export

# 2. On the second corpus (man pages), the same tokens and schedule: continued vs from scratch;
# 3. the same two under DiLoCo (H=50, outer lr 0.7, Nesterov 0.9: the defaults), on the same
#    schedule stopped after DILOCO_STEPS (--stop_after: the machine was shared and time short).
#    All four run at once, 8 ranks on the machine's cores: losses only, no speed.
SECOND="$COMMON --data_dir data/second --max_steps $STEPS --eval_interval 25"
[ -f $OUT/continue/checkpoint.pt ] || train $SECOND --init_from $OUT/export --out_dir $OUT/continue > $OUT/continue.log 2>&1 &
[ -f $OUT/scratch/checkpoint.pt ] || train $SECOND --out_dir $OUT/scratch > $OUT/scratch.log 2>&1 &
train $SECOND --sync diloco --stop_after $DILOCO_STEPS --init_from $OUT/export --out_dir $OUT/continue-diloco \
    > $OUT/continue-diloco.log 2>&1 &
train $SECOND --sync diloco --stop_after $DILOCO_STEPS --out_dir $OUT/scratch-diloco > $OUT/scratch-diloco.log 2>&1 &
wait

hvdlm plot $OUT/continue $OUT/scratch $OUT/continue-diloco $OUT/scratch-diloco --out $RES/loss.png \
    --labels "continued (--init_from),from scratch,continued + diloco,from scratch + diloco" \
    --title "mini on man pages: continued from a model pretrained on Python sources vs from scratch"
for r in pretrain continue scratch continue-diloco scratch-diloco; do
    mkdir -p $RES/runs/$r && cp $OUT/$r/metrics.jsonl $OUT/$r/config.toml $RES/runs/$r/
done
