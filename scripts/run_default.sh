#!/usr/bin/env bash
# The default job, end to end: install if needed, prepare the embedded corpus, train a tiny GPT
# on 2 ranks with horovodrun (a few minutes on a 2-core machine), print validation loss and a
# sample. Extra arguments go to `hvdlm train` (e.g. --max_steps 100). NP=4 for more ranks.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/install.sh
source .venv/bin/activate
if [ "$(id -u)" = 0 ]; then  # OpenMPI refuses root unless told (containers, CI)
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
[ -f data/default/meta.json ] || hvdlm prepare --out_dir data/default
# --resume false: the demo trains from scratch each time (drop it to continue a run instead).
horovodrun -np "${NP:-2}" hvdlm train --config configs/default.toml --resume false "$@"
