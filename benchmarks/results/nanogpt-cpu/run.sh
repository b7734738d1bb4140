#!/usr/bin/env bash
# The runs behind RESULTS' "hvdlm's default against nanoGPT's CPU default" (issue 31): two rounds on
# the stdlib corpus (bytes), one on a second corpus (Debian's copyright files, characters), then
# benchmarks/precision.sh's fp32/bf16 pairs at tiny's and mini's widths. Run alone on the machine.
#   bash benchmarks/results/nanogpt-cpu/run.sh [STEPS]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
HERE=$ROOT/benchmarks/results/nanogpt-cpu
STEPS=${1:-250}
cd "$ROOT"
{ lscpu | grep -E 'Model name'; lscpu | grep -o -E 'avx512_bf16|amx_bf16|avx2' | sort -u | tr '\n' ' '; echo; uptime; } > "$HERE/machine.txt"
if [ ! -f /tmp/data-doc-char/meta.json ]; then
  mkdir -p /tmp/corpus2
  for d in /usr/share/doc/*; do [ -f "$d/copyright" ] && cp "$d/copyright" "/tmp/corpus2/$(basename "$d").txt"; done
  .venv/bin/hvdlm prepare /tmp/corpus2 --tokenizer char --out_dir /tmp/data-doc-char >/dev/null
fi
.venv/bin/python benchmarks/nanogpt_cpu.py --steps "$STEPS" --rounds 2 2>&1 | tee "$HERE/stdlib-bytes.out"
.venv/bin/python benchmarks/nanogpt_cpu.py --steps "$STEPS" --rounds 1 --data_dir /tmp/data-doc-char 2>&1 | tee "$HERE/doc-char.out"
{ uptime; bash benchmarks/precision.sh 15 1; uptime; } 2>&1 | tee "$HERE/precision.out"
