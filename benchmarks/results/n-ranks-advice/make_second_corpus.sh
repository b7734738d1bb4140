#!/bin/bash
# The second corpus: the English man pages of sections 1, 5, 7 and 8 on this machine (gcloud's
# 16,631 generated pages left out), rendered to plain text with man/groff at 80 columns, one file
# per page (= one document), under /work/main/data/second-src; then tokenized by bytes into
# /work/main/data/second.
set -euo pipefail
src=/work/main/data/second-src
rm -rf "$src"; mkdir -p "$src"
find /usr/share/man/man1 /usr/share/man/man5 /usr/share/man/man7 /usr/share/man/man8 -maxdepth 1 -type f -name '*.gz' \
    ! -name 'gcloud*' | LC_ALL=C sort | while read -r f; do
  out="$src/$(basename "$(dirname "$f")")-$(basename "$f" .gz).txt"
  (cd /usr/share/man && MANWIDTH=80 LC_ALL=C.UTF-8 man -l -E UTF-8 -P cat "$f" 2>/dev/null | col -bx > "$out") || true
  [ -s "$out" ] || rm -f "$out"
done
echo "pages: $(ls "$src" | wc -l), bytes: $(cat "$src"/* | wc -c)"
