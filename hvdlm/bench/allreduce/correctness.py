"""The correctness check: small integers whose sum over ranks is exact in every dtype, written
along the buffer without a buffer-sized temporary, and the count of elements that differ."""

from __future__ import annotations

import torch

from hvdlm.bench.allreduce.bandwidth import EXACT_INTEGERS

PATTERN_PERIOD = 7  # prime, so a chunk moved by a power-of-two offset changes the values


def pattern_period(nranks: int, dtype: str) -> int:
    """Values 0..m-1 on each rank, so sums stay at most (m-1)*n: exact in the dtype."""
    return max(1, min(PATTERN_PERIOD, EXACT_INTEGERS[dtype] // nranks + 1))


def rank_pattern(rank: int, period: int, dtype: torch.dtype) -> torch.Tensor:
    """One period of rank ``rank``'s values: element i holds (i + rank) mod period."""
    return ((torch.arange(period) + rank) % period).to(dtype)


def expected_pattern(nranks: int, period: int, dtype: torch.dtype) -> torch.Tensor:
    """One period of the sum over ranks (computed in int64, exact, then cast)."""
    i = torch.arange(period)
    return sum((i + r) % period for r in range(nranks)).to(dtype)


def fill_periodic(buf: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """Write ``pattern`` repeated along the flat ``buf`` without a buffer-sized temporary."""
    flat, m = buf.view(-1), pattern.numel()
    pattern = pattern.to(buf.device)
    full = flat.numel() // m * m
    if full:
        flat[:full].view(-1, m).copy_(pattern)
    flat[full:].copy_(pattern[: flat.numel() - full])
    return buf


def count_wrong(result: torch.Tensor, expected: torch.Tensor) -> int:
    """Elements of ``result`` that differ from ``expected`` (the whole tensor, or one period of a
    pattern repeated along it). NaN never equals anything, so it counts as wrong."""
    flat = result.reshape(-1)
    expected = expected.reshape(-1).to(flat.device)
    if expected.numel() == flat.numel():
        return int((flat != expected).sum().item())
    m = expected.numel()
    full = flat.numel() // m * m
    wrong = int((flat[:full].view(-1, m) != expected).sum().item()) if full else 0
    return wrong + int((flat[full:] != expected[: flat.numel() - full]).sum().item())
