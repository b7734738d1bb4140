#!/usr/bin/env bash
#   bash benchmarks/results/checkpoint-real-size/polite_wait.sh BEFORE_CHECKOUT
# Before = cad43ce (Horovod's spinning synchronize), after = fa69079 (sleep between polls), 4 then 2 ranks.
here=$(cd "$(dirname "$0")" && pwd)
exec bash "$here/interleaved_resume.sh" "${1:?a checkout of cad43ce (before the change)}" "$here/polite-wait.jsonl" 4 2
