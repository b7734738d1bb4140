#!/usr/bin/env bash
# The test suite: installs what it needs (scripts/install.sh, and the packages of the local SLURM
# test cluster), then runs pytest, including the tests that launch 2 real ranks with horovodrun
# and mpirun and those that run jobs on a 2-node SLURM in network namespaces (root needed).
# Extra arguments go to pytest.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/install.sh
bash slurm/cluster.sh install   # SLURM + munge + sshd for the local multi-node test cluster (needs root)
exec .venv/bin/python -m pytest tests "$@"
