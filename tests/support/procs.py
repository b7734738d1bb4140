"""Reading /proc: a process's environment, parent, state and command line; processes found by a
tag in their environment or a marker on their command line; network namespaces; live daemons; and
killing a group of processes until none is left."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Callable


def environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    env = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def ppid_and_state(pid: int) -> tuple[int, str]:
    """(parent pid, state letter); (-1, "X") for a process that is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1, "X"
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[1]), fields[0]


def alive(pid: int) -> bool:
    """Running or stopped; a zombie its parent has yet to reap counts as gone."""
    return ppid_and_state(pid)[1] not in ("Z", "X")


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def is_python(pid: int) -> bool:
    """A Python process (an hvdlm rank, a probe): what fault tests hurt and count as leftovers."""
    cmd = cmdline(pid)
    return "python" in cmd or "hvdlm" in cmd


def tagged_pids(tag: str, marker: str | None = None) -> list[int]:
    """Live processes whose environment carries ``HVDLM_FAULT_TAG=tag``, or whose command line
    holds ``marker`` (ranks started over ssh on another host of the test cluster do not inherit
    the environment, but they share this machine's process table)."""
    found = []
    for pid in pids():
        if pid == os.getpid():
            continue
        mine = environ(pid).get("HVDLM_FAULT_TAG") == tag or (marker is not None and marker in cmdline(pid))
        if mine and alive(pid):
            found.append(pid)
    return found


def in_netns(pid: int, name: str) -> bool:
    """Whether ``pid`` runs in the network namespace ``/run/netns/<name>`` (a test-cluster host)."""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{name}").st_ino
    except OSError:
        return False


def daemons(names: set[str]) -> set[int]:
    """Live processes whose command name is one of ``names``."""
    return {pid for pid in pids() if comm(pid) in names and alive(pid)}


def kill_until_gone(find: Callable[[], list[int]], rounds: int = 50, pause: float = 0.1) -> list[int]:
    """SIGKILL what ``find`` returns, again until it returns nothing (a process may fork as it
    dies); what is still alive after ``rounds``."""
    for _ in range(rounds):
        found = find()
        if not found:
            return []
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(pause)
    return find()
