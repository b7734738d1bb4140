"""Which documents `hvdlm prepare` sends to validation, worked out here as the README states it
(each document with probability --val_fraction, drawn from --seed and its position in the input)
with splitmix64 in plain Python integers: a reference independent of prepare's vectorized numpy
hash, so a slip there (an overflow, a wrong shift) shows as a different split."""

from __future__ import annotations

MASK = 2 ** 64 - 1


def uniform(unit: int, seed: int, salt: int = 0) -> float:
    """splitmix64 of (unit + seed x golden gamma + salt), its top 53 bits as a number in [0, 1)."""
    z = (unit + seed * 0x9E3779B97F4A7C15 + salt) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    z ^= z >> 31
    return (z >> 11) / 2.0 ** 53


def in_val(n: int, seed: int, val_fraction: float) -> list[bool]:
    """For documents 0..n-1 of the input, in order: goes to validation."""
    return [uniform(i, seed) < val_fraction for i in range(n)]
