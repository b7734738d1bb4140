"""Sizes and bandwidths of the allreduce sweep: byte counts as given on the command line, the
sweep's sizes, elements per message, and nccl-tests' algbw and busbw (pure, unit-tested)."""

from __future__ import annotations

import torch

from hvdlm.bench import output
from hvdlm.errors import HvdlmError
from hvdlm.units import bus_factor

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Every integer from 0 to this is exact in the dtype (so are sums that stay below it).
EXACT_INTEGERS = {"fp32": 2 ** 24, "fp16": 2 ** 11, "bf16": 2 ** 8}
MAX_BYTES = 2 ** 31  # MPI counts are C ints: 2 GiB keeps fp16/bf16 counts at 2^30


def sweep_sizes(min_bytes: int, max_bytes: int, factor: int) -> list[int]:
    """min_bytes, min_bytes*factor, ... up to max_bytes (inclusive)."""
    if min_bytes < 1:
        raise HvdlmError(f"--min_bytes {min_bytes} is out of range: at least 1 byte", everywhere=True)
    if max_bytes > MAX_BYTES:
        raise HvdlmError(f"--max_bytes {max_bytes} ({output.human_bytes(max_bytes)}) is out of range: "
                         f"at most {output.human_bytes(MAX_BYTES)} (MPI element counts are 32-bit)",
                         everywhere=True)
    if min_bytes > max_bytes:
        raise HvdlmError(f"--min_bytes {min_bytes} is larger than --max_bytes {max_bytes}", everywhere=True)
    if factor < 2:
        raise HvdlmError(f"--factor {factor} is out of range: sizes grow by a whole factor of at least 2",
                         everywhere=True)
    sizes, s = [], min_bytes
    while s <= max_bytes:
        sizes.append(s)
        s *= factor
    return sizes


def element_count(nbytes: int, dtype: str) -> int:
    """Elements of ``dtype`` in ``nbytes``; a size that is not a whole number of them is an error."""
    size = DTYPES[dtype].itemsize
    if nbytes % size:
        raise HvdlmError(f"a message of {nbytes} bytes is not a whole number of {dtype} elements "
                         f"({size} bytes each): make --min_bytes a multiple of {size}", everywhere=True)
    return nbytes // size


def algbw(nbytes: float, seconds: float) -> float:
    """Algorithm bandwidth in bytes/s: the message size over the time of one allreduce."""
    return nbytes / seconds if seconds > 0 else float("nan")


def busbw(algbw_value: float, nranks: int) -> float:
    return algbw_value * bus_factor(nranks)
