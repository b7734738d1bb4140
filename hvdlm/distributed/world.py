"""Start-up and the environment: ``init()`` starts Horovod, pins a GPU or sizes the CPU threads,
and sets the engine defaults a launch needs (the solo engine for a process no launcher started, the
CPU defaults under MPI). Which launcher started the process is read in ``hvdlm.launcher``."""

from __future__ import annotations

import os
import re
import socket
import sys
from dataclasses import dataclass

import horovod.torch as hvd
import torch

from hvdlm import launcher
from hvdlm.launcher import CPU_DEFAULTS_MPI, SOLO

@dataclass
class World:
    rank: int
    size: int
    local_rank: int
    local_size: int
    host: str
    device: torch.device
    threads: int

    @property
    def is_root(self) -> bool:
        return self.rank == 0


def cores_per_rank(local_size: int) -> int:
    """CPU threads for one rank, from what it may use: the CPUs SLURM gave its task
    (SLURM_CPUS_PER_TASK), else its CPU affinity if a launcher or cpuset narrowed it, else a share
    of the host's cores. Never more than the CPUs it may run on: threads beyond them only fight."""
    try:
        mine = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        mine = os.cpu_count() or 1
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        return min(int(slurm), mine)
    if mine < (os.cpu_count() or mine):
        return mine  # bound by mpirun/srun/taskset to these cores, not shared with the other ranks
    return max(1, mine // local_size)


_solo = False  # set by init(): no launcher started this process, so its world is 1 rank for good
# A check's switch (scripts/gpu_check.sh): exchange through Horovod even at one rank, so that one
# GPU runs every exchange path over NCCL (a one-rank communicator) instead of the alone shortcut.
ALWAYS_EXCHANGE = "HVDLM_ALWAYS_EXCHANGE"
_always_exchange = False  # read by init()


def solo_engine(env=os.environ) -> dict:
    """Set SOLO (where unset) for a process no launcher started; returns what was set."""
    if not launcher.unlaunched(env):
        return {}
    applied = {k: v for k, v in SOLO.items() if k not in env}
    env.update(applied)
    return applied


def apply_cpu_defaults(env=os.environ) -> dict:
    """Set CPU_DEFAULTS_MPI where unset (not under Gloo or on GPUs, not for a single process);
    returns what was set."""
    if torch.cuda.is_available() or env.get("HOROVOD_GLOO_RENDEZVOUS_ADDR") or env.get("HOROVOD_CONTROLLER") == "gloo":
        return {}
    if launcher.size(env) <= 1:
        # Alone there is nothing to exchange (SOLO's slow cycle applies): a fast cycle only wakes
        # Horovod's thread on the cores the model computes on.
        return {}
    applied = {k: v for k, v in CPU_DEFAULTS_MPI.items() if k not in env}
    env.update(applied)
    return applied


def init(threads: int = 0, cycle_ms: str | None = None) -> World:
    """Step 1: start Horovod; pin one GPU per local rank, or split this host's cores on CPUs.
    ``cycle_ms``: Horovod's cycle the sync mode runs at (``sync.Mode.cycle_ms``; slower where ranks
    exchange once in many steps), unless the user set one."""
    if cycle_ms is not None:
        os.environ.setdefault("HOROVOD_CYCLE_TIME", cycle_ms)
    global _solo, _always_exchange
    _always_exchange = os.environ.get(ALWAYS_EXCHANGE) == "1"
    _solo = launcher.unlaunched()  # before solo_engine() sets Horovod's engine variables
    applied = solo_engine()
    apply_cpu_defaults()  # before hvd.init(): MPI and Horovod read them there
    hvd.init()
    for name in applied:  # read: a launcher this process starts (a benchmark, a test) must not inherit them
        os.environ.pop(name)
    if torch.cuda.is_available():
        torch.cuda.set_device(hvd.local_rank() % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
        if hvd.rank() == 0 and not alone() and not hvd.nccl_built():
            print(NO_NCCL, file=sys.stderr, flush=True)
    else:
        device = torch.device("cpu")
    # Ranks on one host share its cores: oversubscribing them (torch defaults to all cores in every
    # rank) makes each rank's matmuls fight the others' and Horovod's background thread.
    n = threads or cores_per_rank(hvd.local_size())
    torch.set_num_threads(n)
    return World(hvd.rank(), hvd.size(), hvd.local_rank(), hvd.local_size(),
                 socket.gethostname(), device, n)


NO_NCCL = ("hvdlm: warning: this Horovod was built without NCCL: every CUDA gradient goes through host memory "
           "and MPI/Gloo, several times slower; rebuild it on a GPU node with `HVDLM_NCCL=1 bash scripts/install.sh`")


def rank() -> int:
    return hvd.rank()


def alone() -> bool:
    """One rank: the collectives below return at once instead of waiting for Horovod's next cycle
    (long when this process trains alone: SOLO). A process no launcher started needs no call to
    hvd.size(), which is not free (elastic worlds change size, so they ask)."""
    return not _always_exchange and (_solo or hvd.size() == 1)


def size() -> int:
    return hvd.size()


def world_now(world: World) -> World:
    """This rank's place after an elastic reset (rank, size and local rank may all have changed)."""
    return World(hvd.rank(), hvd.size(), hvd.local_rank(), hvd.local_size(), world.host, world.device,
                 world.threads)


def is_peer_failure(exc: BaseException) -> bool:
    """True when a collective failed because another rank died or left (its own message says why)."""
    from horovod.common.exceptions import HorovodInternalError

    return isinstance(exc, HorovodInternalError)


def gloo_timeout_ms(exc: BaseException) -> int | None:
    """The timeout Gloo gave up after, when that is why a collective failed (no rank died: one
    exchange took longer than HOROVOD_GLOO_TIMEOUT_SECONDS, e.g. a large one on a slow link)."""
    found = re.search(r"Timed out waiting (\d+)ms for (send|recv)", str(exc))
    return int(found.group(1)) if found and is_peer_failure(exc) else None


def allreduce_transport(device: torch.device) -> str:
    """What Horovod's allreduce runs over here: NCCL for GPU tensors (when built with it), else
    Gloo or MPI, as this launch chose."""
    if device.type == "cuda" and hvd.nccl_built():
        return "NCCL"
    return "Gloo" if hvd.gloo_enabled() else "MPI"
