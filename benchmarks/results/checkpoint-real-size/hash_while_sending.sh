#!/usr/bin/env bash
#   bash benchmarks/results/checkpoint-real-size/hash_while_sending.sh BEFORE_CHECKOUT
# Before = 72f079c (hash then send), after = a7621d2 (hash while sending), 2 then 4 ranks.
here=$(cd "$(dirname "$0")" && pwd)
exec bash "$here/interleaved_resume.sh" "${1:?a checkout of 72f079c (before the change)}" "$here/hash-while-sending.jsonl" 2 4
