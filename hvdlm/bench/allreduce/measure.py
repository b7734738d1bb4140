"""One backend at one size: time the calls, check the result, gather the figures of every rank."""

from __future__ import annotations

import time
from typing import Callable

import torch

from hvdlm.bench.allreduce.backends import Backend
from hvdlm.bench.allreduce.correctness import count_wrong, expected_pattern, fill_periodic, pattern_period, rank_pattern
from hvdlm.bench.allreduce.settings import Settings
from hvdlm.bench.allreduce.bandwidth import DTYPES, algbw, element_count


def time_calls(fn: Callable[[], object], warmup: int, iters: int,
               sync: Callable[[], None] = lambda: None) -> tuple[float, float, float]:
    """(avg, min, max) seconds of one synchronous call of ``fn`` after ``warmup`` untimed calls.
    One clock read per iteration: the iteration times add up to the loop's time exactly."""
    for _ in range(warmup):
        fn()
    sync()
    clock = time.perf_counter
    stamps = [0.0] * (iters + 1)
    stamps[0] = clock()
    for i in range(1, iters + 1):
        fn()
        sync()
        stamps[i] = clock()
    times = [b - a for a, b in zip(stamps, stamps[1:])]
    return sum(times) / len(times), min(times), max(times)


Gather = Callable[[list, str], list]  # (this rank's stats, a name) -> every rank's stats, on every rank


def measure(backend: Backend, nbytes: int, dtype: str, placement: str, s: Settings, rank: int, size: int,
            device: torch.device, gather: Gather) -> dict:
    """Time one backend at one size, then check its result; returns one row (the same on every rank)."""
    tdtype = DTYPES[dtype]
    count = element_count(nbytes, dtype)
    period = pattern_period(size, dtype)
    mine = rank_pattern(rank, period, tdtype)
    buf = fill_periodic(torch.empty(count, dtype=tdtype, device=device), mine)
    out = torch.empty_like(buf) if placement == "out" else None
    key = f"hvdlm.bench.{backend.name}.{dtype}.{placement}.{nbytes}"
    run = backend.bind(buf, out, key)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    t_avg, t_min, t_max = time_calls(run, s.warmup, s.iters, sync)

    # Correctness: fresh inputs (an in-place sweep has been summing into them), one more call.
    fill_periodic(buf, mine)
    result = run()
    sync()
    if s.corrupt and backend.op == "sum" and rank == size - 1:
        result.view(-1)[count // 2] += 1  # what a broken transport might do to one element
    expected = buf if backend.op == "copy" else expected_pattern(size, period, tdtype)
    wrong = count_wrong(result, expected)
    del result, out, buf, run

    everyone = gather([t_avg, t_min, t_max, float(wrong)], key + ".stats")
    t_avg, t_min, t_max = (max(r[i] for r in everyone) for i in range(3))
    wrong = int(sum(r[3] for r in everyone))
    alg = algbw(nbytes, t_avg)
    return {
        "backend": backend.name, "transport": backend.transport, "bytes": nbytes, "count": count,
        "dtype": dtype, "op": backend.op, "placement": placement,
        "time_avg_us": t_avg * 1e6, "time_min_us": t_min * 1e6, "time_max_us": t_max * 1e6,
        "algbw_GBps": alg / 1e9, "busbw_GBps": alg * backend.bus_factor(size) / 1e9,
        "wrong": wrong, "ranks": size, "warmup": s.warmup, "iters": s.iters,
    }


def horovod_gather(stats: list, key: str) -> list:
    import horovod.torch as hvd

    return hvd.allgather(torch.tensor([stats], dtype=torch.float64), name=key).tolist()
