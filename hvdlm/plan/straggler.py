"""The wait for the slowest rank: a term that grows with the rank count.

A blocking collective ends when the last rank reaches it. If each rank's compute per step varies
with standard deviation sigma (independently between ranks), a rank waits on average for
max(c_1 .. c_N) - c_own, which is sigma x e(N) with e(N) the expected maximum of N standard
normal variables (0 at N = 1; 0.56 at 2, 1.03 at 4, 3.2 at 1,024: it grows as sqrt(2 ln N)).

Between two blocking points g steps apart, the ranks drift apart by the sum of g steps' compute,
whose spread is sigma x sqrt(g): the wait at that point is sigma x sqrt(g) x e(N). Every-step sync
blocks every step (the gradients' allreduce). local_sgd/diloco block at the period's exchange and
at every logged step (the loss's average, ``methods.logged_loss``); the stop check's allreduce is
read ``check_lag`` steps late, so it binds only a rank more than that many steps ahead: not counted.

sigma comes from a measured run (``--metrics``, ``--measure``: the spread of one rank's compute
over its steps, ``bench.train.figures``) or ``--jitter_ms``; the plan assumes none otherwise.
"""

from __future__ import annotations

import math
from functools import lru_cache


@lru_cache(maxsize=None)
def expected_max(n: int) -> float:
    """E[max of n independent standard normals], by the trapezoid rule over [-9, 9] (error < 1e-6)."""
    if n <= 1:
        return 0.0
    steps, lo, hi = 4000, -9.0, 9.0
    h = (hi - lo) / steps
    total = 0.0
    for i in range(steps + 1):
        x = lo + i * h
        cdf = 0.5 * (1 + math.erf(x / math.sqrt(2)))
        pdf = math.exp(-x * x / 2) / math.sqrt(2 * math.pi)
        total += (0.5 if i in (0, steps) else 1.0) * x * n * pdf * cdf ** (n - 1)
    return total * h


def gaps(every: int, log_interval: int) -> list[int]:
    """Steps between the blocking points of one period of ``every`` steps (1: every step blocks),
    with a logged step every ``log_interval`` steps (aligned with the period's start)."""
    points = sorted({k for k in range(1, every + 1) if k % log_interval == 0 or k == every})
    return [b - a for a, b in zip([0] + points, points)]


def wait(sigma: float, ranks: int, every: int = 1, log_interval: int = 1) -> float:
    """Seconds per step one rank waits for the slowest: sigma x e(N) x sum of sqrt(gap), / period."""
    if sigma <= 0 or ranks <= 1:
        return 0.0
    return sigma * expected_max(ranks) * sum(math.sqrt(g) for g in gaps(every, log_interval)) / every
