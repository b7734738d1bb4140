"""What the C library offers that Python's standard library does not: giving freed heap back,
one malloc arena, and Linux's sync_file_range. Each is a no-op where it is missing (no glibc, not
Linux): they shape memory and disk traffic, never results."""
from __future__ import annotations

import ctypes
import functools


@functools.cache
def libc():
    """This process's C library, or None where there is none to load."""
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def trim_heap() -> None:
    """Give freed heap back to the system: after a large document, glibc would keep the peak."""
    try:
        libc().malloc_trim(0)
    except AttributeError:  # no C library, or not glibc
        pass


def one_malloc_arena() -> None:
    """One heap for all of this process's threads. Left alone, glibc gives the threads that move
    blocks and results (the pool's, the writer's and the main one) heaps of their own, each
    keeping its freed blocks: a process that creeps up by tens of MB over a long run."""
    try:
        libc().mallopt(-8, 1)  # M_ARENA_MAX
    except AttributeError:  # no C library, or not glibc
        pass


@functools.cache
def _sync_file_range():
    fn = getattr(libc(), "sync_file_range", None)  # Linux
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        fn.restype = ctypes.c_int
    return fn


def sync_range(fd: int, offset: int, nbytes: int, wait: bool) -> None:
    """Start writing ``nbytes`` of the file from ``offset`` to the disk; with ``wait``, also wait
    until they are written. The call releases the GIL. Not a promise of durability (metadata, the
    disk's own cache): fsync still is; this only makes the disk work early and steadily."""
    fn = _sync_file_range()
    if fn is not None and nbytes > 0:  # 0 would mean "to the end of the file"
        fn(fd, offset, nbytes, 7 if wait else 2)  # WAIT_BEFORE | WRITE | WAIT_AFTER, or WRITE
