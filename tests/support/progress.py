"""Waiting on progress, not on the clock: a wait fails when nothing has moved (no file grew, no
line was printed) for ``stall`` seconds, however long the whole wait has taken, so a loaded 2-core
machine makes a test slower, not red. ``limit`` only stops a job that moves forever."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Iterable

STALL = 180  # seconds without progress: a hang, even on a 2-core machine shared with other jobs
LIMIT = 1800  # seconds in all


def files_state(paths: Iterable[Path]) -> tuple:
    """Size and mtime of each file under ``paths`` (directories walked): changes as a job writes."""
    state = []
    for path in map(Path, paths):
        files = [path] if not path.is_dir() else [Path(d, f) for d, _, fs in os.walk(path) for f in fs]
        for f in files:
            try:
                st = f.stat()
            except OSError:
                continue
            state.append((str(f), st.st_size, st.st_mtime_ns))
    return tuple(sorted(state))


def wait_for(done: Callable[[], bool], what: str, progress: Callable[[], object], stall: float = STALL,
             limit: float = LIMIT, ended: Callable[[], str | None] = lambda: None, poll: float = 0.2) -> None:
    """Poll until ``done()``. ``progress()`` returns anything that changes as the job moves on; the
    wait fails (RuntimeError) after ``stall`` seconds without a change, or when ``ended()`` returns
    a reason (the job ended before ``done``)."""
    start = last_move = time.monotonic()
    seen = progress()
    while True:
        if done():
            return
        why = ended()
        if why:
            raise RuntimeError(f"{why} while waiting for {what}")
        now = time.monotonic()
        moved = progress()
        if moved != seen:
            seen, last_move = moved, now
        if now - last_move > stall:
            raise RuntimeError(f"no progress for {stall:.0f}s while waiting for {what}")
        if now - start > limit:
            raise RuntimeError(f"still waiting for {what} after {limit:.0f}s, though the job moves")
        time.sleep(poll)
