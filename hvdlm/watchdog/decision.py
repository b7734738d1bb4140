"""The watchdog's decision: a pure function of what this rank knows (its progress, its phase, its
step times, each peer's last heartbeat and reported state, the clock): keep waiting, or end the
job with one line and an exit status. No threads, sockets or /proc here: the thread gathers the
facts (watch.py) and acts on the verdict."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Sequence

from hvdlm.watchdog import messages

EXIT_STALLED = 3  # ended because a rank stalled, or a peer stalled, died or was cut off

FLOOR_SECONDS = 60.0  # the automatic step limit is never shorter than this
STEP_FACTOR = 10.0  # ... and else this many median steps
STARTUP_SECONDS = 300.0  # before the step time is measured, and while checkpointing
WARMUP_STEPS = 3  # steps not measured (first allreduces, allocator warm-up)
INTERVAL = 0.5  # seconds between heartbeats

# Phases in which a rank waits on its peers: a rank stuck there is a victim, not the cause.
WAITING = {"allreduce", "starting up"}


@dataclass
class Peer:
    """What this rank knows of one peer: where it is (from the address exchange) and what its
    heartbeats (or rank 0's answers) last said."""
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


@dataclass(frozen=True)
class Knowledge:
    """Everything the decision reads, as of one moment (times are time.monotonic() seconds)."""
    rank: int
    size: int
    host: str
    phase: str
    step: int
    progress_at: float  # the last sign of progress: a phase began, a step ended, a beat
    step_times: Sequence[float] = ()  # measured step times (after the warm-up steps)
    step_timeout: float | None = None  # --step_timeout; None: automatic
    peer_timeout: float = 20.0
    watch_peers: bool = False  # heartbeats are exchanged (not elastic, more than one rank)
    peers: Sequence[Peer] = ()
    local: frozenset[int] = frozenset()  # peers on this machine: judged by their process too
    ended: frozenset[int] = frozenset()  # peers on this machine whose process is gone (looked up when asked)
    connected_at: float = 0.0  # when the addresses were exchanged
    signal_at: float | None = None  # when a signal arrived (the launcher ending the job)
    warned: bool = False  # the warning about unheard peers was given
    log: str = "error-rank0.log"  # where the details go (named in the line)


@dataclass(frozen=True)
class Decision:
    """Keep waiting (``status`` None), or end with ``status`` after writing ``line`` to the log and
    printing it when this rank ``speaks``. ``warning``: a line to print once, whatever the decision."""
    line: str | None = None
    status: int | None = None
    blamed: tuple[int, ...] = ()
    speaks: bool = False
    warning: str | None = None


@dataclass
class Verdict:
    """What to say about a fault: ``line`` to print (None: stay quiet), and why."""
    line: str | None
    cause: str
    blamed: list[int] = field(default_factory=list)


def limit(phase: str, step_times: Sequence[float], step_timeout: float | None) -> float:
    """Seconds without progress before this rank ends the job. Starting up (imports, reading
    and checking data, the first collectives) and writing a checkpoint get at least
    STARTUP_SECONDS, whatever ``--step_timeout`` says."""
    if step_timeout:
        base = step_timeout
    elif len(step_times) >= WARMUP_STEPS:
        base = max(FLOOR_SECONDS, STEP_FACTOR * statistics.median(step_times))
    else:
        base = STARTUP_SECONDS
    if phase in ("checkpointing", "starting up"):
        return max(base, STARTUP_SECONDS)
    return base


def reporter(rank: int, size: int, blamed: Sequence[int]) -> bool:
    """Whether this rank prints the line: itself when it is at fault (it is alive and knows what
    it was doing), else the lowest rank not at fault."""
    if rank in blamed:
        return True
    for r in range(size):
        if r not in blamed:
            return r == rank
    return False


def announced_failure(peers: Sequence[Peer]) -> tuple[int, str] | None:
    """A peer that already said why it failed (it printed the line)."""
    for p in peers:
        if p.left and p.left != "done":
            return p.rank, p.left
    return None


def gone_peers(k: Knowledge, now: float) -> list[Peer]:
    """Peers known to be gone: a dead process on this machine, or silent for 3 heartbeats."""
    gone = []
    for p in k.peers:
        if p.left:
            continue
        if p.rank in k.local:
            if p.rank in k.ended:
                gone.append(p)
        elif p.heard and now - p.last_seen > 3 * INTERVAL + 0.5:
            gone.append(p)
    return gone


def speaks(k: Knowledge, blamed: Sequence[int]) -> bool:
    """Whether this rank prints the line of a fault: no peer has said why it failed, and this rank
    is the reporter."""
    return announced_failure(k.peers) is None and reporter(k.rank, k.size, blamed)


def _end(k: Knowledge, line: str, blamed: list[int], warning: str | None = None) -> Decision:
    return Decision(line, EXIT_STALLED, tuple(blamed), speaks(k, blamed), warning)


def _gone_line(k: Knowledge, gone: list[Peer], now: float) -> str:
    return messages.gone_line(gone[0], gone[0].rank in k.local, now, k.rank, k.phase, k.step, k.log)


def _unheard_warning(k: Knowledge, now: float) -> str | None:
    """A peer never heard from (a firewall dropping UDP between hosts?) cannot be judged by its
    heartbeat: say so once, and rely on the progress limit for it."""
    if k.warned or now - k.connected_at < k.peer_timeout:
        return None
    unheard = [p for p in k.peers if not p.heard and not p.left and (k.rank == 0 or p.rank == 0)]
    return messages.unheard_warning(unheard, k.rank, k.host, k.peer_timeout) if unheard else None


def decide(k: Knowledge, now: float) -> Decision:
    """Keep waiting, or end the job: a peer silent past the peer timeout, a peer gone while a
    signal says the launcher is ending the job, or no progress here past the limit."""
    # Rank 0 hears from every rank; the others hear from rank 0, and of the rest through its answers.
    active = [p for p in k.peers if not p.left]
    warning = None
    if k.watch_peers:
        warning = _unheard_warning(k, now)
        silent = [p for p in active if p.heard and now - p.last_seen > k.peer_timeout]
        if k.rank != 0 and any(p.rank == 0 for p in silent):
            silent = [p for p in silent if p.rank == 0]  # without rank 0 we know nothing of the others
        if silent:
            return _end(k, messages.silent_peers_line(silent, now, k.rank, k.host, k.log), [p.rank for p in silent],
                        warning)
        if k.signal_at is not None and k.progress_at < k.signal_at and now - k.signal_at > 0.2:
            gone = gone_peers(k, now)  # the launcher is ending the job while we wait on a peer
            if gone:
                return _end(k, _gone_line(k, gone, now), [p.rank for p in gone], warning)
    stuck = now - k.progress_at
    lim = limit(k.phase, k.step_times, k.step_timeout)
    if stuck <= lim:
        return Decision(warning=warning)
    waiting = k.phase in WAITING
    busy = [p for p in active if p.phase not in WAITING]
    if waiting and busy and stuck < lim + max(lim, STARTUP_SECONDS) + 15:
        # A peer is alive and busy in its own work (a long checkpoint write, a hung read): its
        # own watchdog, with that phase's limit, ends it and names it if it is stuck.
        return Decision(warning=warning)
    line = messages.stall_line(k.rank, k.host, stuck, k.phase, k.step, lim, k.log,
                             busy=busy[0] if waiting and busy else None, all_waiting=waiting and k.size > 1)
    if not waiting:
        blamed = [k.rank]  # stuck in its own work: this rank names itself
    else:
        blamed = [busy[0].rank] if busy else []  # [] : a collective hung, rank 0 says so
    return _end(k, line, blamed, warning)


def explain(k: Knowledge, now: float) -> Verdict | None:
    """A collective failed because a peer went away (Gloo): who, and whether this rank says so;
    None while nothing is known yet."""
    told = announced_failure(k.peers)
    if told:
        return Verdict(None, f"rank {told[0]} failed: {told[1]}", [told[0]])
    gone = gone_peers(k, now)
    if gone:
        line = _gone_line(k, gone, now)
        blamed = [p.rank for p in gone]
        return Verdict(line if reporter(k.rank, k.size, blamed) else None, line, blamed)
    return None
