"""The collectives every part of hvdlm uses besides the gradient exchange: start every rank from
rank 0's state, gather small objects, average a few numbers, agree on an error, agree on a stop
signal. Each returns at once on one rank (``world.alone``), without waiting for Horovod's cycle."""

from __future__ import annotations

import itertools
import pickle
import signal
from typing import Callable, TypeVar

import horovod.torch as hvd
import torch

from hvdlm import stop_signals
from hvdlm.distributed.world import alone
from hvdlm.errors import HvdlmError

T = TypeVar("T")


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


def gather_objects(obj: T, name: str) -> list[T]:
    """Every rank's picklable ``obj`` on every rank, in rank order.

    Not ``hvd.allgather_object``: it turns the pickle into a tensor element by element
    (``torch.ByteTensor(bytearray)``) while holding the GIL, which starved the watchdog's heartbeat
    thread on a loaded machine once the objects were large (benchmarks/RESULTS.md). Meant for small
    objects: per-rank state is never gathered (each rank writes its own checkpoint file)."""
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


def allreduce_sum_(buf: torch.Tensor, name: str) -> None:
    """Sum ``buf`` over all ranks, in place, synchronously (``hvdlm preflight``'s timed allreduce)."""
    hvd.allreduce_(buf, op=hvd.Sum, name=name)
