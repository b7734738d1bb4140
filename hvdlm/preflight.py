"""``hvdlm preflight``: a one-minute network check of an allocation, before hours of training.

Launched like training, over MPI (``srun``, ``mpirun``, ``horovodrun --mpi``), with the same
ranks and hosts the training will use. Two measurements:

  point to point  Every pair of ranks exchanges ``--size`` bytes both ways at once (MPI
                  ``Isend``/``Irecv``, host memory), in rounds of disjoint pairs (a round-robin
                  tournament: n-1 rounds, each pair once, pairs of a round run at the same time,
                  rounds are separated by a barrier). A pair's figure is the median over
                  ``--iters`` exchanges of bytes / time, per direction, in GB/s.
                  A rank's figure is the upper median of its pairs with ranks on *other* hosts
                  (all pairs when there is one host): a rank on a host with a bad link has every
                  such pair slow, a healthy rank only the pairs with the bad host.
  allreduce       Horovod's allreduce of ``--size`` bytes of fp32 on the training device (NCCL on
                  GPUs, MPI or Gloo on CPUs): the slowest rank's median time, as
                  busbw = bytes / time x 2(n-1)/n, the figure nccl-tests reports.

It passes when the allreduce busbw is at least ``--min_busbw`` and every rank's point-to-point
figure at least ``--min_p2p`` (by default the same number: a ring allreduce cannot run faster
than its slowest link). Otherwise it prints one line naming the slow ranks and their hosts and
every rank exits with status 2. With exactly two hosts a slow pair cannot say which end is at
fault: the line names both. A partner that does not answer within ``--timeout`` seconds (a cut
link, a stuck node) ends the job with a line naming it, instead of a hang.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from hvdlm import launcher
from hvdlm.errors import HvdlmError
from hvdlm.units import bus_factor, parse_bytes

TAG = 4242


def parse_size(text: str) -> int:
    """'4M' -> 4194304 (K, M, G are binary), whole fp32 elements, 4 bytes to 1G."""
    value = parse_bytes(text, "--size")
    if value < 4 or value > 2 ** 30:
        raise HvdlmError(f"--size {text!r} is out of range: 4 bytes to 1G", everywhere=True)
    return value - value % 4  # whole fp32 elements for the allreduce


def human(nbytes: int) -> str:
    for unit, div in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if nbytes >= div and nbytes % div == 0:
            return f"{nbytes // div} {unit}"
    return f"{nbytes} B"


def tournament(n: int) -> list[list[tuple[int, int]]]:
    """Rounds of disjoint pairs in which every pair of ``n`` ranks meets exactly once (the circle
    method: rank 0 stays, the others rotate; with an odd ``n`` one rank sits out each round)."""
    players = list(range(n)) + ([None] if n % 2 else [])
    m = len(players)
    rounds = []
    for r in range(m - 1):
        rest = players[1:]
        rest = rest[-r:] + rest[:-r] if r else rest
        order = [players[0]] + rest
        pairs = [(order[i], order[m - 1 - i]) for i in range(m // 2)]
        rounds.append([tuple(sorted(p)) for p in pairs if None not in p])
    return rounds


def upper_median(values: list[float]) -> float:
    s = sorted(values)
    return s[len(s) // 2] if s else float("nan")


@dataclass
class Settings:
    size: int = 4 * 2 ** 20
    iters: int = 5
    warmup: int = 1
    min_busbw: float = 0.0  # GB/s; 0 = report only
    min_p2p: float | None = None  # GB/s; None = min_busbw
    timeout: float = 60.0
    device: str = "auto"
    json_path: str | None = None

    def validate(self) -> "Settings":
        if self.iters < 1:
            raise HvdlmError(f"--iters {self.iters} is out of range: at least 1", everywhere=True)
        if self.warmup < 0:
            raise HvdlmError(f"--warmup {self.warmup} is out of range: 0 or more", everywhere=True)
        if self.min_busbw < 0 or (self.min_p2p is not None and self.min_p2p < 0):
            raise HvdlmError("--min_busbw and --min_p2p are GB/s, 0 or more", everywhere=True)
        if self.timeout <= 0:
            raise HvdlmError(f"--timeout {self.timeout} is out of range: more than 0 seconds", everywhere=True)
        if self.device not in ("auto", "cpu", "cuda"):
            raise HvdlmError(f"--device {self.device!r}: choose auto, cpu or cuda", everywhere=True)
        return self

    @property
    def p2p_threshold(self) -> float:
        return self.min_busbw if self.min_p2p is None else self.min_p2p


@dataclass
class Result:
    ranks: int
    hosts: list[str]  # per rank
    pairs: dict[tuple[int, int], dict] = field(default_factory=dict)  # (a, b) -> {"gbps", "min_gbps"}
    per_rank: list[dict] = field(default_factory=list)
    allreduce: dict = field(default_factory=dict)
    slow: list[int] = field(default_factory=list)
    verdict: str = ""
    passed: bool = True


# ---------------------------------------------------------------------------------------------
# Analysis (pure: unit-tested without a launcher)

def rank_figures(n: int, hosts: list[str], pairs: dict[tuple[int, int], dict]) -> list[dict]:
    """Each rank's point-to-point figure: the upper median of its pairs with other hosts."""
    single_host = len(set(hosts)) == 1
    out = []
    for r in range(n):
        mine = [(b if a == r else a, v["gbps"]) for (a, b), v in pairs.items() if r in (a, b)]
        remote = [(p, g) for p, g in mine if single_host or hosts[p] != hosts[r]]
        worst = min(remote, key=lambda x: x[1]) if remote else (None, float("nan"))
        out.append({"rank": r, "host": hosts[r], "p2p_gbps": upper_median([g for _, g in remote]),
                    "worst_gbps": worst[1], "worst_partner": worst[0], "partners": len(remote)})
    return out


def ranks_text(ranks: list[int], hosts: list[str]) -> str:
    """'rank 1 on node2', 'ranks 2, 3 on node2 and rank 5 on node3'."""
    by_host: dict[str, list[int]] = {}
    for r in ranks:
        by_host.setdefault(hosts[r], []).append(r)
    parts = [f"rank{'s' if len(rs) > 1 else ''} {', '.join(map(str, rs))} on {h}" for h, rs in by_host.items()]
    return " and ".join(parts)


def judge(res: Result, s: Settings) -> Result:
    """Slow ranks and the one-line verdict."""
    busbw = res.allreduce.get("busbw_gbps", float("nan"))
    p2p_min = s.p2p_threshold
    figures = {f["rank"]: f["p2p_gbps"] for f in res.per_rank}
    res.slow = [r for r, g in figures.items() if p2p_min > 0 and g < p2p_min]
    ar_slow = s.min_busbw > 0 and busbw < s.min_busbw
    nhosts = len(set(res.hosts))
    ar_text = f"allreduce busbw {busbw:.3g} GB/s"
    threshold = f"threshold {s.min_busbw:g} GB/s" if s.min_busbw > 0 else f"p2p threshold {p2p_min:g} GB/s"
    healthy = [g for r, g in figures.items() if r not in res.slow]
    others = f" (the other ranks: {statistics.median(healthy):.3g} GB/s)" if healthy else ""
    if res.slow:
        res.passed = False
        slow_p2p = ", ".join(f"{figures[r]:.3g}" for r in res.slow[:4]) + (", ..." if len(res.slow) > 4 else "")
        what = "is" if len(res.slow) == 1 else "are"
        why = (f"point-to-point {slow_p2p} GB/s{others}; {ar_text}"
               + (f" < threshold {s.min_busbw:g} GB/s" if ar_slow else "")
               + (f"; p2p threshold {p2p_min:g} GB/s" if not ar_slow or s.min_p2p is not None else ""))
        if nhosts == 2 and {res.hosts[r] for r in res.slow} == set(res.hosts):
            res.verdict = (f"{ranks_text(res.slow, res.hosts)} {what} slow: {why}; with two hosts the check "
                           "cannot tell which end of the link is at fault")
        elif len(healthy) == 0:
            res.verdict = f"every rank is slow ({ranks_text(res.slow, res.hosts)}): {why}; the network itself?"
        else:
            bad_hosts = ",".join(dict.fromkeys(res.hosts[r] for r in res.slow))
            res.verdict = (f"{ranks_text(res.slow, res.hosts)} {what} slow: {why}; resubmit without it: "
                           f"sbatch --exclude={bad_hosts} ...")
    elif ar_slow:
        res.passed = False
        slowest = min(res.per_rank, key=lambda f: f["p2p_gbps"]) if res.per_rank else None
        hint = (f"; no rank stands out in point-to-point (slowest: rank {slowest['rank']} on {slowest['host']} at "
                f"{slowest['p2p_gbps']:.3g} GB/s)" if slowest else "")
        res.verdict = f"{ar_text} < {threshold}{hint}"
    else:
        slowest = min(res.per_rank, key=lambda f: f["p2p_gbps"]) if res.per_rank else None
        checked = f" >= {threshold}" if s.min_busbw > 0 else " (no threshold set: --min_busbw)"
        res.verdict = (f"{res.ranks} ranks on {nhosts} host{'s' if nhosts > 1 else ''}: {ar_text}{checked}"
                       + (f"; slowest point-to-point: rank {slowest['rank']} on {slowest['host']} at "
                          f"{slowest['p2p_gbps']:.3g} GB/s" if slowest else ""))
    return res


def table(res: Result, s: Settings) -> str:
    p2p_min = s.p2p_threshold
    lines = [f"{'rank':>5}  {'host':<16} {'p2p GB/s':>9} {'worst GB/s':>10}  {'with':<22} status"]
    for f in res.per_rank:
        partner = "" if f["worst_partner"] is None else f"rank {f['worst_partner']} ({res.hosts[f['worst_partner']]})"
        status = "SLOW" if f["rank"] in res.slow else ("ok" if p2p_min > 0 else "-")
        lines.append(f"{f['rank']:>5}  {f['host']:<16} {f['p2p_gbps']:>9.3g} {f['worst_gbps']:>10.3g}  "
                     f"{partner:<22} {status}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Measurement (inside the ranks)

class Unanswered(Exception):
    pass


def _wait(MPI, requests, deadline: float) -> None:
    while not MPI.Request.Testall(requests):
        if time.monotonic() > deadline:
            raise Unanswered()


def measure_pairs(comm, MPI, s: Settings, hosts: list[str]) -> dict[tuple[int, int], dict]:
    """Every pair's median per-direction bandwidth (GB/s), gathered on every rank."""
    import numpy as np

    rank, n = comm.Get_rank(), comm.Get_size()
    send = np.full(s.size, rank % 251, dtype=np.uint8)
    recv = np.empty(s.size, dtype=np.uint8)
    mine: dict[tuple[int, int], dict] = {}
    for pairs in tournament(n):
        barrier(comm, MPI, s, hosts)
        partner = next((b if a == rank else a for a, b in pairs if rank in (a, b)), None)
        if partner is None:
            continue
        times = []
        for i in range(s.warmup + s.iters):
            t0 = time.perf_counter()
            reqs = [comm.Irecv([recv, MPI.BYTE], source=partner, tag=TAG),
                    comm.Isend([send, MPI.BYTE], dest=partner, tag=TAG)]
            try:
                _wait(MPI, reqs, time.monotonic() + s.timeout)
            except Unanswered:
                unanswered(comm, rank, hosts, partner, s.timeout, "a point-to-point exchange")
            if i >= s.warmup:
                times.append(time.perf_counter() - t0)
        if recv[0] != partner % 251 or recv[-1] != partner % 251:
            raise RuntimeError(f"preflight: rank {rank} received corrupt data from rank {partner}")
        gbps = [s.size / t / 1e9 for t in times]
        mine[tuple(sorted((rank, partner)))] = {"gbps": statistics.median(gbps), "min_gbps": min(gbps)}
    everyone = comm.allgather(mine)
    pairs_all: dict[tuple[int, int], dict] = {}
    for d in everyone:  # both ends measured a pair: keep the lower (the slower side of the exchange)
        for k, v in d.items():
            if k not in pairs_all or v["gbps"] < pairs_all[k]["gbps"]:
                pairs_all[k] = v
    return pairs_all


def barrier(comm, MPI, s: Settings, hosts: list[str]) -> None:
    """A barrier that ends the job, naming this rank, instead of waiting forever."""
    try:
        _wait(MPI, [comm.Ibarrier()], time.monotonic() + s.timeout)
    except Unanswered:
        rank = comm.Get_rank()
        print(f"hvdlm: error: preflight: rank {rank} on {hosts[rank]}: not every rank reached the next round "
              f"within {s.timeout:g} s (a rank is stuck or its link is down)", file=sys.stderr, flush=True)
        comm.Abort(2)


def unanswered(comm, rank: int, hosts: list[str], partner: int, timeout: float, what: str) -> None:
    """A partner that does not answer: name it and end every rank (a blocked MPI request cannot be
    cancelled, and waiting is what the preflight exists to avoid)."""
    print(f"hvdlm: error: preflight: rank {partner} on {hosts[partner]} did not answer rank {rank} on "
          f"{hosts[rank]} within {timeout:g} s in {what}: its link is down or it is stuck; resubmit "
          f"without it: sbatch --exclude={hosts[partner]} ...", file=sys.stderr, flush=True)
    comm.Abort(2)


def measure_allreduce(s: Settings, comm, MPI) -> dict:
    """Horovod's allreduce of ``size`` bytes of fp32 on the training device, started and set up as
    training starts it (distributed.init: the CPU defaults, the thread count, the GPU per local
    rank); the slowest rank's median."""
    import torch

    from hvdlm import distributed

    use_cuda = s.device == "cuda" or (s.device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise HvdlmError("--device cuda: no CUDA GPU is visible to torch here", everywhere=True)
    world = distributed.init()
    device = world.device if use_cuda else torch.device("cpu")
    sync = torch.cuda.synchronize if use_cuda else (lambda: None)
    buf = torch.ones(s.size // 4, dtype=torch.float32, device=device)
    for _ in range(s.warmup):
        distributed.allreduce_sum_(buf, "hvdlm.preflight")
    sync()
    times = []
    for _ in range(s.iters):
        buf.fill_(1.0)
        t0 = time.perf_counter()
        distributed.allreduce_sum_(buf, "hvdlm.preflight")
        sync()
        times.append(time.perf_counter() - t0)
    ok = bool((buf == float(world.size)).all().item())
    worst = comm.allreduce(statistics.median(times), op=MPI.MAX)
    all_ok = comm.allreduce(int(ok), op=MPI.MIN)
    ops = distributed.allreduce_transport(device)
    algbw = s.size / worst / 1e9
    return {"backend": f"horovod ({ops})", "device": device.type, "bytes": s.size, "time_ms": 1e3 * worst,
            "algbw_gbps": algbw, "busbw_gbps": algbw * bus_factor(comm.Get_size()), "correct": bool(all_ok),
            # the defaults training applies too, as they were in effect here (absent: not set)
            "settings": {k: os.environ[k] for k in launcher.CPU_DEFAULTS_MPI if k in os.environ}}


def run(s: Settings) -> Result:
    if not launcher.mpi():
        raise HvdlmError("hvdlm preflight measures the links between ranks over MPI: launch it like training "
                         "with `srun hvdlm preflight ...`, `mpirun -np N hvdlm preflight ...` or "
                         "`horovodrun --mpi -np N hvdlm preflight ...`", everywhere=True)
    from hvdlm.distributed import apply_cpu_defaults

    # Training's MPI settings (they are read when MPI starts, which mpi4py does here), then MPI
    # before Horovod: it starts with MPI_THREAD_MULTIPLE, which Horovod needs.
    apply_cpu_defaults()
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, n = comm.Get_rank(), comm.Get_size()
    hosts = comm.allgather(socket.gethostname())
    res = Result(n, hosts)

    def say(text: str) -> None:
        if rank == 0:
            print(text, flush=True)

    nhosts = len(set(hosts))
    say(f"# hvdlm preflight: {n} ranks on {nhosts} host{'s' if nhosts > 1 else ''} "
        f"({', '.join(list(dict.fromkeys(hosts))[:6])}{', ...' if nhosts > 6 else ''}); {human(s.size)} messages, "
        f"{s.iters} timed iterations after {s.warmup} warm-up")
    if n == 1:
        res.verdict = "1 rank: no links to check"
        say(f"hvdlm: preflight passed: {res.verdict}")
        return res
    t0 = time.monotonic()
    res.pairs = measure_pairs(comm, MPI, s, hosts)
    res.per_rank = rank_figures(n, hosts, res.pairs)
    t1 = time.monotonic()
    res.allreduce = measure_allreduce(s, comm, MPI)
    t2 = time.monotonic()
    judge(res, s)
    scope = "pairs with other hosts" if nhosts > 1 else "pairs"
    say(f"# point to point ({MPI.Get_library_version().splitlines()[0].split(',')[0].strip()}, host memory): "
        f"{len(res.pairs)} pairs in {t1 - t0:.1f} s; a rank's p2p = upper median of its {scope}, "
        f"GB/s per direction with both directions busy")
    say(table(res, s))
    a = res.allreduce
    say(f"# allreduce, {a['backend']} on {a['device']}: {human(s.size)} in {a['time_ms']:.2f} ms "
        f"(slowest rank's median), algbw {a['algbw_gbps']:.3g} GB/s, busbw {a['busbw_gbps']:.3g} GB/s "
        f"({t2 - t1:.1f} s)")
    if not a["correct"]:
        res.passed = False
        res.verdict = "allreduce returned wrong sums: " + res.verdict
    if rank == 0 and s.json_path:
        write_json(res, s, Path(s.json_path))
    if not res.passed:
        raise HvdlmError(f"preflight: {res.verdict}", everywhere=True)
    say(f"hvdlm: preflight passed: {res.verdict}")
    return res


def write_json(res: Result, s: Settings, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"ranks": res.ranks, "hosts": res.hosts, "size": s.size, "iters": s.iters,
           "min_busbw": s.min_busbw, "min_p2p": s.p2p_threshold, "passed": res.passed, "verdict": res.verdict,
           "slow_ranks": res.slow, "per_rank": res.per_rank, "allreduce": res.allreduce,
           "pairs": [{"a": a, "b": b, **v} for (a, b), v in sorted(res.pairs.items())]}
    path.write_text(json.dumps(doc, indent=1, default=float) + "\n")


def settings_from_args(args) -> Settings:
    return Settings(size=parse_size(args.size), iters=args.iters, warmup=args.warmup, min_busbw=args.min_busbw,
                    min_p2p=args.min_p2p, timeout=args.timeout, device=args.device, json_path=args.json).validate()
