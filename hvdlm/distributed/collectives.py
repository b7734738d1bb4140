"""The collectives every part of hvdlm uses besides the gradient exchange: start every rank from
rank 0's state, gather small objects, average a few numbers, agree on an error, agree on a stop
signal. Each returns at once on one rank (``world.alone``), without waiting for Horovod's cycle."""

from __future__ import annotations

import itertools
import os
import pickle
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, NamedTuple, TypeVar

import horovod.torch as hvd
import torch

from hvdlm import stop_signals
from hvdlm.distributed.world import alone
from hvdlm.errors import HvdlmError
from hvdlm.tensors import alias_key, map_tensors

T = TypeVar("T")


def wait(handle):
    """Horovod's ``synchronize`` for a collective that may take seconds (ranks waiting for rank 0 to
    read or write a checkpoint): ``synchronize`` itself spins (a yield in a loop), so each waiting
    rank keeps a core busy, and where ranks share cores (more ranks than cores, as on a
    workstation) the spinners take them from the one rank doing the work: rank 0's read of a
    checkpoint took 2-9 s with 3 ranks waiting on 2 cores against 1.1 s with 1 (benchmarks/RESULTS.md).
    Here a waiting rank sleeps between polls (0.1 ms, doubling to 5 ms: at most 5 ms late), with
    the GIL released, then collects the result."""
    delay = 1e-4
    while not hvd.poll(handle):
        time.sleep(delay)
        delay = min(2 * delay, 5e-3)
    return hvd.synchronize(handle)


def broadcast_parameters(model: torch.nn.Module) -> None:
    """Step 4a: every rank starts from rank 0's weights."""
    if not alone():
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)


def broadcast_object(obj: T, name: str = "hvdlm.broadcast_object") -> T:
    """Step 4b: rank 0's object on every rank; its tensors travel as tensors.

    A checkpoint's or an elastic commit's state is hundreds of MB to GBs: pickled whole, as
    ``hvd.broadcast_object`` does, it is turned into a tensor element by element while holding the
    GIL (32 MB took 23.5 s: the watchdog's heartbeat starved) and its length is an int32 (nothing
    past 2 GiB). Here the object goes over with each tensor replaced by its dtype and shape (a small
    pickle, sent as one byte tensor), then every tensor is broadcast in place in pieces of at most
    ``PIECE_BYTES``, a window of them in flight at a time (Horovod fuses small ones), waiting with
    the GIL released. A receiver allocates each tensor on its own device of the sender's device
    type (a CUDA tensor lands on this rank's GPU, not on rank 0's index).

    Used for the optimizer state on resume instead of ``hvd.broadcast_optimizer_state``: on a
    fresh optimizer that helper (0.28.1) runs a zero-gradient ``step()`` to create the state, which
    with current torch moves AdamW weights by weight decay and sets the step count to 1.
    ``name`` must be the same on every rank (Horovod's default, the object's type name, differs
    between rank 0 and the others, and mismatched names wait for each other forever).
    """
    if alone():
        return obj
    tensors: list[torch.Tensor] = []
    skeleton = _strip_tensors(obj, tensors) if hvd.rank() == 0 else None
    skeleton = _broadcast_pickle(skeleton, name)
    if hvd.rank() != 0:
        tensors = []
        obj = _dress(skeleton, tensors)
    broadcast_tensors_(tensors, name)
    return obj


PIECE_BYTES = 64 << 20  # one broadcast's bytes at most: Horovod's fusion buffer's size, far below int32 counts
WINDOW_BYTES = 256 << 20  # in flight at once: bounds Horovod's queue, not the state's size


class _TensorSpec(tuple):
    """A tensor's place in a broadcast object: (index, dtype, shape, device type)."""


def _strip_tensors(obj, tensors: list):
    """``obj`` with every tensor replaced by a ``_TensorSpec``; each tensor appended to ``tensors``
    once (a tied weight is in a state dict twice)."""
    seen: dict = {}

    def spec(t: torch.Tensor) -> _TensorSpec:
        key = alias_key(t)
        if key not in seen:
            seen[key] = len(tensors)
            tensors.append(t.detach().contiguous())
        return _TensorSpec((seen[key], t.dtype, tuple(t.shape), t.device.type))
    return map_tensors(obj, spec)


def _dress(skeleton, tensors: list):
    """The inverse of ``_strip_tensors`` on a receiver: an empty tensor where each spec is."""
    def empty(spec: _TensorSpec) -> torch.Tensor:
        index, dtype, shape, device_type = spec
        if index == len(tensors):
            device = torch.device("cuda", torch.cuda.current_device()) if device_type == "cuda" else torch.device("cpu")
            tensors.append(torch.empty(shape, dtype=dtype, device=device))
        return tensors[index]
    return map_tensors(skeleton, empty, leaf=_TensorSpec)


def _broadcast_pickle(obj, name: str):
    """A small picklable object from rank 0, as one byte tensor (no per-element conversion)."""
    payload = None
    if hvd.rank() == 0:
        payload = torch.frombuffer(bytearray(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)), dtype=torch.uint8)
    length = torch.tensor([payload.numel() if payload is not None else 0], dtype=torch.int64)
    wait(hvd.broadcast_async_(length, root_rank=0, name=name + ".length"))
    if payload is None:
        payload = torch.empty(int(length.item()), dtype=torch.uint8)
    wait(hvd.broadcast_async_(payload, root_rank=0, name=name + ".pickle"))
    return obj if hvd.rank() == 0 else pickle.loads(payload.numpy().tobytes())


def _wire_view(t: torch.Tensor) -> torch.Tensor:
    """A flat view Horovod can send: its wire types have no bfloat16 or bool (same bytes as int16/uint8)."""
    flat = t.view(-1)
    if t.dtype == torch.bfloat16:
        return flat.view(torch.int16)
    if t.dtype == torch.bool:
        return flat.view(torch.uint8)
    return flat


def broadcast_tensors_(tensors: list[torch.Tensor], name: str) -> None:
    """Rank 0's tensors into every rank's ``tensors`` (same dtypes and shapes, contiguous), in place."""
    pieces = []
    for t in tensors:
        flat = _wire_view(t)
        step = max(1, PIECE_BYTES // max(1, flat.element_size()))
        pieces += [flat[i:i + step] for i in range(0, flat.numel(), step)]
    handles, in_flight = [], 0
    for i, piece in enumerate(pieces):
        handles.append(hvd.broadcast_async_(piece, root_rank=0, name=f"{name}.{i}"))
        in_flight += piece.numel() * piece.element_size()
        if in_flight >= WINDOW_BYTES or i == len(pieces) - 1:
            for handle in handles:
                wait(handle)
            handles, in_flight = [], 0


def gather_objects(obj: T, name: str) -> list[T]:
    """Every rank's picklable ``obj`` on every rank, in rank order.

    Not ``hvd.allgather_object``: it turns the pickle into a tensor element by element
    (``torch.ByteTensor(bytearray)``) while holding the GIL, which starved the watchdog's heartbeat
    thread on a loaded machine once the objects were large (benchmarks/RESULTS.md). Meant for small
    objects: per-rank state is never gathered (each rank writes its own checkpoint file)."""
    if alone():
        return [obj]
    payload = torch.frombuffer(bytearray(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)), dtype=torch.uint8)
    sizes = wait(hvd.allgather_async(torch.tensor([payload.numel()], dtype=torch.int64), name=name + ".sizes")).tolist()
    gathered = wait(hvd.allgather_async(payload, name=name + ".payload")).numpy()
    ends = itertools.accumulate(sizes)
    return [pickle.loads(gathered[end - n:end]) for n, end in zip(sizes, ends)]


def ranks_where(flag: bool, name: str) -> list[int]:
    """The ranks on which ``flag`` is true (one number from each rank)."""
    if alone():
        return [0] if flag else []
    got = wait(hvd.allgather_async(torch.tensor([int(flag)], dtype=torch.int32), name=name))
    return [r for r, f in enumerate(got.tolist()) if f]


def average(values: list[float], name: str) -> list[float]:
    """The mean of each value over all ranks."""
    if alone():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    return wait(hvd.allreduce_async(t, op=hvd.Average, name=name)).tolist()


def sum_all(values: list[float], name: str) -> list[float]:
    if alone():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    return wait(hvd.allreduce_async(t, op=hvd.Sum, name=name)).tolist()


def allgather(obj: T) -> list[T]:
    """Every rank's picklable ``obj``, in rank order (the watchdog's address exchange)."""
    return gather_objects(obj, name="hvdlm.allgather")


def agree(fn: Callable[[], T], name: str = "hvdlm.agree") -> T:
    """Run ``fn`` on every rank; if it raises HvdlmError on any rank, raise it on all of them.

    Every rank reads the same input, but not always the same files (node-local disks): a rank
    that fails alone would leave the others waiting in the next collective. ``name`` must differ
    from any agreement another thread may run at the same time (a checkpoint's writer).
    """
    try:
        result, error = fn(), None
    except HvdlmError as e:
        result, error = None, str(e)
    errors = gather_objects(error, name=name)
    for rank, err in enumerate(errors):
        if err is not None:
            failed = [r for r, e in enumerate(errors) if e is not None]
            where = "" if len(failed) == len(errors) else f" (on rank {', '.join(map(str, failed))})"
            raise HvdlmError(err + where, everywhere=True)
    return result


class Unverified(NamedTuple):
    """A value read on rank 0 whose check (a checksum over its tensors) has not run yet.

    ``check()`` returns None, or why the value cannot be used; ``fallback()`` reads again,
    checking first (so what failed is skipped). ``on_root`` sends ``value`` while ``check`` runs."""
    value: object
    check: Callable[[], str | None]
    fallback: Callable[[], object]


def settled(result):
    """``result`` checked here and now, for a caller that sends nothing (an elastic rank 0, a
    single process): an ``Unverified`` value if its check passes, else its fallback's; any other
    result as it is."""
    if not isinstance(result, Unverified):
        return result
    return result.value if result.check() is None else result.fallback()


def on_root(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and give every rank its result, or its HvdlmError.

    When ``fn`` returns an ``Unverified`` value (a checkpoint read without its checksum), the value
    is sent while its check runs in a thread beside the broadcast, and the verdict follows: reading
    the file, hashing it and sending it overlap instead of following each other (the resume's
    floor is one read of the file plus its transfer; benchmarks/RESULTS.md). If the check fails,
    every rank drops what it received and rank 0 sends its ``fallback()`` instead."""
    payload, check, fallback = None, None, None
    if hvd.rank() == 0:
        try:
            result = fn()
            if isinstance(result, Unverified):
                result, check, fallback = result
            payload, result = ("ok", result), None
        except HvdlmError as e:
            payload = ("error", str(e))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hvdlm-check") as pool:
        checking = pool.submit(check) if check is not None else None
        status, value = broadcast_object(payload, name="hvdlm.on_root")
        problem = _verdict(checking)
    if status == "error":
        raise HvdlmError(value, everywhere=True)
    if broadcast_object(problem, name="hvdlm.on_root.verdict") is not None:
        del value, payload  # the damaged state is not held while the fallback is read
        return on_root(fallback)
    return value


def _verdict(checking) -> str | None:
    """The check's answer on rank 0 (None elsewhere); an exception in it is an answer too, so that
    rank 0 never leaves the others waiting for the verdict."""
    if checking is None:
        return None
    try:
        return checking.result()
    except Exception as e:  # noqa: BLE001 - any failure to verify means the value is not used
        return f"could not be verified ({type(e).__name__}: {e})"


class StopSignals:
    """SIGUSR1 and SIGTERM (SLURM's warning before the time limit, preemption, scancel) ask the job
    to stop, with a checkpoint (``stop_signals`` records them, from the start of the process).

    Ranks may see the signal at different steps, so they agree: every rank starts a one-number
    allreduce of "did I get a signal?" (with its step time) and reads it ``stop_signals.check_lag``
    steps later, at the same step on every rank, by when Horovod (which serves it at its next
    cycle: 1 ms, or 20 ms under local_sgd/diloco) has answered it, so no step waits for the cycle.
    A signal takes effect at the end of the step that reads the next answer: the step it arrived
    in when steps are longer than two cycles, else within about two cycles of it (alone, at the end
    of the step it arrived in).
    """

    def __init__(self):
        stop_signals.install()
        self._asked, self._due = None, 0
        self._cycle_s = float(os.environ.get("HOROVOD_CYCLE_TIME", "1")) / 1000  # set before hvd.init

    def start(self) -> None:
        """At the start of each run: after an elastic reset Horovod's earlier handles are gone."""
        self._asked, self._due = None, 0

    def after_step(self, step: int, step_s: float) -> str | None:
        """The name of the signal any rank had received when the answer read at ``step`` was asked
        (the same on every rank), or None; ``step_s``: this rank's last step, in seconds."""
        if alone():  # the rank's own record is the answer: no collective to pay for
            signum = stop_signals.received()
        elif self._asked is not None and step < self._due:
            return None
        else:
            signum, lag = 0, 1
            if self._asked is not None:
                # .numpy(): a host tensor, read without a device sync (the step's count of those is tested)
                answer = wait(self._asked).numpy()
                signum, lag = int(answer[0]), stop_signals.check_lag(self._cycle_s, -float(answer[1]))
            # Max of (signal, -step time): any rank's signal, and the fastest rank's step, the same everywhere
            asked = torch.tensor([stop_signals.received(), -step_s], dtype=torch.float64)
            self._asked, self._due = hvd.allreduce_async(asked, op=hvd.Max, name="hvdlm.stop"), step + lag
        return signal.Signals(signum).name if signum else None

    def finish(self) -> None:
        """The question still in flight answered, before the run's last collective (every rank asked it)."""
        if self._asked is not None:
            wait(self._asked)
            self._asked = None

    def restore(self) -> None:
        stop_signals.restore()


def barrier(name: str) -> None:
    """Every rank waits here for the others (e.g. for rank 0 to finish writing a checkpoint)."""
    if not alone():
        wait(hvd.allreduce_async(torch.zeros(1), name=name))


def allreduce_sum_(buf: torch.Tensor, name: str) -> None:
    """Sum ``buf`` over all ranks, in place, synchronously (``hvdlm preflight``'s timed allreduce)."""
    hvd.allreduce_(buf, op=hvd.Sum, name=name)
