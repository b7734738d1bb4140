"""The watchdog thread of one rank: it keeps what the rank knows up to date (the loop's calls,
heartbeats over the wire, /proc for peers on this machine), asks ``decision.decide`` twice a
heartbeat, and acts on the verdict (the details file, the goodbye, the line, the exit)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import deque
from typing import Callable

from hvdlm.watchdog import decision, messages, procfs, wire
from hvdlm.watchdog.decision import (EXIT_STALLED, INTERVAL, WARMUP_STEPS, Knowledge, Peer, Verdict, decide,
                                     explain, limit)

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
    allgather, from distributed/); under elastic training ranks come and go, so there only the
    rank's own progress is watched."""
    d = cfg.distributed
    if not d.watchdog:
        return Idle()
    w = Watchdog(world.rank, world.size, world.host, cfg.train.out_dir, d.step_timeout, d.peer_timeout,
                 peers=not d.elastic)
    if w.use_peers:
        w.connect(exchange(w.address()))
    return w.start()


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
        self.local: frozenset[int] = frozenset()  # peers on this machine
        self.use_peers = peers and size > 1
        self.wire = wire.Wire(self.use_peers)
        self.root_view: dict = {}  # non-root: rank 0's last answer (stale ranks, failures)
        self.signal_at: float | None = None
        self._stop = threading.Event()
        self._fired = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wake_w: int | None = None
        self._last_tick = time.monotonic()
        self.killed: list[int] = []  # stopped peers this rank ended (see _kill_stopped)
        self._connected = time.monotonic()
        self._warned = False

    # --- set-up: the address exchange goes through Horovod (distributed/) ----------------------
    def address(self) -> dict:
        return self.wire.address(self.rank, self.host)

    def connect(self, everyone: list[dict]) -> None:
        """Learn every rank's address (the same list on every rank); rank 0's token names the job."""
        self.job = everyone[0]["job"]
        now = self._connected = time.monotonic()
        for a in everyone:
            if a["rank"] != self.rank:
                self.peers[a["rank"]] = Peer(a["rank"], a["host"], a["pid"], a["machine"], a["addresses"],
                                             a["port"], last_seen=now)
        self.local = frozenset(p.rank for p in self.peers.values() if p.machine == procfs.machine_id())

    def start(self) -> "Watchdog":
        global _current
        _current = self
        if threading.current_thread() is threading.main_thread():
            # A signal that arrives while the main thread is blocked in a collective (the launcher
            # ending the job after a rank died) is seen here at once: Python would only run its
            # handler after the collective returns, which it never does.
            self.wire.wake_r, self._wake_w = os.pipe()
            os.set_blocking(self.wire.wake_r, False)
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

    def limit(self) -> float:
        return limit(self.phase_name, self.step_times, self.step_timeout)

    # --- what the rank knows ----------------------------------------------------------------------
    def knowledge(self, ended: bool = False) -> Knowledge:
        """A snapshot for the decision; ``ended``: look up which local peers' processes are gone."""
        peers = tuple(self.peers.values())
        gone = frozenset(p.rank for p in peers if p.rank in self.local and procfs.process_ended(p.pid)) \
            if ended else frozenset()
        return Knowledge(self.rank, self.size, self.host, self.phase_name, self.step, self.progress_at,
                         tuple(self.step_times), self.step_timeout, self.peer_timeout, self.use_peers, peers,
                         self.local, gone, self._connected, self.signal_at, self._warned, str(self._log_path()))

    # --- the thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        next_beat = 0.0
        while not self._stop.is_set():
            now = self._tick()
            if now >= next_beat:
                self._heartbeat()
                next_beat = now + INTERVAL
            self._receive(timeout=max(0.0, min(INTERVAL / 2, next_beat - time.monotonic())))
            # Again between the wait and the check: a SIGSTOP that falls just after the wait
            # returned would otherwise be judged with the peers' pre-stop heartbeats, and a rank
            # whose peer's goodbye is still unread in the socket would print a second line.
            now = self._tick()
            if not self._stop.is_set():
                self._check(now)

    def _tick(self) -> float:
        """The clock, read at each turn of the thread; a gap no turn could take normally means the
        whole process was stopped (SIGSTOP, a suspended job)."""
        now = time.monotonic()
        if now - self._last_tick > 5 * INTERVAL + 2:
            self._resumed(now)
        self._last_tick = now
        return now

    def _resumed(self, now: float) -> None:
        """After this process was stopped, everybody looks silent: start counting afresh."""
        self.progress_at = max(self.progress_at, now)
        for p in self.peers.values():
            p.last_seen = max(p.last_seen, now)

    def _check(self, now: float) -> None:
        # /proc is read only once a signal says the launcher may be ending the job.
        d = decide(self.knowledge(ended=self.signal_at is not None), now)
        if d.warning:
            self._warned = True
            messages.say(d.warning)
        if d.status is not None:
            self.fire(d.line, list(d.blamed), speaks=d.speaks, status=d.status)

    # --- the exits ------------------------------------------------------------------------------
    def fire(self, line: str, blamed: list[int], speaks: bool | None = None, status: int = EXIT_STALLED) -> None:
        """Write the details, tell the peers, print the line if it is ours, and exit."""
        if not self._fired.acquire(blocking=False):
            return
        if speaks is None:
            speaks = decision.speaks(self.knowledge(), blamed)
        self._kill_stopped(blamed)
        self.write_log(line)
        self._send_all({"bye": line})
        if speaks:
            messages.say(line)
        messages.flush_stdout()
        self.exit_fn(status)

    def _kill_stopped(self, ranks: list[int]) -> None:
        """A blamed peer on this machine that is stopped (SIGSTOP) could keep the launcher waiting
        for it forever (srun without --kill-on-bad-exit): if it is still stopped 5 s after this
        rank exits, it is killed. (The launcher usually does first, and then reports this rank's
        exit, not a kill, as the first failure.)"""
        for r in ranks:
            p = self.peers.get(r)
            if p and r in self.local and procfs.is_stopped(p.pid) and procfs.kill_if_still_stopped(p.pid):
                self.killed.append(p.pid)

    def explain_peer_failure(self, wait: float = 3.0) -> Verdict:
        """A collective failed because a peer went away (Gloo): who, and whether this rank says so."""
        deadline = time.monotonic() + wait
        while True:
            now = time.monotonic()
            verdict = explain(self.knowledge(ended=True), now)
            if verdict is not None:
                return verdict
            if now >= deadline:
                return Verdict("", "no peer is known to have failed", [])
            time.sleep(0.05)

    def write_log(self, reason: str):
        return messages.write_log(self._log_path(), reason, self.knowledge(), self.limit(), time.monotonic(),
                                self.root_view, self.killed)

    def _log_path(self):
        return messages.log_path(self.out_dir, self.rank)

    # --- the wire -------------------------------------------------------------------------------
    def _message(self, **extra) -> bytes:
        return wire.message(self.job, self.rank, self.step, self.phase_name, **extra)

    def _heartbeat(self) -> None:
        if not self.use_peers or not self.job:
            return
        if self.rank != 0:
            root = self.peers.get(0)
            if root:
                self.wire.send_to(root, self._message())

    def _send_all(self, extra: dict) -> None:
        if not self.use_peers or not self.job:
            return
        payload = self._message(**extra)
        for p in self.peers.values():
            if self.rank == 0 or p.rank == 0:
                self.wire.send_to(p, payload)

    def _receive(self, timeout: float) -> None:
        signalled, datagrams = self.wire.wait(timeout)
        if signalled:
            self.signal_at = time.monotonic()
        for data, src in datagrams:
            msg = wire.decode(data, self.job)
            peer = self.peers.get(msg["r"]) if msg else None
            if peer is None:
                continue
            now = time.monotonic()
            peer.last_seen, peer.step, peer.phase, peer.reply_to = now, msg["s"], msg["p"], src
            peer.heard += 1
            if "bye" in msg:
                peer.left = msg["bye"]
            if "view" in msg:
                self.root_view = wire.learn_from_root(self.peers.values(), self.rank, msg["view"], now)
            if self.rank == 0 and "bye" not in msg:
                self.wire.reply(self._message(view=wire.view(self.peers.values(), now, INTERVAL)), src)
