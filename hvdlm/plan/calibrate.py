"""The link described by measurements a user has (``--calibrate FILE``): an nccl-tests
all_reduce_perf output, or the JSON of ``hvdlm bench allreduce``, fitted instead of constants.

Read: every size's time (out-of-place and in-place both, in us); the rank count and the hosts from
all_reduce_perf's "#  Rank r Group g Pid p on HOST device ..." lines (or the JSON's ``meta``).

Each dtype apart (all_reduce_perf's type column, ``-d all`` or one file per ``-d``; the JSON's ``dtype``,
``--dtypes all``): a sum's cost per byte is the dtype's own. Gloo and MPI sum fp16 on the CPU, element
by element, and the test cluster's probe measured a 4 MiB fp16 allreduce slower than an 8 MiB fp32 one
(benchmarks/RESULTS.md, issue 32); one line through both would price neither. The plan prices each
allreduce by its dtype's fit (fp16 gradients, a periodic fp16 wire), a dtype not measured by fp32's
per-byte fit (or, without fp32 rows, by the first dtype's).

Fit, per size range (sizes sorted, four sizes a range, so a sweep with -f 2 gets one range per 8x of
size; a last lone size joins the range before it): t = a + b x S by least squares on relative error
(weights 1/t^2), with a >= 0 and b >= 0; the range's bus bandwidth is 2(n-1)/n / b (nccl-tests'
busbw), its latency a. A size between ranges takes the nearer range's fit, outside them the end's.

Latency is split in two: a per-collective overhead o (launch, NCCL's base latency, Horovod's call)
and a per-hop latency h, a(n) = o + 2(n-1) h for a ring. Files at two or more rank counts fit both by
least squares over the smallest range's a; one rank count cannot tell them apart, and all of it is
taken as hops (h = a / 2(n-1)): the pessimistic choice when the plan has more ranks than the file.

The uncertainty of a prediction from it: the largest relative residual of the fit, at least 10%
(extrapolating to another rank count adds what the file cannot show).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

from hvdlm.errors import HvdlmError

RANK_LINE = re.compile(r"#\s*Rank\s+\d+\s+(?:Group\s+\d+\s+)?Pid\s+\d+\s+on\s+(\S+)\s+device")
TAG = re.compile(r"^\[\d+,\d+\]<std(?:out|err)>:")  # mpirun --tag-output
STEPS_PER_RANGE = 4


# all_reduce_perf's type names (nccl-tests src/common.cu) for the dtypes hvdlm names; others keep theirs
NCCL_TYPES = {"float": "fp32", "half": "fp16", "bfloat16": "bf16", "double": "fp64"}
REFERENCE = "fp32"  # the dtype whose fit prices a dtype not measured


@dataclass(frozen=True)
class Measured:
    ranks: int
    hosts: int
    points: tuple  # ((bytes, seconds), ...)
    source: str
    dtype: str = REFERENCE


@dataclass(frozen=True)
class Band:
    low: float  # smallest size (bytes) fitted
    high: float  # largest
    latency: float  # a: seconds at zero bytes
    busbw: float  # bytes/s (nccl-tests' busbw); inf where the range is latency only


@dataclass(frozen=True)
class Calibration:
    ranks: int  # of the (largest) measurement
    hosts: int
    bands: tuple  # Band, by size
    overhead: float  # o: seconds per collective
    hop: float  # h: seconds per ring hop
    uncertainty: float
    source: str
    dtype: str = REFERENCE
    others: tuple = ()  # the other dtypes' Calibration, measured alongside this one

    @property
    def dtypes(self) -> tuple:
        return (self.dtype,) + tuple(o.dtype for o in self.others)

    def of(self, dtype: str) -> "Calibration":
        """The fit that prices ``dtype``: its own where measured, else this one (the reference)."""
        return next((o for o in self.others if o.dtype == dtype), self)

    def band(self, nbytes: float) -> Band:
        """The range whose fit prices ``nbytes``: its own, the nearer (in log size) between two, an end's."""
        for i, b in enumerate(self.bands):
            if nbytes <= b.high:
                if nbytes >= b.low or i == 0:
                    return b
                before = self.bands[i - 1]
                return before if math.log(nbytes / before.high) < math.log(b.low / nbytes) else b
        return self.bands[-1]

    def allreduce(self, nbytes: float, ranks: int, dtype: str = REFERENCE) -> float:
        """Seconds of one allreduce of ``nbytes`` of ``dtype`` on ``ranks`` ranks, from that dtype's fit."""
        if ranks <= 1:
            return 0.0
        if dtype != self.dtype:
            return self.of(dtype).allreduce(nbytes, ranks, self.of(dtype).dtype)
        b = self.band(nbytes)
        # the band's own latency, moved from its rank count to this one through o + 2(n-1) h
        extra = b.latency - (self.overhead + 2 * (self.ranks - 1) * self.hop)
        lat = self.overhead + 2 * (ranks - 1) * self.hop + max(0.0, extra)
        return lat + 2 * (ranks - 1) / ranks * nbytes / b.busbw

    def idealized(self, what: str) -> "Calibration":
        others = tuple(o.idealized(what) for o in self.others)
        if what == "latency":
            return replace(self, overhead=0.0, hop=0.0, bands=tuple(replace(b, latency=0.0) for b in self.bands),
                           others=others)
        return replace(self, bands=tuple(replace(b, busbw=math.inf) for b in self.bands), others=others)

    @property
    def peak(self) -> float:
        """The bus bandwidth of the largest sizes measured (bytes/s)."""
        return self.bands[-1].busbw


def read_nccl_tests(text: str, source: str) -> list[Measured]:
    """all_reduce_perf's table: size count type redop [root] time algbw busbw #wrong (out-of-place),
    time algbw busbw #wrong (in-place); the times are microseconds. One Measured per type."""
    hosts, points = [], {}
    for raw in text.splitlines():
        line = TAG.sub("", raw)
        m = RANK_LINE.search(line)
        if m:
            hosts.append(m.group(1))
            continue
        tokens = line.split()
        if len(tokens) < 12 or not tokens[0].isdigit() or not tokens[1].isdigit():
            continue
        rest = tokens[5:] if len(tokens) >= 13 else tokens[4:]  # "root" came in nccl-tests 2.10
        size = int(tokens[0])
        if size == 0:
            continue
        try:
            times = [float(rest[0]), float(rest[4])]
        except (ValueError, IndexError):
            continue
        dtype = NCCL_TYPES.get(tokens[2], tokens[2])
        points.setdefault(dtype, []).extend((size, t * 1e-6) for t in times if t > 0)
    if not any(points.values()):
        raise HvdlmError(f"--calibrate {source}: no all_reduce_perf table rows (size count type redop root time "
                         "algbw busbw #wrong ...) in it")
    if not hosts:
        raise HvdlmError(f"--calibrate {source}: no '#  Rank N ... on HOST device' lines: the rank count is unknown "
                         "(keep all_reduce_perf's header in the file)")
    return [Measured(len(hosts), len(set(hosts)), tuple(p), source, dtype) for dtype, p in points.items() if p]


def read_bench_json(doc: dict, source: str) -> list[Measured]:
    """``hvdlm bench allreduce``'s allreduce.json: Horovod's rows (else the first backend's but
    memcpy), both placements; one Measured per dtype."""
    try:
        meta, rows = doc["meta"], doc["rows"]
        backends = [r["backend"] for r in rows if r["backend"] != "memcpy"]
        backend = "horovod" if "horovod" in backends else backends[0]
        points = {}
        for r in rows:
            if r["backend"] == backend and float(r["time_avg_us"]) > 0:
                point = (int(r["bytes"]), float(r["time_avg_us"]) * 1e-6)
                points.setdefault(r.get("dtype", REFERENCE), []).append(point)
        ranks, hosts = int(meta["ranks"]), len(meta.get("hosts") or [None])
    except (KeyError, TypeError, ValueError, IndexError):
        raise HvdlmError(f"--calibrate {source} is not the allreduce.json of `hvdlm bench allreduce`") from None
    if not points:
        raise HvdlmError(f"--calibrate {source}: no timed rows in it")
    return [Measured(ranks, hosts, tuple(p), f"{source} ({backend})", dtype) for dtype, p in points.items()]


def read(path: str) -> list[Measured]:
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise HvdlmError(f"--calibrate {path}: cannot read it ({e.__class__.__name__})") from None
    if text.lstrip().startswith("{"):
        try:
            return read_bench_json(json.loads(text), path)
        except ValueError:
            raise HvdlmError(f"--calibrate {path} is not valid JSON") from None
    return read_nccl_tests(text, path)


def fit_line(points) -> tuple[float, float]:
    """(a, b) of t = a + b S, least squares on relative error, a >= 0, b >= 0."""
    def solve(with_a: bool, with_b: bool):
        # minimise sum ((a + b S - t) / t)^2
        if with_a and with_b:
            w = [(1 / t ** 2, s, t) for s, t in points]
            sw = sum(x for x, _, _ in w)
            ss = sum(x * s for x, s, _ in w)
            sss = sum(x * s * s for x, s, _ in w)
            st = sum(x * t for x, _, t in w)
            sst = sum(x * s * t for x, s, t in w)
            det = sw * sss - ss * ss
            if det <= 0:
                return None
            return (st * sss - ss * sst) / det, (sw * sst - ss * st) / det
        if with_b:
            return 0.0, sum(s / t for s, t in points) / sum((s / t) ** 2 for s, t in points)
        return sum(1 / t for _, t in points) / sum(1 / t ** 2 for _, t in points), 0.0

    ab = solve(True, True) if len({s for s, _ in points}) > 1 else None
    if ab is None or ab[1] < 0:
        ab = solve(True, False)
    if ab[0] < 0:
        ab = solve(False, True)
    return ab


def calibrate(measured: list[Measured]) -> Calibration:
    """Each dtype's fit (``fit_dtype``): fp32's (else the first dtype's) with the others beside it."""
    by_dtype = {}
    for m in measured:
        by_dtype.setdefault(m.dtype, []).append(m)
    fits = [fit_dtype(group) for group in by_dtype.values()]
    main = next((f for f in fits if f.dtype == REFERENCE), fits[0])
    return replace(main, others=tuple(f for f in fits if f is not main),
                   uncertainty=max(f.uncertainty for f in fits))


def fit_dtype(measured: list[Measured]) -> Calibration:
    """One dtype: bands from the measurement at the most ranks; overhead and hop latency from all of them."""
    main = max(measured, key=lambda m: m.ranks)
    if main.ranks < 2:
        raise HvdlmError(f"--calibrate {main.source}: one rank measures no link")
    n = main.ranks
    sizes = sorted({s for s, _ in main.points})
    groups = [sizes[i:i + STEPS_PER_RANGE] for i in range(0, len(sizes), STEPS_PER_RANGE)]
    if len(groups) > 1 and len(groups[-1]) < 2:  # one size alone fits no slope: join the range before it
        groups[-2:] = [groups[-2] + groups[-1]]
    bands, worst = [], 0.0
    for group in map(set, groups):
        pts = [(s, t) for s, t in main.points if s in group]
        a, b = fit_line(pts)
        worst = max([worst] + [abs(a + b * s - t) / t for s, t in pts])
        bands.append(Band(min(group), max(group), a, 2 * (n - 1) / n / b if b > 0 else math.inf))

    def smallest_a(m: Measured) -> float:
        low = sorted({s for s, _ in m.points})[:STEPS_PER_RANGE]
        return fit_line([(s, t) for s, t in m.points if s in low])[0]

    counts = {m.ranks: smallest_a(m) for m in measured if m.ranks > 1}
    if len(counts) >= 2:
        xs, ys = [2 * (k - 1) for k in counts], list(counts.values())
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        hop = max(0.0, sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs))
        overhead = max(0.0, my - hop * mx)
    else:
        overhead, hop = 0.0, counts[n] / (2 * (n - 1))
    return Calibration(n, main.hosts, tuple(bands), overhead, hop, max(0.10, worst),
                       " + ".join(m.source for m in measured), main.dtype)


def from_files(paths: list[str]) -> Calibration:
    return calibrate([m for p in paths for m in read(p)])
