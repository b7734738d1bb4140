"""The watchdog: every fault ends the job within a bounded time, with one line that names it.

A data-parallel job waits in every allreduce for its slowest rank, so a rank that stops (SIGSTOP,
a hung disk, a cut link) makes every other rank wait forever, silently: Horovod over MPI has no
timeout at all, Gloo's is 30 s and then every rank prints a traceback. Each rank therefore runs a
daemon thread that watches two things:

* **Its own progress.** The loop says what it is doing (``phase("data loading")``, ``"allreduce"``,
  ``"checkpointing"``, ...) and when a step completes. When nothing moves for longer than the
  limit, the rank ends itself. The limit is ``--step_timeout`` seconds, or by default
  ``max(60 s, 10 x the median step time)``, measured after the first steps; until then (start-up,
  the first allreduce) it is 300 s, and starting up and checkpointing always get at least 300 s.
* **Its peers.** Every rank sends a small UDP heartbeat (its step and phase) to rank 0 twice a
  second, and rank 0 answers with what it knows of everyone. A peer that has been silent for
  ``--peer_timeout`` seconds (default 20) is stopped, hung in the kernel, dead or cut off; a peer
  whose process is gone (seen directly on the same host) is gone. The heartbeat thread runs
  while the main thread computes or waits (torch and Horovod release the GIL), so a long step
  or a slow checkpoint write is not mistaken for a dead rank.

When it fires, the rank writes the details (the reason, every peer's last step and phase, the
stacks of all its threads) to ``<out_dir>/error-rank<R>.log``, tells the other ranks, and exits
with status 3 (``EXIT_STALLED``); the launcher (horovodrun, mpirun, srun) sees the non-zero
status and ends the rest. Exactly one rank prints the one line: rank 0, or rank 1 when rank 0 is
the one at fault; a rank whose peer already reported the cause exits without a word.
"""

from __future__ import annotations

import fcntl
import faulthandler
import json
import os
import select
import signal
import socket
import statistics
import struct
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

EXIT_STALLED = 3  # ended because a rank stalled, or a peer stalled, died or was cut off

FLOOR_SECONDS = 60.0  # the automatic step limit is never shorter than this
STEP_FACTOR = 10.0  # ... and else this many median steps
STARTUP_SECONDS = 300.0  # before the step time is measured, and while checkpointing
WARMUP_STEPS = 3  # steps not measured (first allreduces, allocator warm-up)
INTERVAL = 0.5  # seconds between heartbeats

# Phases in which a rank waits on its peers: a rank stuck there is a victim, not the cause.
WAITING = {"allreduce", "starting up"}

_current: "Watchdog | None" = None


def current() -> "Watchdog | None":
    """The running watchdog of this process, if any (the CLI asks it who failed)."""
    return _current


def beat() -> None:
    """Progress inside a long phase (an evaluation batch), for code that has no watchdog at hand."""
    if _current is not None:
        _current.beat()


class Idle:
    """What the loop talks to with ``--watchdog false``."""

    def phase(self, name: str) -> None:
        pass

    def beat(self) -> None:
        pass

    def step_done(self, step: int) -> None:
        pass

    def moved(self, rank: int, size: int) -> None:
        pass

    def stop(self, why: str = "done") -> None:
        pass


def start(world, cfg, exchange: Callable[[dict], list[dict]]) -> "Watchdog | Idle":
    """Start this rank's watchdog. ``exchange`` gathers every rank's address (a Horovod
    allgather, from distributed.py); under elastic training ranks come and go, so there only the
    rank's own progress is watched."""
    d = cfg.distributed
    if not d.watchdog:
        return Idle()
    w = Watchdog(world.rank, world.size, world.host, cfg.train.out_dir, d.step_timeout, d.peer_timeout,
                 peers=not d.elastic)
    if w.use_peers:
        w.connect(exchange(w.address()))
    return w.start()


def _interface_addresses() -> list[str]:
    """IPv4 addresses of this host's interfaces (Linux), loopback last."""
    found: list[str] = []
    try:
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        return found
    with probe:
        for _, name in socket.if_nameindex():
            try:  # SIOCGIFADDR
                packed = fcntl.ioctl(probe.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
                found.append(socket.inet_ntoa(packed[20:24]))
            except OSError:
                continue
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            found.append(info[4][0])
    except OSError:
        pass
    unique = list(dict.fromkeys(found))
    return [a for a in unique if not a.startswith("127.")] + [a for a in unique if a.startswith("127.")]


def _machine_id() -> str:
    """Same value for processes of one host: same boot and pid namespace (they see each other's
    pids), and same network namespace (the hosts of slurm/cluster.sh share a kernel and its pids,
    but not a network: a rank there is judged by its heartbeats, as on another machine)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}/{os.stat('/proc/self/ns/net').st_ino}"
    except OSError:
        return uuid.uuid4().hex  # never matches another process: no pid checks


@dataclass
class Peer:
    rank: int
    host: str
    pid: int
    machine: str
    addresses: list[str]
    port: int
    last_seen: float = 0.0
    heard: int = 0  # heartbeats received (0: never, e.g. UDP blocked: then only progress is watched)
    step: int = 0
    phase: str = "starting up"
    left: str | None = None  # why it said goodbye: "done", or its failure message
    reply_to: tuple | None = None  # where its heartbeats came from

    @property
    def where(self) -> str:
        return f"rank {self.rank} on {self.host}"


@dataclass
class Verdict:
    """What to say about a fault: ``line`` to print (None: stay quiet), and why."""
    line: str | None
    cause: str
    blamed: list[int] = field(default_factory=list)


class Watchdog:
    def __init__(self, rank: int, size: int, host: str, out_dir: str, step_timeout: float | None,
                 peer_timeout: float, exit_fn: Callable[[int], None] = os._exit, peers: bool = True):
        self.rank, self.size, self.host, self.out_dir = rank, size, host, out_dir
        self.step_timeout, self.peer_timeout = step_timeout, peer_timeout
        self.exit_fn = exit_fn
        self.step, self.phase_name = 0, "starting up"
        self.progress_at = time.monotonic()
        self.step_started = self.progress_at
        self.step_times: deque[float] = deque(maxlen=50)
        self.steps_seen = 0
        self.job = ""
        self.peers: dict[int, Peer] = {}
        self.sock: socket.socket | None = None
        self.use_peers = peers and size > 1
        self.root_view: dict = {}  # non-root: rank 0's last answer (stale ranks, failures)
        self.signal_at: float | None = None
        self._stop = threading.Event()
        self._fired = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wake_r = self._wake_w = None
        self._last_tick = time.monotonic()
        self.killed: list[int] = []  # stopped peers this rank ended (see _kill_stopped)
        self._connected = time.monotonic()
        self._warned = False
        if self.use_peers:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind(("0.0.0.0", 0))
            self.sock.setblocking(False)

    # --- set-up: the address exchange goes through Horovod (distributed.py) ---------------------
    def address(self) -> dict:
        return {"rank": self.rank, "host": self.host, "pid": os.getpid(), "machine": _machine_id(),
                "addresses": _interface_addresses(), "port": self.sock.getsockname()[1] if self.sock else 0,
                "job": uuid.uuid4().hex}

    def connect(self, everyone: list[dict]) -> None:
        """Learn every rank's address (the same list on every rank); rank 0's token names the job."""
        self.job = everyone[0]["job"]
        now = self._connected = time.monotonic()
        for a in everyone:
            if a["rank"] != self.rank:
                self.peers[a["rank"]] = Peer(a["rank"], a["host"], a["pid"], a["machine"], a["addresses"],
                                             a["port"], last_seen=now)

    def start(self) -> "Watchdog":
        global _current
        _current = self
        if threading.current_thread() is threading.main_thread():
            # A signal that arrives while the main thread is blocked in a collective (the launcher
            # ending the job after a rank died) is seen here at once: Python would only run its
            # handler after the collective returns, which it never does.
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_r, False)
            os.set_blocking(self._wake_w, False)
            signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._run, name="hvdlm-watchdog", daemon=True)
        self._thread.start()
        return self

    # --- what the training loop calls -----------------------------------------------------------
    def phase(self, name: str) -> None:
        self.phase_name = name
        self.progress_at = time.monotonic()

    def beat(self) -> None:
        """Progress inside a long phase (an evaluation batch)."""
        self.progress_at = time.monotonic()

    def step_done(self, step: int) -> None:
        now = time.monotonic()
        self.steps_seen += 1
        if self.steps_seen > WARMUP_STEPS:
            self.step_times.append(now - self.step_started)
        self.step, self.step_started, self.progress_at = step, now, now

    def moved(self, rank: int, size: int) -> None:
        """Under elastic training: this process's rank and the world size after a reset."""
        self.rank, self.size = rank, size

    def stop(self, why: str = "done") -> None:
        """Stop watching; tell the peers this rank leaves (so they do not take it for dead)."""
        global _current
        if self._stop.is_set():
            return
        self._stop.set()
        self._send_all({"bye": why})
        if self._wake_w is not None and threading.current_thread() is threading.main_thread():
            try:
                signal.set_wakeup_fd(-1)
            except ValueError:
                pass
        if _current is self:
            _current = None

    # --- limits ---------------------------------------------------------------------------------
    def limit(self) -> float:
        """Seconds without progress before this rank ends the job. Starting up (imports, reading
        and checking data, the first collectives) and writing a checkpoint get at least
        STARTUP_SECONDS, whatever ``--step_timeout`` says."""
        if self.step_timeout:
            base = self.step_timeout
        elif len(self.step_times) >= WARMUP_STEPS:
            base = max(FLOOR_SECONDS, STEP_FACTOR * statistics.median(self.step_times))
        else:
            base = STARTUP_SECONDS
        if self.phase_name in ("checkpointing", "starting up"):
            return max(base, STARTUP_SECONDS)
        return base

    # --- the thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        next_beat = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now - self._last_tick > 5 * INTERVAL + 2:
                self._resumed(now)  # this whole process was stopped (SIGSTOP, a suspended job)
            self._last_tick = now
            if now >= next_beat:
                self._heartbeat()
                next_beat = now + INTERVAL
            self._receive(timeout=max(0.0, min(INTERVAL / 2, next_beat - time.monotonic())))
            if not self._stop.is_set():
                self._check(time.monotonic())

    def _resumed(self, now: float) -> None:
        """After this process was stopped, everybody looks silent: start counting afresh."""
        self.progress_at = max(self.progress_at, now)
        for p in self.peers.values():
            p.last_seen = max(p.last_seen, now)

    def _check(self, now: float) -> None:
        if self.use_peers:
            silent = [p for p in self._suspects(now) if p.heard and now - p.last_seen > self.peer_timeout]
            self._warn_unheard(now)
            if self.rank != 0 and any(p.rank == 0 for p in silent):
                silent = [self.peers[0]]  # without rank 0 we know nothing of the others
            if silent:
                return self.fire(self._silent_peers_line(silent, now), blamed=[p.rank for p in silent])
            if self.signal_at is not None and self.progress_at < self.signal_at and now - self.signal_at > 0.2:
                gone = self.gone_peers(now)  # the launcher is ending the job while we wait on a peer
                if gone:
                    return self.fire(self._gone_line(gone), blamed=[p.rank for p in gone])
        stuck = now - self.progress_at
        limit = self.limit()
        if stuck > limit:
            busy = [p for p in self._suspects(now) if p.phase not in WAITING and not p.left]
            if self.phase_name in WAITING and busy and stuck < limit + max(limit, STARTUP_SECONDS) + 15:
                # A peer is alive and busy in its own work (a long checkpoint write, a hung read): its
                # own watchdog, with that phase's limit, ends it and names it if it is stuck.
                return
            line = (f"hvdlm: rank {self.rank} on {self.host}: no progress for {stuck:.0f}s while {self.phase_name} "
                    f"at step {self.step} (limit {limit:.0f}s)")
            if self.phase_name in WAITING and busy:
                line += f"; {busy[0].where} is stuck while {busy[0].phase} at step {busy[0].step}"
            elif self.phase_name in WAITING and self.size > 1:
                line += "; every peer is alive and waiting too (a collective hung)"
            if self.phase_name not in WAITING:
                blamed = [self.rank]  # stuck in its own work: this rank names itself
            else:
                blamed = [busy[0].rank] if busy else []  # [] : a collective hung, rank 0 says so
            self.fire(line + f"; ending the job (details in {self._log_path()})", blamed=blamed)

    def _warn_unheard(self, now: float) -> None:
        """A peer never heard from (a firewall dropping UDP between hosts?) cannot be judged by its
        heartbeat: say so once, and rely on the progress limit for it."""
        if self._warned or now - self._connected < self.peer_timeout:
            return
        unheard = [p for p in self.peers.values() if not p.heard and not p.left and (self.rank == 0 or p.rank == 0)]
        if unheard:
            self._warned = True
            names = ", ".join(p.where for p in unheard[:4]) + (" ..." if len(unheard) > 4 else "")
            os.write(2, (f"hvdlm: warning: rank {self.rank} on {self.host} has had no heartbeat from {names} in "
                         f"{self.peer_timeout:.0f}s (UDP blocked between the hosts?); the watchdog now relies on "
                         "the progress limit alone for them\n").encode())

    def _suspects(self, now: float) -> list[Peer]:
        """Peers that have not left. Rank 0 hears from every rank; the others hear from rank 0,
        and of the rest through rank 0's answers (``_receive``)."""
        return [p for p in self.peers.values() if not p.left]

    def _silent_peers_line(self, silent: list[Peer], now: float) -> str:
        p = max(silent, key=lambda q: now - q.last_seen)
        others = f" (and {len(silent) - 1} more)" if len(silent) > 1 else ""
        return (f"hvdlm: {p.where}{others} has sent no heartbeat for {now - p.last_seen:.0f}s (the last one from "
                f"{p.phase} at step {p.step}): it is stopped, hung or cut off from rank {self.rank} on {self.host}; "
                f"ending the job (details in {self._log_path()})")

    def _gone_line(self, gone: list[Peer]) -> str:
        p = gone[0]
        how = "its process ended" if self._same_machine(p) else \
            f"no heartbeat for {time.monotonic() - p.last_seen:.1f}s"
        return (f"hvdlm: {p.where} is gone ({how}) while rank {self.rank} was in {self.phase_name} at step "
                f"{self.step}; ending the job (details in {self._log_path()})")

    def _kill_stopped(self, ranks: list[int]) -> None:
        """A blamed peer on this machine that is stopped (SIGSTOP) could keep the launcher waiting
        for it forever (srun without --kill-on-bad-exit): if it is still stopped 5 s after this
        rank exits, a detached ``sh`` ends it. (The launcher usually does first, and then reports
        this rank's exit, not a kill, as the first failure.)"""
        for r in ranks:
            p = self.peers.get(r)
            if p and self._same_machine(p) and _state(p.pid) in ("T", "t"):
                script = (f"sleep 5; grep -q '^State:[[:space:]]*[Tt]' /proc/{p.pid}/status 2>/dev/null "
                          f"&& kill -9 {p.pid}")
                try:
                    import subprocess

                    subprocess.Popen(["sh", "-c", script], start_new_session=True, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    self.killed.append(p.pid)
                except OSError:
                    pass

    def _same_machine(self, p: Peer) -> bool:
        return p.machine == _machine_id()

    def gone_peers(self, now: float) -> list[Peer]:
        """Peers known to be gone: a dead process on this machine, or silent for 3 heartbeats."""
        gone = []
        for p in self.peers.values():
            if p.left:
                continue
            if self._same_machine(p):
                try:
                    os.kill(p.pid, 0)
                    alive = not _is_zombie(p.pid)
                except ProcessLookupError:
                    alive = False
                except PermissionError:
                    alive = True
                if not alive:
                    gone.append(p)
            elif p.heard and now - p.last_seen > 3 * INTERVAL + 0.5:
                gone.append(p)
        return gone

    # --- the exits ------------------------------------------------------------------------------
    def reporter(self, blamed: list[int]) -> bool:
        """Whether this rank prints the line: itself when it is at fault (it is alive and knows
        what it was doing), else the lowest rank not at fault."""
        if self.rank in blamed:
            return True
        for r in range(self.size):
            if r not in blamed:
                return r == self.rank
        return False

    def announced_failure(self) -> tuple[int, str] | None:
        """A peer that already said why it failed (it printed the line)."""
        for p in self.peers.values():
            if p.left and p.left != "done":
                return p.rank, p.left
        return None

    def fire(self, line: str, blamed: list[int]) -> None:
        """Write the details, tell the peers, print the line if it is ours, and exit."""
        if not self._fired.acquire(blocking=False):
            return
        quiet = self.announced_failure() is not None or not self.reporter(blamed)
        self._kill_stopped(blamed)
        self.write_log(line)
        self._send_all({"bye": line})
        if not quiet:
            os.write(2, (line + "\n").encode())
        _flush_stdout()
        self.exit_fn(EXIT_STALLED)

    def explain_peer_failure(self, wait: float = 3.0) -> Verdict:
        """A collective failed because a peer went away (Gloo): who, and whether this rank says so."""
        deadline = time.monotonic() + wait
        while True:
            now = time.monotonic()
            told = self.announced_failure()
            if told:
                return Verdict(None, f"rank {told[0]} failed: {told[1]}", [told[0]])
            gone = self.gone_peers(now)
            if gone:
                line = self._gone_line(gone)
                return Verdict(line if self.reporter([p.rank for p in gone]) else None, line, [p.rank for p in gone])
            if now >= deadline:
                return Verdict("", "no peer is known to have failed", [])
            time.sleep(0.05)

    def write_log(self, reason: str) -> Path | None:
        path = self._log_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            now = time.monotonic()
            with open(path, "w") as fh:
                fh.write(f"{reason}\n\nrank {self.rank} of {self.size} on {self.host} (pid {os.getpid()}), "
                         f"step {self.step}, phase {self.phase_name}, no progress for {now - self.progress_at:.1f}s, "
                         f"limit {self.limit():.0f}s, peer timeout {self.peer_timeout:.0f}s\n")
                if self.step_times:
                    fh.write(f"median step {statistics.median(self.step_times):.4f}s over {len(self.step_times)} steps\n")
                fh.write("\npeers (rank, host, pid, heartbeats heard, last heard, step, phase, left):\n")
                for p in sorted(self.peers.values(), key=lambda q: q.rank):
                    fh.write(f"  {p.rank} {p.host} {p.pid} {p.heard} {now - p.last_seen:.1f}s ago step {p.step} "
                             f"{p.phase!r} {p.left or ''}\n")
                if self.root_view:
                    fh.write(f"rank 0's view: {json.dumps(self.root_view)}\n")
                if self.killed:
                    fh.write(f"stopped peer process(es) {self.killed}: killed 5 s after this exit unless the "
                             "launcher ends them first\n")
                fh.write("\nstacks of this rank's threads:\n")
                fh.flush()
                faulthandler.dump_traceback(fh, all_threads=True)
            return path
        except OSError:
            return None

    def _log_path(self) -> Path:
        return Path(self.out_dir or ".") / f"error-rank{self.rank}.log"

    # --- the wire -------------------------------------------------------------------------------
    def _message(self, **extra) -> bytes:
        return json.dumps({"j": self.job, "r": self.rank, "s": self.step, "p": self.phase_name, **extra}).encode()

    def _heartbeat(self) -> None:
        if not self.use_peers or not self.job:
            return
        if self.rank != 0:
            root = self.peers.get(0)
            if root:
                self._send_to(root, self._message())

    def _send_to(self, p: Peer, payload: bytes) -> None:
        if p.reply_to:
            targets = [p.reply_to]
        else:  # until it has answered: every address it has, loopback only on its own machine
            local = self._same_machine(p)
            targets = [(a, p.port) for a in p.addresses if local or not a.startswith("127.")]
        for t in targets:
            try:
                self.sock.sendto(payload, t)
            except OSError:
                pass

    def _send_all(self, extra: dict) -> None:
        if not self.use_peers or not self.job:
            return
        payload = self._message(**extra)
        for p in self.peers.values():
            if self.rank == 0 or p.rank == 0:
                self._send_to(p, payload)

    def _receive(self, timeout: float) -> None:
        fds = [self.sock] if self.sock else []
        if self._wake_r is not None:
            fds.append(self._wake_r)
        if not fds:
            time.sleep(timeout)
            return
        try:
            ready, _, _ = select.select(fds, [], [], timeout)
        except (OSError, ValueError):
            return
        if self._wake_r in ready:
            try:
                if os.read(self._wake_r, 64):
                    self.signal_at = time.monotonic()
            except OSError:
                pass
        if self.sock not in ready:
            return
        while True:
            try:
                data, src = self.sock.recvfrom(65536)
            except (BlockingIOError, OSError):
                return
            try:
                msg = json.loads(data)
                if msg.get("j") != self.job:
                    continue
                peer = self.peers.get(int(msg["r"]))
            except (ValueError, KeyError, TypeError):
                continue
            if peer is None:
                continue
            peer.last_seen, peer.step, peer.phase, peer.reply_to = time.monotonic(), msg["s"], msg["p"], src
            peer.heard += 1
            if "bye" in msg:
                peer.left = msg["bye"]
            if "view" in msg:
                self._learn_from_root(msg["view"])
            if self.rank == 0 and "bye" not in msg:
                self.sock.sendto(self._message(view=self._view()), src)

    def _learn_from_root(self, view: dict) -> None:
        """A non-root rank learns of the other non-root ranks through rank 0."""
        now = time.monotonic()
        silent = {int(r): age for r, age in view.get("silent", {}).items()}
        failed = {int(r): text for r, text in view.get("failed", {}).items()}
        self.root_view = {"silent": silent, "failed": failed}
        for p in self.peers.values():
            if p.rank in (0, self.rank):
                continue
            p.last_seen = now - silent.get(p.rank, 0.0)
            p.heard += 1  # rank 0 vouches for it
            if p.rank in failed:
                p.left = failed[p.rank]

    def _view(self) -> dict:
        """Rank 0's answer: who has been silent for a while, and who failed (and why)."""
        now = time.monotonic()
        silent = {p.rank: round(now - p.last_seen, 1) for p in self.peers.values()
                  if p.heard and not p.left and now - p.last_seen > 4 * INTERVAL}
        failed = {p.rank: p.left for p in self.peers.values() if p.left and p.left != "done"}
        return {"silent": silent, "failed": failed}


def _state(pid: int) -> str:
    """The process state letter from /proc (R, S, D, T, Z, ...), or "" when unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def _is_zombie(pid: int) -> bool:
    return _state(pid) in ("Z", "X")


def _flush_stdout(timeout: float = 1.0) -> None:
    """Flush Python's stdout unless the main thread holds it (then give up: we are exiting)."""
    t = threading.Thread(target=lambda: sys.stdout.flush(), daemon=True)
    t.start()
    t.join(timeout)
