"""Which launcher started this process, read from its environment before Horovod or MPI starts,
and the engine settings hvdlm gives each kind of launch (plain Python, no Horovod).

One place for every caller: the command line (which rank prints an error), Horovod's start-up (a
process no launcher started trains alone: ``unlaunched``), the allreduce benchmark (MPI or not),
the sync modes' cycle and ``hvdlm plan``'s defaults.
"""

from __future__ import annotations

import os

# This process's rank, as each launcher names it: horovodrun, Open MPI, PMIx, PMI (MPICH, srun).
RANK_VARS = ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID")
SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "HOROVOD_SIZE", "PMIX_SIZE", "PMI_SIZE", "SLURM_NTASKS")
# An MPI launcher started us: MPI_COMM_WORLD spans every rank.
MPI_VARS = ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK")
# Variables a launcher (horovodrun, elastic) or the user sets to choose Horovod's engine.
ENGINE_VARS = ("HOROVOD_GLOO_RENDEZVOUS_ADDR", "HOROVOD_ELASTIC", "HOROVOD_CONTROLLER", "HOROVOD_CPU_OPERATIONS")
LAUNCHER_VARS = MPI_VARS + ENGINE_VARS


def _first_number(names: tuple[str, ...], env) -> int | None:
    for var in names:
        if env.get(var, "").isdigit():
            return int(env[var])
    return None


def rank(env=os.environ) -> int:
    """This process's rank (0 without a launcher)."""
    found = _first_number(RANK_VARS, env)
    return 0 if found is None else found


def size(env=os.environ) -> int:
    """How many processes the launcher started (1 without a launcher)."""
    found = _first_number(SIZE_VARS, env)
    return 1 if found is None else found


def mpi(env=os.environ) -> bool:
    """An MPI launcher (mpirun, mpiexec, srun with PMI) started this process."""
    return any(v in env for v in MPI_VARS)


def unlaunched(env=os.environ) -> bool:
    """No launcher started this process, nor chose Horovod's engine: it trains alone for good."""
    return not any(v in env for v in LAUNCHER_VARS) and size(env) <= 1


def name(env=os.environ) -> str | None:
    """Which launcher started this process, in words; None when none did."""
    if "HOROVOD_RANK" in env:
        return "horovodrun (Gloo)" if "HOROVOD_GLOO_RENDEZVOUS_ADDR" in env else "horovodrun"
    if "OMPI_COMM_WORLD_SIZE" in env:
        return "mpirun (Open MPI)"
    if "SLURM_PROCID" in env and "SLURM_STEP_ID" in env:
        return "srun"
    if "PMI_SIZE" in env or "PMIX_RANK" in env:
        return "mpiexec"
    return None


# CPU defaults, measured with `hvdlm bench allreduce` and `hvdlm bench train` (benchmarks/RESULTS.md).
# A setting already in the environment wins.
CPU_DEFAULTS_MPI = {
    # Open MPI busy-polls while a rank waits; on a host whose cores all compute, the polling steals
    # them from the ranks' matmuls. Yielding kept large-message busbw and made runs steady.
    "OMPI_MCA_mpi_yield_when_idle": "1",
    # Horovod's background thread runs one cycle per this many ms. A shorter cycle cuts a lone small
    # allreduce's latency, but in training the thread then wakes thousands of times a second on the
    # cores the ranks compute on; 1 ms kept training throughput at DDP's (benchmarks/RESULTS.md).
    "HOROVOD_CYCLE_TIME": "1",
}


# A process no launcher started trains alone and exchanges nothing. Horovod's Gloo controller starts
# at once where MPI's singleton start takes a noticeable part of a second and leaves an orted daemon
# beside the run; and Horovod's background thread, which wakes every cycle, took a measurable share of
# a tiny model's step at the default cycle (benchmarks/RESULTS.md). hvdlm's collectives return at once
# alone (``distributed.alone``).
SOLO = {"HOROVOD_CONTROLLER": "gloo", "HOROVOD_CPU_OPERATIONS": "gloo", "HOROVOD_CYCLE_TIME": "50"}


# Horovod's background thread negotiates with the other ranks once per cycle even when nothing is
# queued: at a 1 ms cycle that traffic exceeds local_sgd/diloco's own exchange once every H steps
# (measured on the test cluster, benchmarks/RESULTS.md). At 20 ms it is a twentieth of that, and the
# few blocking collectives of a step (the logged loss) wait at most one cycle.
PERIODIC_CYCLE_MS = "20"
