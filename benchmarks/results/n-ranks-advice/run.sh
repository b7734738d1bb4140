#!/bin/bash
# run.sh NAME ARGS... : one `hvdlm bench sync` invocation into $R/NAME, logged; appends the exact
# command to commands.txt. Runs the code of commit HEAD (snapshot in /work/snap, via PYTHONPATH)
# so that the other engineer's live edits of hvdlm/ cannot change the code under a running series.
R=/work/main/benchmarks/results/n-ranks-advice
name=$1; shift
source /work/main/.venv/bin/activate
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 PYTHONPATH=/work/snap
cmd=(nice -n 10 hvdlm bench sync --preset tiny --block_size 128 --global_batch_size 12 --lr_warmup 50 --eval_interval 50 \
     --eval_sequences 64 --threads 1 --out_dir "$R/$name" "$@")
printf '%s\n' "cd /work/main && OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 PYTHONPATH=/work/snap $(printf '%q ' "${cmd[@]}")" >> "$R/commands.txt"
cd /work/main
start=$(date +%s)
"${cmd[@]}" > "$R/$name.log" 2>&1
rc=$?
echo "rc=$rc seconds=$(( $(date +%s) - start ))" >> "$R/$name.log"
exit $rc
