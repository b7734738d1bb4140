"""Threads per rank come from what the rank may use: SLURM's CPUs per task, then its CPU affinity,
then a share of the host's cores (hvdlm.distributed.cores_per_rank)."""

import os

import pytest

from hvdlm import distributed


@pytest.fixture
def machine(monkeypatch):
    """A machine of ``cores`` cores where this process may run on ``allowed`` of them."""
    def make(cores: int, allowed: int, slurm: str | None = None):
        monkeypatch.setattr(os, "cpu_count", lambda: cores)
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(allowed)))
        if slurm is None:
            monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
        else:
            monkeypatch.setenv("SLURM_CPUS_PER_TASK", slurm)
    return make


@pytest.mark.parametrize("cores, local_size, threads", [(2, 1, 2), (2, 2, 1), (8, 2, 4), (8, 3, 2), (2, 4, 1)])
def test_unpinned_ranks_share_the_cores(machine, cores, local_size, threads):
    machine(cores, cores)
    assert distributed.cores_per_rank(local_size) == threads


def test_a_rank_pinned_to_one_core_runs_one_thread(machine):
    # a test-cluster host (slurm/cluster.sh) on a 2-core machine with 2 hosts: 1 CPU each
    machine(2, 1)
    assert distributed.cores_per_rank(1) == 1
    machine(16, 4)  # mpirun --bind-to socket, srun --cpu-bind: the rank's own cores
    assert distributed.cores_per_rank(4) == 4


def test_slurm_cpus_per_task_comes_first(machine):
    machine(2, 2, slurm="1")  # two hosts' tasks on one 2-core machine, each given 1 CPU
    assert distributed.cores_per_rank(1) == 1
    machine(64, 64, slurm="8")
    assert distributed.cores_per_rank(2) == 8


def test_slurm_cannot_give_more_than_the_affinity_allows(machine):
    machine(8, 2, slurm="4")
    assert distributed.cores_per_rank(1) == 2


@pytest.mark.parametrize("bad", ["", "0", "two"])
def test_an_unusable_slurm_value_is_ignored(machine, bad):
    machine(4, 4, slurm=bad)
    assert distributed.cores_per_rank(2) == 2
