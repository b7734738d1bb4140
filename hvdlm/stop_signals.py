"""SIGUSR1 and SIGTERM, caught from the first moment of ``hvdlm train``.

SLURM's warning signal can arrive while a rank is still importing torch or starting Horovod; with
the default action it would kill the rank before any checkpoint logic exists. ``install()`` runs
first thing in the CLI (this module imports nothing heavy) and only records the signal; the
training loop reads it (``distributed.StopSignals``) and stops every rank at the same step.
A second signal of the same kind ends the process at once, as without the handler.
"""

from __future__ import annotations

import math
import os
import signal

SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
_received = 0
_previous: dict = {}


def _on_signal(signum, frame) -> None:
    global _received
    if _received == signum:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    _received = signum


def install() -> None:
    """Record SIGUSR1/SIGTERM instead of dying of them (idempotent)."""
    for sig in SIGNALS:
        if sig not in _previous:
            _previous[sig] = signal.signal(sig, _on_signal)


def restore() -> None:
    """Put back the handlers that were there before ``install()``."""
    for sig, handler in _previous.items():
        signal.signal(sig, handler)
    _previous.clear()


def received() -> int:
    """The number of the last signal recorded, or 0."""
    return _received


MAX_CHECK_LAG = 1000  # steps between two comparisons of the ranks' signals, at most


def check_lag(cycle_s: float, fastest_step_s: float) -> int:
    """How many steps apart the ranks compare their signals (``distributed.StopSignals``): enough
    that the comparison, a one-number allreduce Horovod serves at its next cycle, is back before it
    is read (two cycles' worth of the fastest rank's steps), so no step waits for it; one step
    where a step is longer than that. A signal takes effect at the next comparison."""
    if fastest_step_s <= 0:
        return 1
    return max(1, min(MAX_CHECK_LAG, math.ceil(2 * cycle_s / fastest_step_s)))
