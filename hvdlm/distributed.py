"""Every Horovod call in hvdlm lives here, so the data-parallel surface reads in one place.

The five steps of Horovod's recipe, and where ``train.py`` takes them:
  1. ``init()``                  hvd.init(), then pin the GPU by local rank or size CPU threads
  2. (sampler.py)                shard the data by rank
  3. ``scaled_lr()``, ``wrap_optimizer()``  scale the lr with the world size and wrap the optimizer
  4. ``broadcast_parameters()``, ``broadcast_object()``  start every rank from rank 0's state
  5. ``optimizer_step()``        synchronize, clip, step without a second synchronize
Everything also runs at size 1 (plain ``hvdlm train``), where the collectives are no-ops.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import pickle
import re
import signal
import socket
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

import horovod.torch as hvd
import torch

from hvdlm import stop_signals
from hvdlm.errors import HvdlmError
from hvdlm.wire import CODECS

T = TypeVar("T")


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


# CPU defaults, measured with `hvdlm bench allreduce` and `hvdlm bench train` (benchmarks/RESULTS.md).
# A setting already in the environment wins.
CPU_DEFAULTS_MPI = {
    # Open MPI busy-polls while a rank waits; on a host whose cores all compute, the polling steals
    # them from the ranks' matmuls. Yielding kept large-message busbw and made runs steady.
    "OMPI_MCA_mpi_yield_when_idle": "1",
    # Horovod's background thread runs one cycle per this many ms. 0.1 ms cut a lone small
    # allreduce's latency from 1.07 to 0.17 ms, but in training the thread then wakes 10,000 times
    # a second on the cores the ranks compute on: 2 ranks x 1 thread, 10 interleaved rounds, went
    # from a median 0.976 of DDP's tokens/s at 0.1 ms to 1.011 at 1 ms (benchmarks/RESULTS.md).
    "HOROVOD_CYCLE_TIME": "1",
}


def launched_size(env=os.environ) -> int:
    """How many processes the launcher started (readable before hvd.init); 1 without a launcher."""
    for var in ("OMPI_COMM_WORLD_SIZE", "HOROVOD_SIZE", "PMIX_SIZE", "PMI_SIZE", "SLURM_NTASKS"):
        if env.get(var, "").isdigit():
            return int(env[var])
    return 1


# Variables a launcher (mpirun, srun, horovodrun, elastic) or the user sets to choose Horovod's engine.
LAUNCHER_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "HOROVOD_GLOO_RENDEZVOUS_ADDR", "HOROVOD_ELASTIC",
                 "HOROVOD_CONTROLLER", "HOROVOD_CPU_OPERATIONS")

# A process no launcher started trains alone and exchanges nothing. Horovod's Gloo controller starts
# in ~3 ms where MPI's singleton start takes ~0.35 s and leaves an orted daemon beside the run; and
# Horovod's background thread, which wakes every cycle, took 6-13% of a tiny model's step at the
# default 1 ms cycle (benchmarks/RESULTS.md). hvdlm's collectives return at once alone (``alone``).
SOLO = {"HOROVOD_CONTROLLER": "gloo", "HOROVOD_CPU_OPERATIONS": "gloo", "HOROVOD_CYCLE_TIME": "50"}


_solo = False  # set by init(): no launcher started this process, so its world is 1 rank for good


def launched_alone(env=os.environ) -> bool:
    """No launcher started this process (nor chose Horovod's engine): it trains alone for good."""
    return not any(v in env for v in LAUNCHER_VARS) and launched_size(env) <= 1


def solo_engine(env=os.environ) -> dict:
    """Set SOLO (where unset) for a process no launcher started; returns what was set."""
    if not launched_alone(env):
        return {}
    applied = {k: v for k, v in SOLO.items() if k not in env}
    env.update(applied)
    return applied


def apply_cpu_defaults(env=os.environ) -> dict:
    """Set CPU_DEFAULTS_MPI where unset (not under Gloo or on GPUs, not for a single process);
    returns what was set."""
    if torch.cuda.is_available() or env.get("HOROVOD_GLOO_RENDEZVOUS_ADDR") or env.get("HOROVOD_CONTROLLER") == "gloo":
        return {}
    if launched_size(env) <= 1:
        # Alone there is nothing to exchange (SOLO's slow cycle applies): with the 0.1 ms cycle this
        # once set, a tiny model's step took 44-49 ms instead of 36-39 ms.
        return {}
    applied = {k: v for k, v in CPU_DEFAULTS_MPI.items() if k not in env}
    env.update(applied)
    return applied


# Horovod's background thread negotiates with the other ranks once per cycle even when nothing is
# queued: at the default 1 ms cycle that is ~360 kB/s per host over Gloo (measured on the test
# cluster, benchmarks/RESULTS.md), more than local_sgd/diloco's own exchange once every H steps. At
# 20 ms it is ~20 kB/s, and the few blocking collectives of a step (the logged loss) wait <= 20 ms.
PERIODIC_CYCLE_MS = "20"


def init(threads: int = 0, periodic: bool = False) -> World:
    """Step 1: start Horovod; pin one GPU per local rank, or split this host's cores on CPUs.
    ``periodic``: the ranks exchange once in many steps (local_sgd, diloco): a slower cycle."""
    if periodic:
        os.environ.setdefault("HOROVOD_CYCLE_TIME", PERIODIC_CYCLE_MS)  # a setting of the user's wins
    global _solo
    _solo = launched_alone()  # before solo_engine() sets Horovod's engine variables
    applied = solo_engine()
    apply_cpu_defaults()  # before hvd.init(): MPI and Horovod read them there
    hvd.init()
    for name in applied:  # read: a launcher this process starts (a benchmark, a test) must not inherit them
        os.environ.pop(name)
    if torch.cuda.is_available():
        torch.cuda.set_device(hvd.local_rank() % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    # Ranks on one host share its cores: oversubscribing them (torch defaults to all cores in every
    # rank) makes each rank's matmuls fight the others' and Horovod's background thread.
    n = threads or cores_per_rank(hvd.local_size())
    torch.set_num_threads(n)
    return World(hvd.rank(), hvd.size(), hvd.local_rank(), hvd.local_size(),
                 socket.gethostname(), device, n)


def scaled_lr(lr: float, factor: float, mode: str) -> float:
    """Step 3a: a global batch ``factor`` times one rank's takes a larger step (Goyal et al.:
    linear; or sqrt). ``factor`` is the number of ranks unless the global batch is set."""
    return {"linear": lr * factor, "sqrt": lr * math.sqrt(factor), "none": lr}[mode]


def wrap_optimizer(optimizer: torch.optim.Optimizer, model: torch.nn.Module, compression: str,
                   reduce_op: str, grad_accum: int, alone: bool = False) -> torch.optim.Optimizer:
    """Step 3b: gradients are allreduced as backward produces them (ring-allreduce over NCCL on
    GPUs, MPI or Gloo on CPUs), after ``grad_accum`` local backward passes.

    ``alone``: one process for the whole run (not elastic). There is nothing to average, yet
    Horovod's hooks would still queue every gradient through its background thread each step
    (measured: 25% of a tiny model's step on a CPU), so the optimizer stays unwrapped."""
    if alone:
        optimizer.hvdlm_adasum, optimizer.hvdlm_alone = False, True
        return optimizer
    wrapped = hvd.DistributedOptimizer(
        optimizer,
        named_parameters=model.named_parameters(),
        compression={"none": hvd.Compression.none, "fp16": hvd.Compression.fp16}[compression],
        backward_passes_per_step=grad_accum,
        op={"average": hvd.Average, "adasum": hvd.Adasum}[reduce_op],
    )
    # Horovod's Adasum optimizer (size > 1) applies the optimizer to each rank's own gradient in
    # the backward hooks and combines the resulting updates in step(): there is no averaged
    # gradient to clip, and skip_synchronize() is not supported.
    wrapped.hvdlm_adasum = reduce_op == "adasum" and hvd.size() > 1
    return wrapped


def broadcast_parameters(model: torch.nn.Module) -> None:
    """Step 4a: every rank starts from rank 0's weights."""
    if not alone():
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)


def broadcast_object(obj: T, name: str = "hvdlm.broadcast_object") -> T:
    """Step 4b: rank 0's picklable object on every rank.

    Used for the optimizer state on resume instead of ``hvd.broadcast_optimizer_state``: on a
    fresh optimizer that helper (0.28.1) runs a zero-gradient ``step()`` to create the state, which
    with current torch moves AdamW weights by weight decay and sets the step count to 1.
    The name is fixed: Horovod's default is the object's type name, which differs between rank 0
    (the object) and the others (None), and mismatched names wait for each other forever.
    """
    return obj if alone() else hvd.broadcast_object(obj, root_rank=0, name=name)


def optimizer_step(optimizer, model: torch.nn.Module, grad_clip: float) -> tuple[float, float]:
    """Step 5: wait for the allreduce, clip the *averaged* gradients, then step.

    Clipping before ``synchronize()`` would clip each rank's local gradient, not the one that is
    applied; stepping without ``skip_synchronize()`` would synchronize twice.
    Returns (seconds spent waiting for the allreduce, gradient norm or nan).
    """
    if getattr(optimizer, "hvdlm_alone", False):
        norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)) if grad_clip > 0 else float("nan")
        optimizer.step()
        optimizer.zero_grad()
        return 0.0, norm
    if optimizer.hvdlm_adasum:
        t0 = time.perf_counter()
        optimizer.step()  # waits for the Adasum-combined updates and applies them
        optimizer.zero_grad()
        return time.perf_counter() - t0, float("nan")
    t0 = time.perf_counter()
    optimizer.synchronize()
    wait = time.perf_counter() - t0
    norm = float("nan")
    if grad_clip > 0:
        norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip))
    with optimizer.skip_synchronize():
        optimizer.step()
    optimizer.zero_grad()  # Horovod 0.28.1 takes no arguments; torch sets grads to None
    return wait, norm


def rank() -> int:
    return hvd.rank()


def alone() -> bool:
    """One rank: the collectives below return at once instead of waiting for Horovod's next cycle
    (long when this process trains alone: SOLO). hvd.size() costs ~0.1 ms a call; a process no
    launcher started needs no call (elastic worlds change size, so they ask)."""
    return _solo or hvd.size() == 1


def size() -> int:
    return hvd.size()


# --- The sync strategies' own collectives (hvdlm/sync/): one fused flat buffer each --------------

def allreduce_average(flat: torch.Tensor, name: str, wire: str = "none") -> torch.Tensor:
    """The mean over ranks of a flat fp32 tensor, sent as fp32 (none) or fp16 (cast, ring-allreduce,
    cast back: what Horovod's fp16 compression does)."""
    return Average(flat, name, wire).result()


def bf16_average(flat: torch.Tensor, name: str) -> torch.Tensor:
    """The mean over ranks of a flat fp32 tensor, with bf16 on the wire, the same bits on every rank."""
    return Average(flat, name, "bf16").result()


class Average:
    """The mean over ranks of a flat fp32 tensor, started now and computed by Horovod's background
    thread while this one goes on (``result()`` waits for it). ``wire``: none (fp32), fp16, bf16
    or int8.

    Horovod 0.28.1 cannot sum bf16 over MPI or Gloo, but it moves int16 payloads: a reduce-scatter
    through ``alltoall`` (rank r receives every rank's r-th chunk), an fp32 sum of the chunks here,
    the mean rounded to bf16, and an ``allgather`` of the chunks back. Each rank sends (n-1)/n of
    the buffer in each half: 2(n-1)/n x 2 bytes per element, what an fp16 ring-allreduce sends.
    The second half starts from ``poll()`` (or ``result()``) once the first has arrived here.
    int8 takes the same route with ``wire.Int8`` payloads (bytes): half of bf16's.
    """

    def __init__(self, flat: torch.Tensor, name: str, wire: str = "none"):
        self.name, self.wire, self._value = name, wire, None
        n = hvd.size()
        self._codec = CODECS.get(wire)
        if self._codec:
            if n == 1:
                self._value = self._codec.decode(self._codec.encode(flat), flat.numel())
                return
            count = flat.numel()
            # ceil, in whole blocks: every rank owns one chunk; the last ones may be short or empty
            chunk = -(-count // n)
            chunk = -(-chunk // self._codec.BLOCK) * self._codec.BLOCK
            self._sizes = [max(0, min(chunk, count - r * chunk)) for r in range(n)]
            self._empty = flat[:0]
            parts = [self._codec.encode(piece) for piece in flat.split(self._sizes)]
            self._handle = hvd.alltoall_async(torch.cat(parts),
                                              splits=torch.tensor([p.numel() for p in parts], dtype=torch.int32),
                                              name=name + ".scatter")
            self._gathering = False
        else:
            payload = flat.half() if wire == "fp16" else flat
            self._handle = hvd.allreduce_async(payload, op=hvd.Average, name=name)

    def poll(self) -> bool:
        """True once the result is here (bf16, int8: starts the second half when the first has arrived)."""
        if self._value is not None:
            return True
        if not hvd.poll(self._handle):
            return False
        if self._codec and not self._gathering:
            self._gather()
            return False
        return True

    def _gather(self) -> None:
        received, _ = hvd.synchronize(self._handle)
        n, count, codec = hvd.size(), self._sizes[hvd.rank()], self._codec
        # every rank's copy of this rank's chunk, summed in fp32 in rank order, then rounded once more
        mine = sum(codec.decode(p, count) for p in received.chunk(n)) / n if count else self._empty
        self._handle = hvd.allgather_async(codec.encode(mine), name=self.name + ".gather")
        self._gathering = True

    def result(self) -> torch.Tensor:
        if self._value is None:
            if self._codec and not self._gathering:
                self._gather()
            out = hvd.synchronize(self._handle)
            if self._codec:  # every rank decodes the same bytes: the same bits
                lengths = [self._codec.encoded_numel(c) for c in self._sizes]
                out = torch.cat([self._codec.decode(p, c) for p, c in zip(out.split(lengths), self._sizes)])
            self._value = out.float()
        return self._value

    @classmethod
    def arrived(cls, value: torch.Tensor) -> "Average":
        """An average already received (restored from a checkpoint)."""
        done = cls.__new__(cls)
        done._value = value
        return done


def gather_objects(obj: T, name: str) -> list[T]:
    """Every rank's picklable ``obj`` on every rank, in rank order.

    Not ``hvd.allgather_object``: it turns the pickle into a tensor element by element
    (``torch.ByteTensor(bytearray)``), ~6 s per 32 MB on a loaded 2-core machine, holding the GIL.
    local_sgd/DiLoCo gather ~128 MB per rank at each checkpoint (10.6M parameters): the watchdog's
    heartbeat thread starved and the other rank ended the job as if this one were dead."""
    if alone():
        return [obj]
    payload = torch.frombuffer(bytearray(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)), dtype=torch.uint8)
    sizes = hvd.allgather(torch.tensor([payload.numel()], dtype=torch.int64), name=name + ".sizes").tolist()
    gathered = hvd.allgather(payload, name=name + ".payload").numpy()
    ends = itertools.accumulate(sizes)
    return [pickle.loads(gathered[end - n:end]) for n, end in zip(sizes, ends)]


def ranks_where(flag: bool, name: str) -> list[int]:
    """The ranks on which ``flag`` is true (one number from each rank)."""
    if alone():
        return [0] if flag else []
    got = hvd.allgather(torch.tensor([int(flag)], dtype=torch.int32), name=name)
    return [r for r, f in enumerate(got.tolist()) if f]


def average(values: list[float], name: str) -> list[float]:
    """The mean of each value over all ranks."""
    if alone():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    return hvd.allreduce(t, op=hvd.Average, name=name).tolist()


def sum_all(values: list[float], name: str) -> list[float]:
    if alone():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    return hvd.allreduce(t, op=hvd.Sum, name=name).tolist()


def allgather(obj: T) -> list[T]:
    """Every rank's picklable ``obj``, in rank order (the watchdog's address exchange)."""
    return gather_objects(obj, name="hvdlm.allgather")


def agree(fn: Callable[[], T]) -> T:
    """Run ``fn`` on every rank; if it raises HvdlmError on any rank, raise it on all of them.

    Every rank reads the same input, but not always the same files (node-local disks): a rank
    that fails alone would leave the others waiting in the next collective.
    """
    try:
        result, error = fn(), None
    except HvdlmError as e:
        result, error = None, str(e)
    errors = gather_objects(error, name="hvdlm.agree")
    for rank, err in enumerate(errors):
        if err is not None:
            failed = [r for r, e in enumerate(errors) if e is not None]
            where = "" if len(failed) == len(errors) else f" (on rank {', '.join(map(str, failed))})"
            raise HvdlmError(err + where, everywhere=True)
    return result


def on_root(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and give every rank its result, or its HvdlmError."""
    payload = None
    if hvd.rank() == 0:
        try:
            payload = ("ok", fn())
        except HvdlmError as e:
            payload = ("error", str(e))
    status, value = broadcast_object(payload, name="hvdlm.on_root")
    if status == "error":
        raise HvdlmError(value, everywhere=True)
    return value



def is_peer_failure(exc: BaseException) -> bool:
    """True when a collective failed because another rank died or left (its own message says why)."""
    from horovod.common.exceptions import HorovodInternalError

    return isinstance(exc, HorovodInternalError)


def gloo_timeout_ms(exc: BaseException) -> int | None:
    """The timeout Gloo gave up after, when that is why a collective failed (no rank died: one
    exchange took longer than HOROVOD_GLOO_TIMEOUT_SECONDS, e.g. a large one on a slow link)."""
    found = re.search(r"Timed out waiting (\d+)ms for (send|recv)", str(exc))
    return int(found.group(1)) if found and is_peer_failure(exc) else None


class StopSignals:
    """SIGUSR1 and SIGTERM (SLURM's warning before the time limit, preemption, scancel) ask the job
    to stop after the current step, with a checkpoint (``stop_signals`` records them, from the
    start of the process).

    Ranks may see the signal at different steps, so they agree: each step starts a one-number
    allreduce of "did I get a signal?", which completes while the step computes and is read at
    its end.
    """

    def __init__(self):
        stop_signals.install()
        self._handle = None

    def begin_step(self) -> None:
        self._handle = None
        if not alone():  # alone, the rank's own record is the answer: no collective to pay for
            self._handle = hvd.allreduce_async(torch.tensor([stop_signals.received()]), op=hvd.Max, name="hvdlm.stop")

    def end_step(self) -> str | None:
        """The name of the signal any rank received (the same on every rank), or None."""
        signum = int(hvd.synchronize(self._handle).item()) if self._handle is not None else stop_signals.received()
        return signal.Signals(signum).name if signum else None

    def restore(self) -> None:
        stop_signals.restore()


def barrier(name: str) -> None:
    """Every rank waits here for the others (e.g. for rank 0 to finish writing a checkpoint)."""
    if not alone():
        hvd.allreduce(torch.zeros(1), name=name)


# --- Elastic training (elastic.py): ranks leave and join while the job runs ----------------------

def elastic_launched() -> bool:
    """Whether this process was started by Horovod's elastic launcher."""
    return os.environ.get("HOROVOD_ELASTIC") == "1"


def world_now(world: World) -> World:
    """This rank's place after an elastic reset (rank, size and local rank may all have changed)."""
    return World(hvd.rank(), hvd.size(), hvd.local_rank(), hvd.local_size(), world.host, world.device,
                 world.threads)


def set_accumulation(optimizer, grad_accum: int) -> None:
    """Micro-steps per optimizer step, when a new world size splits the global batch anew."""
    if not getattr(optimizer, "hvdlm_alone", False):
        optimizer.set_backward_passes_per_step(grad_accum)


class ElasticState:
    """What Horovod elastic restores after a rank is lost and sends to a rank that joins: the
    model, the optimizer and every other ``stateful`` object (the run's ``TrainState``, the sync
    strategy), as of the last ``commit()``.

    Horovod's own ``TorchState`` syncs the optimizer with ``broadcast_optimizer_state``, which on
    a fresh optimizer (every rank at the start, a joining rank later) runs a zero-gradient
    ``step()``: with AdamW that moves the weights by their weight decay and sets the step count to
    1, so a joining rank's weights would no longer match the others'. Here rank 0's optimizer
    state dict is broadcast and loaded instead (``tests/test_elastic.py`` checks both).
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *stateful):
        from horovod.common.elastic import State

        def snapshot():
            return model.state_dict(), optimizer.state_dict(), [s.state_dict() for s in stateful]

        def load(model_state, optimizer_state, others):
            model.load_state_dict(model_state)
            optimizer.load_state_dict(optimizer_state)
            for obj, obj_state in zip(stateful, others):
                obj.load_state_dict(obj_state)

        class _State(State):  # Horovod's protocol: save / restore / sync / commit
            def save(inner):
                self._saved = copy.deepcopy(snapshot())

            def restore(inner):
                load(*copy.deepcopy(self._saved))

            def sync(inner):
                hvd.broadcast_parameters(model.state_dict(), root_rank=0)
                _, optimizer_state, others = snapshot()
                optimizer_state, others = hvd.broadcast_object(
                    (optimizer_state, others), root_rank=0, name="hvdlm.elastic.sync")
                load(model.state_dict(), optimizer_state, others)
                inner.save()  # a rank lost before the first commit goes back to the synced state

        self.horovod = _State(bcast_object=broadcast_object, get_rank=hvd.rank)
        self.horovod.save()

    def commit(self) -> None:
        """Keep the current state in memory; raises HostsUpdatedInterrupt when ranks are to join
        or leave (Horovod then restarts the training function at the new size)."""
        self.horovod.commit()


def elastic_run(fn: Callable[[ElasticState], T], log: str) -> Callable[[ElasticState], T]:
    """``hvd.elastic.run``: run ``fn(state)``; when a rank fails (HorovodInternalError) restore the
    last commit, when hosts change keep the current state; then re-initialise Horovod at the new
    size, sync the state from rank 0 and call ``fn`` again.

    A rank the launcher removes learns it inside ``hvd.init()``, where Horovod aborts the process
    with a C++ message on stderr; that message goes to the file ``log`` instead of the terminal
    (the launcher already says that the rank left).
    """
    from horovod.common.elastic import run_fn

    def reset():
        hvd.shutdown()
        saved = os.dup(2)
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError:
            fd = None
        if fd is not None:
            os.dup2(fd, 2)
        try:
            hvd.init()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if fd is not None:
                os.close(fd)

    wrapped = run_fn(lambda horovod_state, state: fn(state), reset)
    return lambda state: wrapped(state.horovod, state)


# --- hvdlm preflight (preflight.py): its timed allreduce -----------------------------------------

def allreduce_sum_(buf: torch.Tensor, name: str) -> None:
    """Sum ``buf`` over all ranks, in place, synchronously."""
    hvd.allreduce_(buf, op=hvd.Sum, name=name)


def allreduce_transport(device: torch.device) -> str:
    """What Horovod's allreduce runs over here: NCCL for GPU tensors (when built with it), else
    Gloo or MPI, as this launch chose."""
    if device.type == "cuda" and hvd.nccl_built():
        return "NCCL"
    return "Gloo" if hvd.gloo_enabled() else "MPI"
