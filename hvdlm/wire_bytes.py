"""Bytes on the wire, as arithmetic: what each wire type costs per value, the int8 codec's block
layout, which gradients PowerSGD compresses, and what a rank sends in a ring allreduce. Plain Python
with no Horovod (and no torch), below both ``distributed`` (the int8 codec) and ``sync``, so
``hvdlm plan`` and the strategies count with the same functions and the plan's bytes are the
strategies' counters (``Sync.sent_bytes``) by construction."""

from __future__ import annotations

from hvdlm.units import bus_factor

INT8_BLOCK = 256  # values per int8 block: one fp32 scale, then 256 int8 steps of it (distributed.codecs.Int8)
# bytes per value on the wire: none = fp32; int8 carries its block's scale (4 bytes per 256 values)
BYTES_PER_VALUE = {"none": 4, "fp16": 2, "bf16": 2, "int8": 1 + 4 / INT8_BLOCK}


def int8_encoded_bytes(count: int) -> int:
    """Bytes of ``count`` values in int8 blocks: whole blocks of 260 bytes (the last one padded)."""
    return -(-count // INT8_BLOCK) * (INT8_BLOCK + 4)


def encoded_bytes(count: int, wire: str) -> float:
    """Bytes of a payload of ``count`` values as ``wire`` sends it (the int8 codec pads its last block)."""
    return int8_encoded_bytes(count) if wire == "int8" else count * BYTES_PER_VALUE[wire]


def ring_bytes(numel: int, bytes_per_element: float, nranks: int) -> float:
    """What one rank sends in a ring allreduce of ``numel`` elements over ``nranks`` ranks (0 on one)."""
    return bus_factor(nranks) * numel * bytes_per_element


def compressed_shape(shape: tuple[int, ...], rank: int, min_compression: float) -> tuple[int, int, int] | None:
    """PowerSGD's rule: (n, m, r) when a gradient of this shape is compressed (viewed as n x m, rank
    r), else None: a matrix whose n x m is at least ``min_compression`` times (n + m) x r."""
    if len(shape) < 2:
        return None
    n = shape[0]
    m = 1
    for d in shape[1:]:
        m *= d
    r = min(rank, n, m)
    return (n, m, r) if min_compression * (n + m) * r <= n * m else None
