"""hvdlm preflight's analysis, without a launcher: the pairing schedule, per-rank figures and the
verdict line; and one real 2-rank run under mpirun, for the settings its allreduce runs under.
(tests/test_slurm.py runs it for real across hosts, with one link slowed.)"""

from __future__ import annotations

import itertools
import json

import pytest

from hvdlm.distributed import apply_cpu_defaults
from hvdlm.errors import HvdlmError
from hvdlm.preflight import Result, Settings, judge, parse_size, rank_figures, tournament


@pytest.mark.parametrize("n", range(2, 10))
def test_tournament_meets_every_pair_once_in_disjoint_rounds(n):
    rounds = tournament(n)
    assert len(rounds) == (n - 1 if n % 2 == 0 else n)
    seen = [p for r in rounds for p in r]
    assert sorted(seen) == sorted(itertools.combinations(range(n), 2))
    for r in rounds:
        ranks = [x for p in r for x in p]
        assert len(ranks) == len(set(ranks)), r  # nobody in two exchanges at once


def result(hosts: list[str], slow_host: str | None, fast=1.0, slow=0.001, allreduce=0.5) -> Result:
    n = len(hosts)
    pairs = {(a, b): {"gbps": slow if slow_host in (hosts[a], hosts[b]) else fast, "min_gbps": 0.0}
             for a, b in itertools.combinations(range(n), 2)}
    res = Result(n, hosts, pairs, rank_figures(n, hosts, pairs), {"busbw_gbps": allreduce})
    return res


def test_a_slow_host_among_three_is_named_alone():
    res = judge(result(["n1", "n2", "n3"], "n2", allreduce=0.002), Settings(min_busbw=0.1))
    assert not res.passed and res.slow == [1]
    assert res.verdict.startswith("rank 1 on n2 is slow: point-to-point 0.001 GB/s (the other ranks: 1 GB/s); "
                                  "allreduce busbw 0.002 GB/s < threshold 0.1 GB/s"), res.verdict
    assert res.verdict.endswith("sbatch --exclude=n2 ..."), res.verdict


def test_ranks_sharing_a_slow_host_are_grouped_and_intra_host_pairs_do_not_count():
    hosts = ["n1", "n1", "n2", "n2", "n3", "n3"]
    res = judge(result(hosts, "n3"), Settings(min_busbw=0.1))
    assert res.slow == [4, 5] and res.verdict.startswith("ranks 4, 5 on n3 are slow"), res.verdict


def test_with_two_hosts_both_ends_are_named():
    res = judge(result(["n1", "n2"], "n2"), Settings(min_busbw=0.1))
    assert res.slow == [0, 1] and "rank 0 on n1 and rank 1 on n2 are slow" in res.verdict
    assert "cannot tell which end" in res.verdict


def test_passes_above_the_thresholds_and_without_any():
    for s in (Settings(min_busbw=0.1), Settings()):
        res = judge(result(["n1", "n2", "n3"], None), s)
        assert res.passed and res.slow == [], res.verdict
    assert "no threshold set" in judge(result(["n1", "n2"], None), Settings()).verdict


def test_slow_allreduce_with_healthy_pairs_fails_and_says_so():
    res = judge(result(["n1", "n2", "n3"], None, allreduce=0.01), Settings(min_busbw=0.1, min_p2p=0.5))
    assert not res.passed and res.slow == []
    assert res.verdict.startswith("allreduce busbw 0.01 GB/s < threshold 0.1 GB/s; no rank stands out")


def test_sizes():
    assert parse_size("4M") == 4 * 2 ** 20 and parse_size("512K") == 512 * 1024 and parse_size("1000") == 1000
    for bad in ("x", "0", "2G"):
        with pytest.raises(HvdlmError):
            parse_size(bad)


# What the README promises ranks under an MPI launcher on CPUs: Horovod's cycle at 1 ms and Open
# MPI yielding while it waits.
DOCUMENTED_CPU_DEFAULTS = {"HOROVOD_CYCLE_TIME": "1", "OMPI_MCA_mpi_yield_when_idle": "1"}


def test_two_ranks_measure_the_allreduce_under_trainings_settings(tmp_path):
    """A real preflight under mpirun: it passes, and its allreduce ran with the CPU defaults that
    training applies (distributed.init), unless the user set them."""
    from support.launch import HVDLM, check, launch, launch_env

    import torch

    env = launch_env()
    # the documented CPU defaults (README): a 1 ms cycle and yielding MPI waits, unless set already
    expected = {} if torch.cuda.is_available() else dict(DOCUMENTED_CPU_DEFAULTS)
    expected.update({k: env[k] for k in DOCUMENTED_CPU_DEFAULTS if k in env})
    out = tmp_path / "pre.json"
    flags = ["preflight", "--size", "64K", "--iters", "3", "--device", "cpu", "--json", str(out)]
    run = check(launch("mpirun", [HVDLM, *flags], timeout=120))
    assert "hvdlm: preflight passed: 2 ranks on 1 host" in run.stdout, run.output
    doc = json.loads(out.read_text())
    assert doc["allreduce"]["correct"] and doc["allreduce"]["backend"] == "horovod (MPI)"
    assert doc["allreduce"]["settings"] == expected
    check(launch("mpirun", ["-x", "HOROVOD_CYCLE_TIME=5", HVDLM, *flags], timeout=120))
    assert json.loads(out.read_text())["allreduce"]["settings"]["HOROVOD_CYCLE_TIME"] == "5"


def test_cpu_defaults_are_for_ranks_under_an_mpi_launcher_not_for_one_process():
    import torch

    alone, two, gloo = {}, {"OMPI_COMM_WORLD_SIZE": "2"}, {"OMPI_COMM_WORLD_SIZE": "2", "HOROVOD_CONTROLLER": "gloo"}
    assert apply_cpu_defaults(alone) == {} and alone == {}
    assert apply_cpu_defaults(gloo) == {}
    expected = {} if torch.cuda.is_available() else DOCUMENTED_CPU_DEFAULTS
    assert apply_cpu_defaults(two) == expected and two == {"OMPI_COMM_WORLD_SIZE": "2", **expected}
    mine = {"OMPI_COMM_WORLD_SIZE": "2", "HOROVOD_CYCLE_TIME": "5"}  # a user's own setting wins
    apply_cpu_defaults(mine)
    assert mine["HOROVOD_CYCLE_TIME"] == "5"
