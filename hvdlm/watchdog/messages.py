"""What the watchdog says: the one line that names a fault, the warning about a peer never heard
from, and the details file (``<out_dir>/error-rank<R>.log``) with every peer and every stack."""

from __future__ import annotations

import faulthandler
import json
import os
import statistics
import sys
import threading
from pathlib import Path
from typing import Sequence


def log_path(out_dir: str, rank: int) -> Path:
    return Path(out_dir or ".") / f"error-rank{rank}.log"


def silent_peers_line(silent: Sequence, now: float, rank: int, host: str, log: str) -> str:
    p = max(silent, key=lambda q: now - q.last_seen)
    others = f" (and {len(silent) - 1} more)" if len(silent) > 1 else ""
    return (f"hvdlm: {p.where}{others} has sent no heartbeat for {now - p.last_seen:.0f}s (the last one from "
            f"{p.phase} at step {p.step}): it is stopped, hung or cut off from rank {rank} on {host}; "
            f"ending the job (details in {log})")


def gone_line(p, local: bool, now: float, rank: int, phase: str, step: int, log: str) -> str:
    how = "its process ended" if local else f"no heartbeat for {now - p.last_seen:.1f}s"
    return (f"hvdlm: {p.where} is gone ({how}) while rank {rank} was in {phase} at step "
            f"{step}; ending the job (details in {log})")


def stall_line(rank: int, host: str, stuck: float, phase: str, step: int, limit: float, log: str,
               busy=None, all_waiting: bool = False) -> str:
    """This rank made no progress: in its own work, or waiting on ``busy`` (a peer stuck in its own
    work), or waiting with every peer (a collective hung)."""
    line = f"hvdlm: rank {rank} on {host}: no progress for {stuck:.0f}s while {phase} at step {step} (limit {limit:.0f}s)"
    if busy is not None:
        line += f"; {busy.where} is stuck while {busy.phase} at step {busy.step}"
    elif all_waiting:
        line += "; every peer is alive and waiting too (a collective hung)"
    return line + f"; ending the job (details in {log})"


def unheard_warning(unheard: Sequence, rank: int, host: str, peer_timeout: float) -> str:
    names = ", ".join(p.where for p in unheard[:4]) + (" ..." if len(unheard) > 4 else "")
    return (f"hvdlm: warning: rank {rank} on {host} has had no heartbeat from {names} in "
            f"{peer_timeout:.0f}s (UDP blocked between the hosts?); the watchdog now relies on "
            "the progress limit alone for them")


def say(line: str) -> None:
    """One line on stderr, written at once (the main thread may hold Python's sys.stderr)."""
    os.write(2, (line + "\n").encode())


def write_log(path: Path, reason: str, k, limit: float, now: float, root_view: dict, killed: list[int]) -> Path | None:
    """The details of a fault: this rank (``k``, the watchdog's Knowledge), every peer, rank 0's
    last answer, and the stacks of all this process's threads."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as fh:
            fh.write(f"{reason}\n\nrank {k.rank} of {k.size} on {k.host} (pid {os.getpid()}), "
                     f"step {k.step}, phase {k.phase}, no progress for {now - k.progress_at:.1f}s, "
                     f"limit {limit:.0f}s, peer timeout {k.peer_timeout:.0f}s\n")
            if k.step_times:
                fh.write(f"median step {statistics.median(k.step_times):.4f}s over {len(k.step_times)} steps\n")
            fh.write("\npeers (rank, host, pid, heartbeats heard, last heard, step, phase, left):\n")
            for p in sorted(k.peers, key=lambda q: q.rank):
                fh.write(f"  {p.rank} {p.host} {p.pid} {p.heard} {now - p.last_seen:.1f}s ago step {p.step} "
                         f"{p.phase!r} {p.left or ''}\n")
            if root_view:
                fh.write(f"rank 0's view: {json.dumps(root_view)}\n")
            if killed:
                fh.write(f"stopped peer process(es) {killed}: killed 5 s after this exit unless the "
                         "launcher ends them first\n")
            fh.write("\nstacks of this rank's threads:\n")
            fh.flush()
            faulthandler.dump_traceback(fh, all_threads=True)
        return path
    except OSError:
        return None


def flush_stdout(timeout: float = 1.0) -> None:
    """Flush Python's stdout unless the main thread holds it (then give up: we are exiting)."""
    t = threading.Thread(target=lambda: sys.stdout.flush(), daemon=True)
    t.start()
    t.join(timeout)
