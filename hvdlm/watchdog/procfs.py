"""What /proc says about processes on this host: their state, whether they are gone, which host
and namespaces this process sees, and ending a stopped peer that would hold the launcher."""

from __future__ import annotations

import functools
import os
import subprocess
import uuid
from pathlib import Path


def state(pid: int) -> str:
    """The process state letter from /proc (R, S, D, T, Z, ...), or "" when unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def is_zombie(pid: int) -> bool:
    return state(pid) in ("Z", "X")


def is_stopped(pid: int) -> bool:
    return state(pid) in ("T", "t")


def process_ended(pid: int) -> bool:
    """Whether the process ``pid`` (on this machine) is gone: no such process, or a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return is_zombie(pid)


@functools.cache
def machine_id() -> str:
    """Same value for processes of one host: same boot and pid namespace (they see each other's
    pids), and same network namespace (the hosts of slurm/cluster.sh share a kernel and its pids,
    but not a network: a rank there is judged by its heartbeats, as on another machine)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}/{os.stat('/proc/self/ns/net').st_ino}"
    except OSError:
        return uuid.uuid4().hex  # never matches another process: no pid checks


def kill_if_still_stopped(pid: int, after: float = 5.0) -> bool:
    """A detached ``sh`` that kills ``pid`` if it is still stopped (SIGSTOP) ``after`` seconds from
    now, when this process will have exited; returns whether it started."""
    script = (f"sleep {after:g}; grep -q '^State:[[:space:]]*[Tt]' /proc/{pid}/status 2>/dev/null "
              f"&& kill -9 {pid}")
    try:
        subprocess.Popen(["sh", "-c", script], start_new_session=True, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return True
    except OSError:
        return False
