"""Quantities as a user writes them, and the ring allreduce's arithmetic: the one parser of each
kind that the command line, preflight, the benchmarks, the sync strategies and ``hvdlm plan`` share.

Byte counts: binary K/M/G ('64M'), as message sizes usually are. Rates in bits (bit, bps: 1e3
steps, as links are sold) or in bytes (a capital B: '3.35TB/s', also 1e3 steps); durations in ns,
us, ms or s; a link is 'BANDWIDTH,LATENCY' ('25gbit,20us')."""

from __future__ import annotations

import re

from hvdlm.errors import HvdlmError

PREFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0}
# A sign is read so that '-5gbit' is refused as out of range rather than as no rate at all.
RATE = re.compile(r"\s*(-?\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(bit|bps|b|B|Bps)(?:/s)?\s*")
DURATION = re.compile(r"\s*(-?\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s)\s*")


def parse_bytes(text: str | int, what: str = "size") -> int:
    """'64M' -> 67108864; K/M/G (also KB, KiB, ...) are binary, as message sizes usually are."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*([kKmMgG]?)(?:i?[bB])?\s*", str(text))
    if not m:
        raise HvdlmError(f"{what} {text!r} is not a byte count (examples: 8, 4K, 64M, 1G)", everywhere=True)
    if float(m.group(1)) < 0:
        raise HvdlmError(f"{what} {text!r} is out of range: at least 0", everywhere=True)
    value = float(m.group(1)) * 1024 ** " KMG".index(m.group(2).upper() or " ")
    if value != int(value):
        raise HvdlmError(f"{what} {text!r} is not a whole number of bytes", everywhere=True)
    return int(value)


def bus_factor(nranks: int) -> float:
    """What each rank sends (and receives) in a ring allreduce, as a fraction of the message:
    2(n-1)/n (nccl-tests' busbw / algbw)."""
    return 2 * (nranks - 1) / nranks


def parse_rate(text: str, what: str = "rate") -> float:
    """'25gbit' -> 3.125e9 bytes/s; '400Gbit/s', '1gbps', '100mbit', '3.35TB/s' likewise."""
    m = RATE.fullmatch(str(text))
    if not m:
        raise HvdlmError(f"{what} {text!r} is not a rate (examples: 400gbit, 25gbit, 1gbit, 100mbit, 3.35TB/s)")
    if float(m.group(1)) <= 0:  # nothing would ever arrive
        raise HvdlmError(f"{what} {text!r} is out of range: more than 0")
    value = float(m.group(1)) * PREFIX[m.group(2).lower()]
    in_bytes = m.group(3) in ("B", "Bps")
    return value if in_bytes else value / 8


def parse_duration(text: str, what: str = "duration") -> float:
    """'20us' -> 2e-05 seconds; ns, us, ms, s."""
    m = DURATION.fullmatch(str(text))
    if not m:
        raise HvdlmError(f"{what} {text!r} is not a duration (examples: 2us, 20us, 1.5ms, 30ms)")
    if float(m.group(1)) < 0:
        raise HvdlmError(f"{what} {text!r} is out of range: at least 0")
    return float(m.group(1)) * SECONDS[m.group(2)]


def parse_link(text: str, what: str = "--link") -> tuple[float, float]:
    """'25gbit,20us' -> (bytes/s, seconds of one-way latency per message)."""
    parts = [p for p in str(text).split(",")]
    if len(parts) != 2:
        raise HvdlmError(f"{what} {text!r} is not BANDWIDTH,LATENCY (examples: 25gbit,20us; 400gbit,2us; 1gbit,10ms)")
    return parse_rate(parts[0], f"{what} bandwidth"), parse_duration(parts[1], f"{what} latency")
