#!/usr/bin/env bash
# Interleaved: before (HEAD's hvdlm, /tmp/vocabpad-before) and after (this working tree), mini shape, fp32, 2 threads.
cd /tmp/vocabpad
PY=/work/main/.venv/bin/python
echo "# $(date -u) $(grep -m1 'model name' /proc/cpuinfo) | $(uptime)"
for rep in 1 2; do
  for vocab in 256 50257; do
    PYTHONPATH=/tmp/vocabpad-before $PY /tmp/vocabpad/bench_loss.py before $vocab 8 6
    PYTHONPATH=/work/main $PY /tmp/vocabpad/bench_loss.py after $vocab 8 6 64
    [ $vocab = 50257 ] && PYTHONPATH=/work/main $PY /tmp/vocabpad/bench_loss.py after-unpadded $vocab 8 6 1
  done
  echo "# rep $rep done $(date -u +%T) | $(uptime)"
done
