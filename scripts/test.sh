#!/usr/bin/env bash
# The test suite: installs what it needs (scripts/install.sh), then runs pytest, including the
# tests that launch 2 real ranks with horovodrun and mpirun. Extra arguments go to pytest.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/install.sh
exec .venv/bin/python -m pytest tests "$@"
