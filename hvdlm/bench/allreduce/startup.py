"""Start-up: check the launch, measure the MPI floor before Horovod starts, start Horovod and the
other backends, and refuse a sweep that would not fit in memory."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Callable

import torch

from hvdlm.bench import output
from hvdlm.bench.allreduce.backends import Backend, HorovodBackend, MemcpyBackend, Mpi4pyBackend, TorchBackend
from hvdlm.bench.allreduce.measure import measure
from hvdlm.bench.allreduce.results import describe, say
from hvdlm.bench.allreduce.settings import BACKENDS, Settings
from hvdlm.errors import HvdlmError
from hvdlm import launcher as launch_env

NO_LAUNCHER = ("hvdlm bench allreduce measures communication between ranks: launch it with "
               "`horovodrun -np 2 hvdlm bench allreduce ...`, `mpirun -np 2 hvdlm bench allreduce ...` "
               "or `srun -n 2 hvdlm bench allreduce ...`")


@dataclass
class Context:
    """What the run found at start-up: the world, the backends to measure, notes for the reader."""

    rank: int
    size: int
    hosts: list[str]
    device: torch.device
    threads: int
    launcher: str
    backends: list[Backend]  # measured with Horovod running, interleaved by size
    early: list[dict]  # rows measured before Horovod started: mpi4py, the floor
    early_backends: list[Backend]
    notes: list[str]
    meta: dict


def start_mpi(s: Settings, launcher: str, device_type: str, notes: list[str]):
    """mpi4py's module when the sweep wants it and an MPI launcher started us, else None.

    Imported before hvd.init(): mpi4py starts MPI with MPI_THREAD_MULTIPLE, which Horovod's
    background thread needs beside our main thread; Horovod then adopts that MPI and leaves
    finalizing it to mpi4py, after Horovod's own shutdown.
    """
    wanted = s.backends
    names = ["mpi4py"] if wanted is None else [b for b in ("mpi4py", "mpi4py-hvd") if b in wanted]
    if not names:
        return None
    reason = None
    if not launch_env.mpi():
        reason = (f"mpi4py needs an MPI launcher (mpirun, mpiexec, srun with PMI); these ranks were started by "
                  f"{launcher}, so MPI would see a world of 1 rank each")
        hint = "launch with mpirun (or horovodrun --mpi)"
    elif device_type != "cpu":
        reason = "mpi4py is measured on host memory only (CUDA-aware MPI is not assumed)"
        hint = "add --device cpu"
    if reason:
        if wanted is not None:
            raise HvdlmError(f"{reason}: drop {', '.join(names)} from --backends, or {hint}", everywhere=True)
        notes.append(f"mpi4py skipped: {reason}")
        return None
    import mpi4py

    mpi4py.rc.thread_level = "multiple"
    from mpi4py import MPI

    return MPI


def _mpi_agree(comm, fn: Callable[[], None]) -> None:
    """Like distributed.agree, over MPI (Horovod has not started yet)."""
    try:
        fn()
        error = None
    except HvdlmError as e:
        error = str(e)
    errors = comm.allgather(error)
    failed = [r for r, e in enumerate(errors) if e is not None]
    if failed:
        where = "" if len(failed) == len(errors) else f" (on rank {', '.join(map(str, failed))})"
        raise HvdlmError(errors[failed[0]] + where, everywhere=True)


def measure_floor(MPI, s: Settings) -> tuple[list[dict], list[Backend]]:
    """The mpi4py sweep, before Horovod starts: on a host with few cores, Horovod's background
    thread (which runs a coordination collective every cycle, busy-polling under MPI) would
    otherwise take the cores raw MPI needs and the floor would no longer be raw MPI's."""
    from hvdlm.distributed import cores_per_rank

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if size < 2:
        raise HvdlmError("the launcher started 1 rank: an allreduce needs at least 2 "
                         "(e.g. `mpirun -np 2 hvdlm bench allreduce`)", everywhere=True)
    local_size = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size()
    torch.set_num_threads(s.threads or cores_per_rank(local_size))
    _mpi_agree(comm, lambda: check_memory(s, torch.device("cpu"), local_size))
    backend = Mpi4pyBackend(MPI)
    say(rank, f"# measuring {backend.label} first, before Horovod starts ...")
    rows = []
    try:
        for dtype in s.dtypes:
            for placement in s.placements:
                for nbytes in s.sizes:
                    rows.append(measure(backend, nbytes, dtype, placement, s, rank, size, torch.device("cpu"),
                                        lambda stats, key: comm.allgather(stats)))
    finally:
        backend.close()
    return rows, [backend]


def start(s: Settings) -> Context:
    """Check the launch, measure the MPI floor, start Horovod and the other backends."""
    launcher = launch_env.name()
    if launcher is None:
        raise HvdlmError(NO_LAUNCHER, everywhere=True)
    # Horovod reads its settings once, in hvd.init().
    os.environ.update(s.horovod_env)
    wanted = s.backends
    notes: list[str] = []
    device_type = "cuda" if s.device == "cuda" or (s.device == "auto" and torch.cuda.is_available()) else "cpu"

    MPI = start_mpi(s, launcher, device_type, notes)
    early, early_backends = [], []
    if MPI is not None and (wanted is None or "mpi4py" in wanted):
        early, early_backends = measure_floor(MPI, s)

    import horovod.torch as hvd

    from hvdlm import distributed

    world = distributed.init(s.threads)
    if world.size < 2:
        raise HvdlmError(f"{launcher} started 1 rank: an allreduce needs at least 2 "
                         "(e.g. `mpirun -np 2 hvdlm bench allreduce`)", everywhere=True)
    device = torch.device("cpu") if device_type == "cpu" else world.device
    hosts = hvd.allgather_object(socket.gethostname(), name="hvdlm.bench.hosts")
    if MPI is not None and MPI.COMM_WORLD.Get_size() != world.size:  # not expected; but never mix worlds
        raise HvdlmError(f"MPI's world has {MPI.COMM_WORLD.Get_size()} ranks but Horovod's has {world.size}: "
                         "mpi4py cannot be compared here; drop it from --backends", everywhere=True)

    # What this build and launch offer, and why the rest is missing.
    import torch.distributed as dist

    available: dict[str, Callable[[], Backend]] = {"horovod": lambda: HorovodBackend(hvd, device)}
    missing: dict[str, str] = {}
    if dist.is_available() and dist.is_gloo_available():
        if wanted is not None or device.type == "cpu":  # on GPUs, "all" means torch over NCCL
            available["torch-gloo"] = lambda: TorchBackend(dist, "gloo")
    else:
        missing["torch-gloo"] = "this torch has no gloo backend"
    if device.type == "cuda" and dist.is_available() and dist.is_nccl_available():
        available["torch-nccl"] = lambda: TorchBackend(dist, "nccl")
    else:
        missing["torch-nccl"] = ("needs a CUDA GPU and torch with NCCL" if device.type != "cuda"
                                 else "this torch has no NCCL")
    if MPI is not None:
        available["mpi4py-hvd"] = lambda: Mpi4pyBackend(MPI, beside_horovod=True)
    available["memcpy"] = MemcpyBackend

    if wanted is None:
        chosen = [b for b in BACKENDS if b in available]
        if device.type == "cuda" and "torch-nccl" in missing:
            notes.append(f"torch-nccl skipped: {missing['torch-nccl']}")
    else:
        chosen = []
        for b in wanted:
            if b == "torch":
                b = "torch-nccl" if device.type == "cuda" else "torch-gloo"
            if b == "mpi4py":
                continue  # measured already, before Horovod started
            if b not in available:
                offered = [n for n in BACKENDS + ("mpi4py-hvd",)
                           if n in available or (n.startswith("mpi4py") and launch_env.mpi() and device.type == "cpu")]
                raise HvdlmError(f"backend {b} is not available here ({missing.get(b, 'not offered')}); "
                                 f"available: {', '.join(offered)}", everywhere=True)
            if b not in chosen:
                chosen.append(b)

    backends = []
    for name in chosen:
        if name.startswith("torch-"):
            _init_torch_distributed(hvd, dist, name.split("-", 1)[1], world, device)
        backends.append(available[name]())

    # A dtype a backend cannot reduce is skipped with a note; a backend asked for by name that is
    # left with none is an error.
    for b in backends:
        unsupported = [d for d in s.dtypes if not b.supports(d)]
        if unsupported:
            notes.append(f"{b.name} skipped for {', '.join(unsupported)}: not supported by "
                         f"{b.label}{' ' + b.version if hasattr(b, 'version') else ''}")
            if len(unsupported) == len(s.dtypes) and wanted is not None:
                raise HvdlmError(f"{b.name} supports none of the requested dtypes "
                                 f"({', '.join(s.dtypes)})", everywhere=True)

    distributed.agree(lambda: check_memory(s, device, world.local_size))

    meta = describe(s, world, hosts, device, launcher, early_backends + backends)
    return Context(world.rank, world.size, hosts, device, world.threads, launcher, backends, early,
                   early_backends, notes, meta)


def _init_torch_distributed(hvd, dist, backend: str, world, device: torch.device) -> None:
    """torch.distributed beside Horovod: rank 0 opens a TCPStore on a free port and shares its
    address and port through Horovod; world size and ranks are Horovod's."""
    from torch.distributed import TCPStore

    if dist.is_initialized():
        return
    store = None
    payload = None
    if world.rank == 0:
        single_host = hvd.cross_size() == 1
        addr = "127.0.0.1" if single_host else os.environ.get("MASTER_ADDR") or _my_address()
        store = TCPStore(addr, 0, world.size, True, wait_for_workers=False)
        payload = (addr, store.port)
    addr, port = hvd.broadcast_object(payload, root_rank=0, name="hvdlm.bench.tcpstore")
    if store is None:
        store = TCPStore(addr, port, world.size, False)
    if backend == "nccl":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, store=store, rank=world.rank, world_size=world.size)


def _my_address() -> str:
    """An address of this host that other hosts can reach (the one its default route uses)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))  # no packet is sent; it only picks an interface
            return s.getsockname()[0]
    except OSError:
        return socket.gethostbyname(socket.gethostname())


def check_memory(s: Settings, device: torch.device, local_size: int) -> None:
    """The largest message needs about 4 buffers per rank (input, output, Horovod's output, the
    check's mask): refuse a sweep that would not fit rather than swap or be killed."""
    need = 4.5 * s.max_bytes * (local_size if device.type == "cpu" else 1)
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
        where = f"GPU {device.index}"
    else:
        free = _available_memory()
        where = socket.gethostname()
        if free is None:
            return
    if need > free:
        raise HvdlmError(f"--max_bytes {output.human_bytes(s.max_bytes)} needs about {output.human_bytes(need)} "
                         f"on {where} ({local_size} ranks there), but only {output.human_bytes(free)} is free",
                         everywhere=False)


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
