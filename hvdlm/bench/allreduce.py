"""``hvdlm bench allreduce``: allreduce latency and bandwidth per backend, in nccl-tests' terms.

Launched like training (``horovodrun -np 2 hvdlm bench allreduce``, ``mpirun -np 2 ...``,
``srun ...``). For every dtype, placement (in-place, out-of-place) and message size, each backend
runs in turn (interleaved by size, so drift on a shared machine hits them all alike):

  horovod     ``hvd.allreduce_`` (in place) / ``hvd.allreduce``, op Sum, over whatever this launch
              gives Horovod: MPI or Gloo on CPUs (``mpirun`` vs ``horovodrun --gloo``), NCCL on GPUs
  torch-gloo  ``torch.distributed.all_reduce`` over gloo (torch-nccl: over NCCL, GPUs only)
  mpi4py      ``MPI.COMM_WORLD.Allreduce``: raw MPI, the floor to beat (needs an MPI launcher).
              Measured first, before hvd.init(): Horovod's background thread runs a coordination
              collective every cycle (busy-polling under MPI), and on a host with few cores that
              takes the cores raw MPI needs. ``mpi4py-hvd`` (asked for by name) measures the same
              calls beside Horovod, interleaved with the others, to show that cost.
  memcpy      ``dst.copy_(src)`` of the same buffer on every rank at once: the one-host roofline

Timing is synchronous: each call returns with the result in place (GPUs: after a device
synchronize), and each iteration is timed on its own after ``warmup`` untimed ones. A rank's
avg/min/max are over its iterations; the reported avg/min/max are each the largest over ranks.
algbw = bytes / avg and busbw = algbw * 2(n-1)/n, the bytes each rank moves in a ring allreduce;
for memcpy both are bytes copied per second by one rank (while every rank copies).

Correctness: after timing, each rank's buffer is refilled with small integers (element i of rank r
holds (i + r) mod m) whose sum over ranks is exact in every dtype, one more allreduce runs, and
#wrong counts the elements that differ from the expected sum, added over ranks.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from hvdlm.bench import report
from hvdlm.errors import HvdlmError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Every integer from 0 to this is exact in the dtype (so are sums that stay below it).
EXACT_INTEGERS = {"fp32": 2 ** 24, "fp16": 2 ** 11, "bf16": 2 ** 8}
BACKENDS = ("horovod", "torch-gloo", "torch-nccl", "mpi4py", "memcpy")
PLACEMENTS = {"in": "in-place", "out": "out-of-place"}
MAX_BYTES = 2 ** 31  # MPI counts are C ints: 2 GiB keeps fp16/bf16 counts at 2^30
PATTERN_PERIOD = 7  # prime, so a chunk moved by a power-of-two offset changes the values
MPI_LAUNCH_ENV = ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK")
NO_LAUNCHER = ("hvdlm bench allreduce measures communication between ranks: launch it with "
               "`horovodrun -np 2 hvdlm bench allreduce ...`, `mpirun -np 2 hvdlm bench allreduce ...` "
               "or `srun -n 2 hvdlm bench allreduce ...`")
# Horovod settings worth recording with the results (rendezvous variables are left out).
HOROVOD_KNOBS = ("HOROVOD_CYCLE_TIME", "HOROVOD_FUSION_THRESHOLD", "HOROVOD_CACHE_CAPACITY",
                 "HOROVOD_CPU_OPERATIONS", "HOROVOD_CONTROLLER", "HOROVOD_HIERARCHICAL_ALLREDUCE",
                 "HOROVOD_AUTOTUNE", "HOROVOD_MPI_THREADS_DISABLE", "HOROVOD_THREAD_AFFINITY",
                 "HOROVOD_NUM_NCCL_STREAMS", "HOROVOD_BATCH_D2D_MEMCOPIES")


# ---------------------------------------------------------------------------------------------
# Pure helpers (unit-tested without a launcher)

def parse_bytes(text: str | int, what: str = "size") -> int:
    """'64M' -> 67108864; K/M/G (also KB, KiB, ...) are binary, as message sizes usually are."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)(?:i?[bB])?\s*", str(text))
    if not m:
        raise HvdlmError(f"{what} {text!r} is not a byte count (examples: 8, 4K, 64M, 1G)", everywhere=True)
    value = float(m.group(1)) * 1024 ** " KMG".index(m.group(2).upper() or " ")
    if value != int(value):
        raise HvdlmError(f"{what} {text!r} is not a whole number of bytes", everywhere=True)
    return int(value)


def sweep_sizes(min_bytes: int, max_bytes: int, factor: int) -> list[int]:
    """min_bytes, min_bytes*factor, ... up to max_bytes (inclusive)."""
    if min_bytes < 1:
        raise HvdlmError(f"--min_bytes {min_bytes} is out of range: at least 1 byte", everywhere=True)
    if max_bytes > MAX_BYTES:
        raise HvdlmError(f"--max_bytes {max_bytes} ({report.human_bytes(max_bytes)}) is out of range: "
                         f"at most {report.human_bytes(MAX_BYTES)} (MPI element counts are 32-bit)",
                         everywhere=True)
    if min_bytes > max_bytes:
        raise HvdlmError(f"--min_bytes {min_bytes} is larger than --max_bytes {max_bytes}", everywhere=True)
    if factor < 2:
        raise HvdlmError(f"--factor {factor} is out of range: sizes grow by a whole factor of at least 2",
                         everywhere=True)
    sizes, s = [], min_bytes
    while s <= max_bytes:
        sizes.append(s)
        s *= factor
    return sizes


def element_count(nbytes: int, dtype: str) -> int:
    """Elements of ``dtype`` in ``nbytes``; a size that is not a whole number of them is an error."""
    size = DTYPES[dtype].itemsize
    if nbytes % size:
        raise HvdlmError(f"a message of {nbytes} bytes is not a whole number of {dtype} elements "
                         f"({size} bytes each): make --min_bytes a multiple of {size}", everywhere=True)
    return nbytes // size


def algbw(nbytes: float, seconds: float) -> float:
    """Algorithm bandwidth in bytes/s: the message size over the time of one allreduce."""
    return nbytes / seconds if seconds > 0 else float("nan")


def bus_factor(nranks: int) -> float:
    """busbw / algbw for allreduce: each rank sends and receives 2(n-1)/n of the message in a ring."""
    return 2 * (nranks - 1) / nranks


def busbw(algbw_value: float, nranks: int) -> float:
    return algbw_value * bus_factor(nranks)


def pattern_period(nranks: int, dtype: str) -> int:
    """Values 0..m-1 on each rank, so sums stay at most (m-1)*n: exact in the dtype."""
    return max(1, min(PATTERN_PERIOD, EXACT_INTEGERS[dtype] // nranks + 1))


def rank_pattern(rank: int, period: int, dtype: torch.dtype) -> torch.Tensor:
    """One period of rank ``rank``'s values: element i holds (i + rank) mod period."""
    return ((torch.arange(period) + rank) % period).to(dtype)


def expected_pattern(nranks: int, period: int, dtype: torch.dtype) -> torch.Tensor:
    """One period of the sum over ranks (computed in int64, exact, then cast)."""
    i = torch.arange(period)
    return sum((i + r) % period for r in range(nranks)).to(dtype)


def fill_periodic(buf: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """Write ``pattern`` repeated along the flat ``buf`` without a buffer-sized temporary."""
    flat, m = buf.view(-1), pattern.numel()
    pattern = pattern.to(buf.device)
    full = flat.numel() // m * m
    if full:
        flat[:full].view(-1, m).copy_(pattern)
    flat[full:].copy_(pattern[: flat.numel() - full])
    return buf


def count_wrong(result: torch.Tensor, expected: torch.Tensor) -> int:
    """Elements of ``result`` that differ from ``expected`` (the whole tensor, or one period of a
    pattern repeated along it). NaN never equals anything, so it counts as wrong."""
    flat = result.reshape(-1)
    expected = expected.reshape(-1).to(flat.device)
    if expected.numel() == flat.numel():
        return int((flat != expected).sum().item())
    m = expected.numel()
    full = flat.numel() // m * m
    wrong = int((flat[:full].view(-1, m) != expected).sum().item()) if full else 0
    return wrong + int((flat[full:] != expected[: flat.numel() - full]).sum().item())


def time_calls(fn: Callable[[], object], warmup: int, iters: int,
               sync: Callable[[], None] = lambda: None) -> tuple[float, float, float]:
    """(avg, min, max) seconds of one synchronous call of ``fn`` after ``warmup`` untimed calls.
    One clock read per iteration: the iteration times add up to the loop's time exactly."""
    for _ in range(warmup):
        fn()
    sync()
    clock = time.perf_counter
    stamps = [0.0] * (iters + 1)
    stamps[0] = clock()
    for i in range(1, iters + 1):
        fn()
        sync()
        stamps[i] = clock()
    times = [b - a for a, b in zip(stamps, stamps[1:])]
    return sum(times) / len(times), min(times), max(times)


def detect_launcher(env=os.environ) -> str | None:
    """Which launcher started this process, from its environment; None when none did."""
    if "HOROVOD_RANK" in env:
        return "horovodrun (Gloo)" if "HOROVOD_GLOO_RENDEZVOUS_ADDR" in env else "horovodrun"
    if "OMPI_COMM_WORLD_SIZE" in env:
        return "mpirun (Open MPI)"
    if "SLURM_PROCID" in env and "SLURM_STEP_ID" in env:
        return "srun"
    if "PMI_SIZE" in env or "PMIX_RANK" in env:
        return "mpiexec"
    return None


def mpi_launched(env=os.environ) -> bool:
    """True when an MPI launcher started us, so that MPI_COMM_WORLD spans every rank."""
    return any(v in env for v in MPI_LAUNCH_ENV)


# ---------------------------------------------------------------------------------------------
# Settings

@dataclass
class Settings:
    backends: list[str] | None = None  # None: every backend this launch and device offer
    dtypes: list[str] = field(default_factory=lambda: ["fp32"])
    placements: list[str] = field(default_factory=lambda: ["in"])
    min_bytes: int = 4
    max_bytes: int = 64 * 1024 ** 2
    factor: int = 2
    warmup: int = 5
    iters: int = 20
    device: str = "auto"
    threads: int = 0
    horovod_env: dict[str, str] = field(default_factory=dict)
    out_dir: Path = Path("out/bench/allreduce")
    plot: bool = True
    corrupt: bool = False  # tests only: perturb one element of each result before it is checked

    @property
    def sizes(self) -> list[int]:
        return sweep_sizes(self.min_bytes, self.max_bytes, self.factor)

    def validate(self) -> "Settings":
        sizes = self.sizes
        for d in self.dtypes:
            for s in sizes:
                element_count(s, d)
        if self.warmup < 0:
            raise HvdlmError(f"--warmup {self.warmup} is out of range: 0 or more", everywhere=True)
        if self.iters < 1:
            raise HvdlmError(f"--iters {self.iters} is out of range: at least 1", everywhere=True)
        if self.threads < 0:
            raise HvdlmError(f"--threads {self.threads} is out of range: 0 (automatic) or more", everywhere=True)
        if self.device not in ("auto", "cpu", "cuda"):
            raise HvdlmError(f"--device {self.device!r}: choose auto, cpu or cuda", everywhere=True)
        if self.device == "cuda" and not torch.cuda.is_available():
            raise HvdlmError("--device cuda: no CUDA GPU is visible to torch here", everywhere=True)
        for key in self.horovod_env:
            if not key.startswith("HOROVOD_"):
                raise HvdlmError(f"--horovod_env {key}: only HOROVOD_* settings go here", everywhere=True)
        return self


def _choices(text: str, allowed: dict[str, list[str]], what: str) -> list[str] | None:
    """Split a comma list and map aliases; None for 'all'."""
    names = [t.strip().lower() for t in str(text).split(",") if t.strip()]
    if not names:
        raise HvdlmError(f"--{what} is empty: choose from {', '.join(allowed)}", everywhere=True)
    if "all" in names:
        if len(names) > 1:
            raise HvdlmError(f"--{what} {text}: 'all' cannot be combined with other names; give all, or list "
                             "the ones you want", everywhere=True)
        return None
    out: list[str] = []
    for name in names:
        if name not in allowed:
            raise HvdlmError(f"--{what}: unknown {what[:-1] if what.endswith('s') else what} {name!r}; "
                             f"choose from {', '.join(k for k in allowed)} or all", everywhere=True)
        out += [n for n in allowed[name] if n not in out]
    return out


def settings_from_args(args) -> Settings:
    """The CLI's flags, checked the same way on every rank (errors are raised everywhere)."""
    backend_names = {b: [b] for b in BACKENDS + ("mpi4py-hvd", "torch")}
    placement_names = {"in": ["in"], "out": ["out"], "both": ["in", "out"],
                       "in-place": ["in"], "out-of-place": ["out"]}

    def integer(value, flag):
        try:
            return int(str(value))
        except ValueError:
            raise HvdlmError(f"{flag} {value!r} is not a whole number", everywhere=True) from None

    env = {}
    if args.cycle_time_ms is not None:
        try:
            ms = float(args.cycle_time_ms)
        except ValueError:
            raise HvdlmError(f"--cycle_time_ms {args.cycle_time_ms!r} is not a number", everywhere=True) from None
        if not ms > 0:
            raise HvdlmError(f"--cycle_time_ms {ms} is out of range: more than 0", everywhere=True)
        env["HOROVOD_CYCLE_TIME"] = f"{ms:g}"
    if args.fusion_threshold is not None:
        env["HOROVOD_FUSION_THRESHOLD"] = str(parse_bytes(args.fusion_threshold, "--fusion_threshold"))
    for item in args.horovod_env or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise HvdlmError(f"--horovod_env {item!r}: expected HOROVOD_NAME=VALUE", everywhere=True)
        env[key.strip()] = value.strip()

    dtypes = _choices(args.dtypes, {d: [d] for d in DTYPES}, "dtypes") or list(DTYPES)
    placements = _choices(args.placement, placement_names, "placement") or ["in", "out"]
    return Settings(
        backends=_choices(args.backends, backend_names, "backends"),
        dtypes=dtypes,
        placements=placements,
        min_bytes=parse_bytes(args.min_bytes, "--min_bytes"),
        max_bytes=parse_bytes(args.max_bytes, "--max_bytes"),
        factor=integer(args.factor, "--factor"),
        warmup=integer(args.warmup, "--warmup"),
        iters=integer(args.iters, "--iters"),
        device=str(args.device).lower(),
        threads=integer(args.threads, "--threads"),
        horovod_env=env,
        out_dir=Path(args.out_dir),
        plot=not args.no_plot,
        corrupt=bool(getattr(args, "corrupt_for_test", False)),
    ).validate()


# ---------------------------------------------------------------------------------------------
# Backends: each binds a buffer to a zero-argument call that runs one synchronous allreduce

class Backend:
    name = ""
    op = "sum"
    transport = ""
    label = ""

    def supports(self, dtype: str) -> bool:
        return True

    def bind(self, buf: torch.Tensor, out: torch.Tensor | None, key: str) -> Callable[[], torch.Tensor]:
        raise NotImplementedError

    def bus_factor(self, nranks: int) -> float:
        return bus_factor(nranks)

    def close(self) -> None:
        pass


class HorovodBackend(Backend):
    name = "horovod"

    def __init__(self, hvd, device: torch.device):
        import horovod

        self.hvd = hvd
        self.controller = "Gloo" if hvd.gloo_enabled() else "MPI" if hvd.mpi_enabled() else "unknown"
        if device.type == "cuda" and hvd.nccl_built():
            self.ops = "NCCL"
        else:
            ops = os.environ.get("HOROVOD_CPU_OPERATIONS", "").strip().lower()
            self.ops = {"mpi": "MPI", "gloo": "Gloo", "ccl": "CCL"}.get(ops, self.controller)
        self.transport = self.ops if self.ops == self.controller else f"{self.ops} ops, {self.controller} controller"
        self.label = f"horovod ({self.transport})"
        self.version = horovod.__version__
        self._supported: dict[str, bool] = {}
        self._device = device

    def supports(self, dtype: str) -> bool:
        """Horovod 0.28 rejects bf16 in Python, before anything is sent, on every rank alike."""
        if dtype not in self._supported:
            try:
                self.hvd.allreduce(torch.zeros(1, dtype=DTYPES[dtype], device=self._device),
                                   op=self.hvd.Sum, name=f"hvdlm.bench.probe.{dtype}")
                self._supported[dtype] = True
            except (ValueError, TypeError, RuntimeError):
                self._supported[dtype] = False
        return self._supported[dtype]

    def bind(self, buf, out, key):
        hvd = self.hvd
        if out is None:
            return lambda: hvd.allreduce_(buf, op=hvd.Sum, name=key)
        # Horovod's out-of-place allreduce allocates its output; there is no preallocated form.
        return lambda: hvd.allreduce(buf, op=hvd.Sum, name=key)


class TorchBackend(Backend):
    def __init__(self, dist, backend: str):
        self.dist = dist
        self.name = f"torch-{backend}"
        self.transport = backend
        self.label = f"torch.distributed ({backend})"

    def bind(self, buf, out, key):
        dist = self.dist
        if out is None:
            def run():
                dist.all_reduce(buf)
                return buf
        else:  # torch.distributed has no out-of-place allreduce: copy, then reduce in place
            def run():
                out.copy_(buf)
                dist.all_reduce(out)
                return out
        return run

    def close(self):
        if self.dist.is_initialized():
            self.dist.destroy_process_group()


class Mpi4pyBackend(Backend):
    name = "mpi4py"

    def __init__(self, MPI, beside_horovod: bool = False):
        import mpi4py

        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        library = MPI.Get_library_version().strip().splitlines()[0]
        self.library = library.split(",")[0].strip()
        self.transport = self.library
        self.label = f"mpi4py ({self.library})"
        if beside_horovod:  # the same calls while Horovod's background thread cycles
            self.name = "mpi4py-hvd"
            self.label = f"mpi4py beside Horovod ({self.library})"
        self.version = mpi4py.__version__
        # MPI has no 16-bit float type (Open MPI 4): send the bits as uint16 and add them with a
        # user-defined op, which is what Horovod's MPI path does for fp16 too (in C, not Python).
        self.types = {torch.float32: (MPI.FLOAT, MPI.SUM, None)}
        self._user_ops = []
        for dtype in (torch.float16, torch.bfloat16):
            op = MPI.Op.Create(self._adder(dtype), commute=True)
            self._user_ops.append(op)
            self.types[dtype] = (MPI.UINT16_T, op, torch.uint16)

    @staticmethod
    def _adder(dtype: torch.dtype):
        def add(inbuf, inoutbuf, _datatype):
            dst = torch.frombuffer(inoutbuf, dtype=dtype)
            dst.add_(torch.frombuffer(inbuf, dtype=dtype))
        return add

    def bind(self, buf, out, key):
        MPI, comm = self.MPI, self.comm
        mpitype, op, view = self.types[buf.dtype]

        def numpy(t):
            return (t if view is None else t.view(view)).numpy()

        send = [numpy(buf), mpitype]
        if out is None:
            def run():
                comm.Allreduce(MPI.IN_PLACE, send, op=op)
                return buf
        else:
            recv = [numpy(out), mpitype]

            def run():
                comm.Allreduce(send, recv, op=op)
                return out
        return run

    def close(self):
        for op in self._user_ops:
            op.Free()
        self._user_ops = []


class MemcpyBackend(Backend):
    name = "memcpy"
    op = "copy"
    transport = "copy_"
    label = "memcpy (every rank at once)"

    def bind(self, buf, out, key):
        dst = out if out is not None else torch.empty_like(buf)
        return lambda: dst.copy_(buf)

    def bus_factor(self, nranks: int) -> float:
        return 1.0  # bytes copied per second by one rank


# ---------------------------------------------------------------------------------------------
# The run

COLUMNS = [
    report.Column("bytes", "size", 11),
    report.Column("count", "count", 11),
    report.Column("dtype", "type", 5),
    report.Column("op", "redop", 5),
    report.Column("placement", "place", 5),
    report.Column("backend", "backend", 11, align="<"),
    report.Column("time_avg_us", "time avg", 10, "{:.1f}"),
    report.Column("time_min_us", "min", 10, "{:.1f}"),
    report.Column("time_max_us", "max", 10, "{:.1f}"),
    report.Column("algbw_GBps", "algbw", 7, "{:.2f}"),
    report.Column("busbw_GBps", "busbw", 7, "{:.2f}"),
    report.Column("wrong", "#wrong", 6),
]
UNITS = ["(B)", "(elements)", "", "", "", "", "(us)", "(us)", "(us)", "(GB/s)", "(GB/s)", ""]
CSV_FIELDS = ["backend", "transport", "bytes", "count", "dtype", "op", "placement", "time_avg_us",
              "time_min_us", "time_max_us", "algbw_GBps", "busbw_GBps", "wrong", "ranks", "warmup", "iters"]


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


def say(rank: int, text: str = "") -> None:
    if rank == 0:
        print(text, flush=True)


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
    if not mpi_launched():
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
    launcher = detect_launcher()
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
                           if n in available or (n.startswith("mpi4py") and mpi_launched() and device.type == "cpu")]
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
        raise HvdlmError(f"--max_bytes {report.human_bytes(s.max_bytes)} needs about {report.human_bytes(need)} "
                         f"on {where} ({local_size} ranks there), but only {report.human_bytes(free)} is free",
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


# Variables mpirun sets for its own plumbing, not settings a user chose.
OMPI_PLUMBING = ("OMPI_MCA_orte_", "OMPI_MCA_ess", "OMPI_MCA_pmix", "OMPI_MCA_shmem_RUNTIME_QUERY_hint",
                 "OMPI_MCA_initial_wdir", "OMPI_MCA_mpi_oversubscribe")


def _is_knob(name: str) -> bool:
    """Settings that change how the backends perform, worth keeping with the figures."""
    if name in HOROVOD_KNOBS or name.startswith(("GLOO_", "NCCL_")):
        return True
    return name.startswith("OMPI_MCA_") and not name.startswith(OMPI_PLUMBING)


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def describe(s: Settings, world, hosts, device, launcher, backends) -> dict:
    """Everything needed to read or redo the run later (stored in the JSON)."""
    import horovod

    env_knobs = {k: v for k, v in sorted(os.environ.items()) if _is_knob(k)}
    return {
        "benchmark": "allreduce",
        "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "launcher": launcher,
        "ranks": world.size,
        "hosts": sorted(set(hosts)),
        "ranks_per_host": world.local_size,
        "device": str(device),
        "torch_threads_per_rank": world.threads,
        "cpu_count": os.cpu_count(),
        "loadavg_start": _loadavg(),  # a shared machine: other work skews every figure
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "horovod": horovod.__version__,
        "backends": {b.name: {"label": b.label, "transport": b.transport,
                              **({"version": b.version} if hasattr(b, "version") else {})}
                     for b in backends},
        "settings": env_knobs,
        "horovod_defaults": "HOROVOD_CYCLE_TIME and HOROVOD_FUSION_THRESHOLD unset mean Horovod's own defaults",
        "sizes": s.sizes,
        "dtypes": s.dtypes,
        "placements": [PLACEMENTS[p] for p in s.placements],
        "warmup": s.warmup,
        "iters": s.iters,
        "timing": "per-iteration wall time of a synchronous call; avg/min/max over iterations, "
                  "each the max over ranks",
        "busbw": "algbw * 2(n-1)/n for allreduce; memcpy: bytes copied per second per rank",
    }


Gather = Callable[[list, str], list]  # (this rank's stats, a name) -> every rank's stats, on every rank


def measure(backend: Backend, nbytes: int, dtype: str, placement: str, s: Settings, rank: int, size: int,
            device: torch.device, gather: Gather) -> dict:
    """Time one backend at one size, then check its result; returns one row (the same on every rank)."""
    tdtype = DTYPES[dtype]
    count = element_count(nbytes, dtype)
    period = pattern_period(size, dtype)
    mine = rank_pattern(rank, period, tdtype)
    buf = fill_periodic(torch.empty(count, dtype=tdtype, device=device), mine)
    out = torch.empty_like(buf) if placement == "out" else None
    key = f"hvdlm.bench.{backend.name}.{dtype}.{placement}.{nbytes}"
    run = backend.bind(buf, out, key)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    t_avg, t_min, t_max = time_calls(run, s.warmup, s.iters, sync)

    # Correctness: fresh inputs (an in-place sweep has been summing into them), one more call.
    fill_periodic(buf, mine)
    result = run()
    sync()
    if s.corrupt and backend.op == "sum" and rank == size - 1:
        result.view(-1)[count // 2] += 1  # what a broken transport might do to one element
    expected = buf if backend.op == "copy" else expected_pattern(size, period, tdtype)
    wrong = count_wrong(result, expected)
    del result, out, buf, run

    everyone = gather([t_avg, t_min, t_max, float(wrong)], key + ".stats")
    t_avg, t_min, t_max = (max(r[i] for r in everyone) for i in range(3))
    wrong = int(sum(r[3] for r in everyone))
    alg = algbw(nbytes, t_avg)
    return {
        "backend": backend.name, "transport": backend.transport, "bytes": nbytes, "count": count,
        "dtype": dtype, "op": backend.op, "placement": placement,
        "time_avg_us": t_avg * 1e6, "time_min_us": t_min * 1e6, "time_max_us": t_max * 1e6,
        "algbw_GBps": alg / 1e9, "busbw_GBps": alg * backend.bus_factor(size) / 1e9,
        "wrong": wrong, "ranks": size, "warmup": s.warmup, "iters": s.iters,
    }


def horovod_gather(stats: list, key: str) -> list:
    import horovod.torch as hvd

    return hvd.allgather(torch.tensor([stats], dtype=torch.float64), name=key).tolist()


def sweep(ctx: Context, s: Settings) -> list[dict]:
    """Every dtype x placement x size x backend, printing rows on rank 0 as they come; the rows
    measured before Horovod started are printed first at their size."""
    table = report.Table(COLUMNS)
    rows: list[dict] = []
    early = {(r["dtype"], r["placement"], r["bytes"]): [] for r in ctx.early}
    for r in ctx.early:
        early[(r["dtype"], r["placement"], r["bytes"])].append(r)
    for dtype in s.dtypes:
        for placement in s.placements:
            backends = [b for b in ctx.backends if b.supports(dtype)]
            labels = [b.label for b in ctx.early_backends] + [b.label for b in backends]
            if not labels:
                continue
            say(ctx.rank, f"#\n# {dtype}, {PLACEMENTS[placement]}: {', '.join(labels)}")
            say(ctx.rank, table.header(UNITS))
            for nbytes in s.sizes:
                for row in early.get((dtype, placement, nbytes), []):
                    rows.append(row)
                    say(ctx.rank, table.line(row))
                for b in backends:
                    row = measure(b, nbytes, dtype, placement, s, ctx.rank, ctx.size, ctx.device, horovod_gather)
                    rows.append(row)
                    say(ctx.rank, table.line(row))
    return rows


def side_by_side(rows: list[dict], dtype: str, placement: str) -> str | None:
    """Per size: each backend's avg time and busbw, and its time over mpi4py's (the floor)."""
    group = [r for r in rows if r["dtype"] == dtype and r["placement"] == placement]
    if not group:
        return None
    names = list(dict.fromkeys(r["backend"] for r in group))
    by = {(r["backend"], r["bytes"]): r for r in group}
    floor = "mpi4py" if "mpi4py" in names else None
    header = ["size"]
    for n in names:
        header += [f"{n} us", "GB/s"] + (["x floor"] if floor and n not in (floor, "memcpy") else [])
    body = []
    for nbytes in sorted({r["bytes"] for r in group}):
        line = [report.human_bytes(nbytes)]
        for n in names:
            r = by.get((n, nbytes))
            ratio = floor and n not in (floor, "memcpy")
            if r is None:
                line += ["-", "-"] + (["-"] if ratio else [])
                continue
            line += [_short(r["time_avg_us"]), f"{r['busbw_GBps']:.2f}"]
            if ratio:
                base = by.get((floor, nbytes))
                line.append(f"{r['time_avg_us'] / base['time_avg_us']:.1f}" if base else "-")
        body.append(line)
    title = (f"# side by side, {dtype} {PLACEMENTS[placement]}: avg time (us), busbw (GB/s)"
             + (", and time / mpi4py's time (x floor)" if floor else ""))
    return title + "\n" + report.format_grid(header, body)


def _short(us: float) -> str:
    return f"{us:.1f}" if us < 100 else f"{us:.0f}"


def plot(rows: list[dict], meta: dict, path: Path) -> Path:
    """busbw (and time) against size, one line per backend, one row of panels per dtype/placement."""
    panels = []
    labels = {name: b["label"] for name, b in meta["backends"].items()}
    styles = {"memcpy": {"linestyle": "--", "color": "0.4", "marker": None},
              "mpi4py": {"color": "tab:green"}, "mpi4py-hvd": {"color": "tab:green", "linestyle": ":"},
              "horovod": {"color": "tab:blue"},
              "torch-gloo": {"color": "tab:orange"}, "torch-nccl": {"color": "tab:red"}}
    groups = list(dict.fromkeys((r["dtype"], r["placement"]) for r in rows))
    for dtype, placement in groups:
        group = [r for r in rows if r["dtype"] == dtype and r["placement"] == placement]
        bw = report.Panel(f"busbw, {dtype} {PLACEMENTS[placement]}", "message size (bytes)", "busbw (GB/s)")
        tm = report.Panel(f"time per allreduce, {dtype} {PLACEMENTS[placement]}", "message size (bytes)",
                          "avg time (us)")
        for name in dict.fromkeys(r["backend"] for r in group):
            mine = sorted((r for r in group if r["backend"] == name), key=lambda r: r["bytes"])
            label = labels.get(name, name)
            xs = [r["bytes"] for r in mine]
            bw.series[label] = (xs, [r["busbw_GBps"] for r in mine])
            tm.series[label] = (xs, [r["time_avg_us"] for r in mine])
            bw.styles[label] = tm.styles[label] = styles.get(name, {})
        panels += [bw, tm]
    hosts = meta["hosts"]
    title = (f"allreduce, {meta['ranks']} ranks on {len(hosts)} host{'s' if len(hosts) > 1 else ''} "
             f"({meta['device']}), launched by {meta['launcher']}")
    knobs = ", ".join(f"{k}={v}" for k, v in meta["settings"].items()) or "Horovod defaults"
    runs = f", median of {meta['runs']} runs" if meta.get("runs", 1) > 1 else ""
    note = f"{meta['date']}  warm-up {meta['warmup']}, {meta['iters']} iterations{runs}; {knobs}"
    return report.plot_panels(path, panels, title=title, ncols=2, note=note)


def median_of_runs(docs: list[dict]) -> tuple[dict, list[dict]]:
    """Several runs of one configuration (their JSON documents) as one: each figure is the median
    over the runs, #wrong the sum. On a shared machine a single run can catch a neighbour's burst."""
    import statistics

    groups: dict[tuple, list[dict]] = {}
    for doc in docs:
        for r in doc["rows"]:
            groups.setdefault((r["backend"], r["dtype"], r["placement"], r["bytes"]), []).append(r)
    rows = []
    for same in groups.values():
        row = dict(same[0])
        for key in ("time_avg_us", "time_min_us", "time_max_us", "algbw_GBps", "busbw_GBps"):
            row[key] = statistics.median(r[key] for r in same)
        row["wrong"] = sum(r["wrong"] for r in same)
        row["runs"] = len(same)
        rows.append(row)
    meta = {**docs[0]["meta"], "runs": len(docs), "dates": [d["meta"]["date"] for d in docs],
            "loadavg_start": [d["meta"].get("loadavg_start") for d in docs]}
    return meta, rows


def header_lines(ctx: Context, s: Settings) -> list[str]:
    m = ctx.meta
    hosts = m["hosts"]
    lines = [f"# hvdlm bench allreduce: {ctx.size} ranks on {len(hosts)} host{'s' if len(hosts) > 1 else ''} "
             f"({', '.join(hosts[:4])}{', ...' if len(hosts) > 4 else ''}), launched by {ctx.launcher}; "
             f"{ctx.device}, {ctx.threads} torch thread{'s' if ctx.threads > 1 else ''} per rank"]
    for b in ctx.early_backends + ctx.backends:
        version = f" {b.version}" if hasattr(b, "version") else ""
        when = ", measured before Horovod started" if b in ctx.early_backends else ""
        lines.append(f"#   {b.name:<11} {b.label}{version}{when}")
    knobs = ", ".join(f"{k}={v}" for k, v in m["settings"].items())
    lines.append(f"# settings: {knobs or 'none (Horovod and MPI defaults)'}")
    sizes = s.sizes
    lines.append(f"# sizes {report.human_bytes(sizes[0])}..{report.human_bytes(sizes[-1])} (x{s.factor}), "
                 f"warm-up {s.warmup}, {s.iters} timed iterations; times are the largest over ranks; "
                 f"busbw = algbw * 2(n-1)/n")
    lines += [f"# note: {n}" for n in ctx.notes]
    return lines


def run(s: Settings) -> list[dict]:
    """The whole benchmark: start, sweep, print, write CSV/JSON/PNG on rank 0; fail on #wrong."""
    ctx = start(s)
    try:
        for line in header_lines(ctx, s):
            say(ctx.rank, line)
        rows = sweep(ctx, s)
    finally:
        for b in ctx.backends:
            b.close()
    if ctx.rank == 0:
        for dtype in s.dtypes:
            for placement in s.placements:
                text = side_by_side(rows, dtype, placement)
                if text:
                    print("#\n" + text, flush=True)
        meta = {**ctx.meta, "loadavg_end": _loadavg(), "notes": ctx.notes}
        s.out_dir.mkdir(parents=True, exist_ok=True)
        written = [report.write_csv(s.out_dir / "allreduce.csv", rows, CSV_FIELDS),
                   report.write_json(s.out_dir / "allreduce.json", meta, rows)]
        if s.plot and rows:
            written.append(plot(rows, meta, s.out_dir / "allreduce.png"))
        print(f"hvdlm: wrote {', '.join(str(p) for p in written)}", flush=True)
    wrong = [r for r in rows if r["wrong"]]
    if wrong:
        what = "; ".join(f"{r['backend']} {r['dtype']} {PLACEMENTS[r['placement']]} {r['bytes']} B: {r['wrong']}"
                         for r in wrong[:4])
        more = f"; and {len(wrong) - 4} more sizes" if len(wrong) > 4 else ""
        if ctx.rank == 0:
            print(f"hvdlm: error: {sum(r['wrong'] for r in wrong)} wrong elements in allreduce results "
                  f"({what}{more})", file=sys.stderr, flush=True)
        raise SystemExit(1)
    return rows
