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

Modules, one concern each: ``decision`` (the verdict, a pure function of what the rank knows),
``watch`` (the thread that gathers the facts and acts on the verdict), ``wire`` (the UDP
heartbeats), ``procfs`` (what /proc says of processes on this host), ``messages`` (the line, the
warning, the details file).
"""

from hvdlm.watchdog.decision import (EXIT_STALLED, FLOOR_SECONDS, INTERVAL, STARTUP_SECONDS, STEP_FACTOR, WAITING,
                                     WARMUP_STEPS, Decision, Knowledge, Peer, Verdict, decide, explain, limit)
from hvdlm.watchdog.watch import Idle, Watchdog, beat, current, start

__all__ = ["EXIT_STALLED", "FLOOR_SECONDS", "INTERVAL", "STARTUP_SECONDS", "STEP_FACTOR", "WAITING", "WARMUP_STEPS",
           "Decision", "Idle", "Knowledge", "Peer", "Verdict", "Watchdog", "beat", "current", "decide", "explain",
           "limit", "start"]
