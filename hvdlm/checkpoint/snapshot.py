"""A save's two halves: ``snapshot`` copies the state into host memory at the step it is taken
(training then changes the live tensors), and a ``Writer`` thread hashes and writes the copy
while training goes on, as torch's async checkpointing does.

The thread holds the GIL only between its large operations: the copy, the sha256 (hashlib
releases it on large buffers) and the file writes and fsync release it, so the training thread
and the watchdog's heartbeat keep running (benchmarks/RESULTS.md has the step times).
"""

from __future__ import annotations

import copy
import threading
from typing import Callable

import torch

from hvdlm.tensors import alias_key, map_tensors


def snapshot(obj, reuse=None, memo: dict | None = None, used: set | None = None):
    """``obj`` with every tensor copied into host memory and every other value deep-copied; a tensor
    that appears twice (a tied weight) is copied once and appears twice in the copy.

    ``reuse``: an earlier snapshot of the same state, whose write is done: each tensor is copied
    into the buffer at the same place when dtype and shape match. A fresh buffer costs a page fault
    per 4 KiB on first touch (2 s for 1 GiB on this kind of machine against 0.2-0.3 s for the copy
    alone), which the step that saves would otherwise pay at every save."""
    memo = {} if memo is None else memo
    used = set() if used is None else used
    if isinstance(obj, torch.Tensor):
        key = alias_key(obj)
        if key not in memo:
            t = obj.detach()
            fits = (isinstance(reuse, torch.Tensor) and reuse.device.type == "cpu" and reuse.dtype == t.dtype
                    and reuse.shape == t.shape and id(reuse) not in used)
            memo[key] = reuse.copy_(t) if fits else t.to("cpu", copy=True)
            used.add(id(memo[key]))
        return memo[key]
    if isinstance(obj, dict):
        old = reuse if isinstance(reuse, dict) else {}
        new = type(obj)((k, snapshot(v, old.get(k), memo, used)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):  # a module's state dict: its version numbers, which torch.save keeps
            new._metadata = copy.deepcopy(obj._metadata)
        return new
    if isinstance(obj, (list, tuple)) and (isinstance(obj, list) or type(obj) is tuple):
        old = reuse if isinstance(reuse, (list, tuple)) and len(reuse) == len(obj) else [None] * len(obj)
        items = [snapshot(v, r, memo, used) for v, r in zip(obj, old)]
        return items if isinstance(obj, list) else tuple(items)
    return copy.deepcopy(obj)


def twin(obj):
    """Host buffers shaped like ``obj``'s tensors, every page touched (zero-filled), other values
    as they are: what ``snapshot`` then copies into. Reads no tensor's data, only its metadata,
    so it can run beside the training step that changes them."""
    return map_tensors(obj, lambda t: torch.zeros(t.shape, dtype=t.dtype, device="cpu"))


class Writer:
    """``fn`` on a thread of its own; ``result()`` waits for it and raises what it raised.

    A daemon thread: a process ending on an error elsewhere does not wait for a write, which
    leaves at most a temporary file behind (every file is written under a temporary name, then
    renamed)."""

    def __init__(self, fn: Callable[[], None]):
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), name="hvdlm-checkpoint-writer", daemon=True)
        self._thread.start()

    def _run(self, fn) -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - handed to the training thread in result()
            self._error = e

    def result(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error
