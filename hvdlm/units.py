"""Byte counts as a user writes them, and the ring allreduce's arithmetic: the one parser and the
one formula that the command line, preflight, the benchmarks and the sync strategies share."""

from __future__ import annotations

import re

from hvdlm.errors import HvdlmError


def parse_bytes(text: str | int, what: str = "size") -> int:
    """'64M' -> 67108864; K/M/G (also KB, KiB, ...) are binary, as message sizes usually are."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)(?:i?[bB])?\s*", str(text))
    if not m:
        raise HvdlmError(f"{what} {text!r} is not a byte count (examples: 8, 4K, 64M, 1G)", everywhere=True)
    value = float(m.group(1)) * 1024 ** " KMG".index(m.group(2).upper() or " ")
    if value != int(value):
        raise HvdlmError(f"{what} {text!r} is not a whole number of bytes", everywhere=True)
    return int(value)


def bus_factor(nranks: int) -> float:
    """What each rank sends (and receives) in a ring allreduce, as a fraction of the message:
    2(n-1)/n (nccl-tests' busbw / algbw)."""
    return 2 * (nranks - 1) / nranks
