"""Fault injection on real processes: start a job under a launcher, find the process of a given
rank, hurt it (kill -9, SIGSTOP, ...) and time how long the job takes to end.

Used by tests/test_faults.py, tests/test_elastic.py, tests/test_faults_cluster.py and
benchmarks/faults/matrix.py (the fault matrix in docs/faults.md), so the tests and the published
figures come from the same harness.

Every process a job starts carries ``HVDLM_FAULT_TAG=<tag>`` in its environment (launchers pass
the environment on), which is how its ranks are found and how nothing is left behind: ``stop()``
kills every process with the tag, stopped ones included.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from hvdlm.launcher import RANK_VARS  # the one list of launchers' rank variables

from .procs import cmdline, environ, in_netns, is_python, kill_until_gone, ppid_and_state, tagged_pids
from .progress import STALL, files_state, wait_for


@dataclass
class Result:
    returncode: int | None  # None: it hung and was killed by the harness
    seconds: float  # from start() to the end
    since_fault: float | None  # from the injected fault to the end
    stdout: str
    stderr: str
    leftovers: list[str]  # rank processes still alive after the launcher had ended

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def error_lines(self) -> list[str]:
        """The ``hvdlm:`` lines the ranks wrote on stderr (launcher prefixes removed)."""
        lines = []
        for line in self.stderr.splitlines():
            line = re.sub(r"^\[\d+\]<stderr>:", "", line)
            if line.startswith("hvdlm:"):
                lines.append(line)
        return lines

    def rank_tracebacks(self) -> int:
        """Tracebacks the ranks printed (horovodrun's own, about its launcher, excluded)."""
        return sum("Traceback" in line for line in self.stderr.splitlines()
                   if re.match(r"^\[\d+\]<stderr>:", line) or "horovodrun" not in self.argv_text)

    argv_text: str = ""

    @property
    def hung(self) -> bool:
        return self.returncode is None


class Job:
    """One launched job; ``argv`` is the whole command (launcher included). What it writes under
    ``workdir`` (its output, and its out_dir when that lies there) is its progress."""

    def __init__(self, argv: list[str], workdir: Path, env: dict | None = None, tag: str | None = None,
                 marker: str | None = None):
        self.argv, self.workdir, self.marker = argv, Path(workdir), marker
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tag = tag or uuid.uuid4().hex[:12]
        self.env = dict(env or os.environ, HVDLM_FAULT_TAG=self.tag)
        self.fault_at: float | None = None
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Job":
        self._out = open(self.workdir / f"job-{self.tag}.out", "w+")
        self._err = open(self.workdir / f"job-{self.tag}.err", "w+")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(self.argv, stdout=self._out, stderr=self._err, env=self.env,
                                     start_new_session=True, stdin=subprocess.DEVNULL)
        return self

    def output(self) -> str:
        self._out.flush()
        self._err.flush()
        return Path(self._out.name).read_text() + Path(self._err.name).read_text()

    def rank_pid(self, rank: int, timeout: float = 120) -> int:
        """The process of ``rank``: the deepest tagged process whose launcher rank is ``rank``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            mine = {}
            for pid in tagged_pids(self.tag, self.marker):
                env = environ(pid)
                if any(env.get(v) == str(rank) for v in RANK_VARS):
                    mine[pid] = ppid_and_state(pid)[0]
            leaves = [pid for pid in mine if pid not in mine.values()]
            if len(leaves) == 1 and is_python(leaves[0]):
                return leaves[0]
            if self.proc.poll() is not None:
                raise RuntimeError(f"job ended before rank {rank} could be found:\n{self.output()}")
            time.sleep(0.2)
        raise RuntimeError(f"no single process for rank {rank} within {timeout}s")

    def pids_on_host(self, host: str) -> list[int]:
        """This job's Python processes on a test-cluster host (its network namespace), deepest first."""
        mine = [p for p in tagged_pids(self.tag, self.marker) if in_netns(p, host) and is_python(p)]
        parents = {ppid_and_state(p)[0] for p in mine}
        return sorted(mine, key=lambda p: p in parents)

    def wait_until(self, predicate: Callable[[], bool], stall: float = STALL, what: str = "it") -> None:
        """Until ``predicate()`` holds; fails after ``stall`` seconds in which the job wrote nothing
        (a hang), or when it ends first. Never a budget for the whole wait: a loaded machine only
        makes it longer."""
        def ended() -> str | None:
            if self.proc.poll() is None:
                return None
            return f"job ended (rc {self.proc.returncode})"
        try:
            wait_for(predicate, what, lambda: files_state([self.workdir]), stall=stall, ended=ended)
        except RuntimeError as e:
            raise RuntimeError(f"{e}:\n{self.output()}") from None

    def wait_for_output(self, pattern: str, stall: float = STALL) -> None:
        self.wait_until(lambda: re.search(pattern, self.output()) is not None, stall, repr(pattern))

    def inject(self, pid: int, sig: int) -> None:
        """Send ``sig`` to ``pid`` and start the clock of ``Result.since_fault``."""
        self.fault_at = time.monotonic()
        os.kill(pid, sig)

    def mark_fault(self) -> None:
        self.fault_at = time.monotonic()

    def since_fault(self) -> float:
        return time.monotonic() - self.fault_at

    def wait(self, timeout: float) -> Result:
        """Wait for the job to end; past ``timeout`` it counts as hung and everything is killed."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = None
        end = time.monotonic()
        leftovers = []
        if rc is not None:
            time.sleep(0.5)
            leftovers = [f"{pid}: {cmdline(pid)[:200]}" for pid in tagged_pids(self.tag, self.marker) if is_python(pid)]
        self.stop()
        return Result(rc, end - self.started, None if self.fault_at is None else end - self.fault_at,
                      Path(self._out.name).read_text(), Path(self._err.name).read_text(), leftovers,
                      " ".join(self.argv))

    def stop(self) -> None:
        """Kill the launcher's session and every tagged process (stopped ones too), then reap."""
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
        kill_until_gone(lambda: tagged_pids(self.tag, self.marker))
        if self.proc:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for fh in (getattr(self, "_out", None), getattr(self, "_err", None)):
            if fh:
                fh.flush()
