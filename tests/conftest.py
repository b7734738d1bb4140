"""Fixtures only: a prepared corpus and the local SLURM test cluster. What tests share besides
fixtures lives in tests/support/ (launching ranks, the cluster, the elastic job builder, the
fault kit, /proc, waiting on progress, generated text)."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.cluster import TestCluster


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """The default corpus (the stdlib's sources), byte-tokenized once per test session."""
    from hvdlm.data import prepare

    out = tmp_path_factory.mktemp("corpus") / "data"
    prepare(None, out, tokenizer="byte")
    return out


@pytest.fixture(scope="session")
def _test_cluster():
    c = TestCluster().open()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def slurm_cluster(_test_cluster) -> TestCluster:
    """The local SLURM test cluster (slurm/cluster.sh, 3 hosts), one for the whole session: started
    if none is running, stopped at the end only if this session started it."""
    return _test_cluster.ensure_up()
