"""The averages Horovod cannot compute itself, or that hvdlm runs as one fused buffer: fp32 and fp16
through Horovod's allreduce, bf16 and int8 as an alltoall reduce-scatter and an allgather of the
payloads ``codecs.py`` encodes. Used by the sync strategies that run their own collectives."""

from __future__ import annotations

import horovod.torch as hvd
import torch

from hvdlm.distributed.codecs import CODECS
from hvdlm.distributed.world import alone


def allreduce_average(flat: torch.Tensor, name: str, wire: str = "none") -> torch.Tensor:
    """The mean over ranks of a flat fp32 tensor, sent as fp32 (none) or fp16 (cast, ring-allreduce,
    cast back: what Horovod's fp16 compression does)."""
    return Average(flat, name, wire).result()


def bf16_average(flat: torch.Tensor, name: str) -> torch.Tensor:
    """The mean over ranks of a flat fp32 tensor, with bf16 on the wire, the same bits on every rank."""
    return Average(flat, name, "bf16").result()


class Average:
    """The mean over ranks of a flat fp32 tensor, started now and computed by Horovod's background
    thread while this one goes on (``result()`` waits for it). ``wire``: none (fp32), fp16, bf16
    or int8.

    Horovod 0.28.1 cannot sum bf16 over MPI or Gloo, but it moves int16 payloads: a reduce-scatter
    through ``alltoall`` (rank r receives every rank's r-th chunk), an fp32 sum of the chunks here,
    the mean rounded to bf16, and an ``allgather`` of the chunks back. Each rank sends (n-1)/n of
    the buffer in each half: 2(n-1)/n x 2 bytes per element, what an fp16 ring-allreduce sends.
    The second half starts from ``poll()`` (or ``result()``) once the first has arrived here.
    int8 takes the same route with ``codecs.Int8`` payloads (bytes): half of bf16's.
    """

    def __init__(self, flat: torch.Tensor, name: str, wire: str = "none"):
        self.name, self.wire, self._value = name, wire, None
        self._codec = CODECS.get(wire)
        if self._codec:
            if alone():
                self._value = self._codec.decode(self._codec.encode(flat), flat.numel())
                return
            n, count = hvd.size(), flat.numel()
            # ceil, in whole blocks: every rank owns one chunk; the last ones may be short or empty
            chunk = -(-count // n)
            chunk = -(-chunk // self._codec.BLOCK) * self._codec.BLOCK
            self._sizes = [max(0, min(chunk, count - r * chunk)) for r in range(n)]
            self._empty = flat[:0]
            parts = [self._codec.encode(piece) for piece in flat.split(self._sizes)]
            self._handle = hvd.alltoall_async(torch.cat(parts),
                                              splits=torch.tensor([p.numel() for p in parts], dtype=torch.int32),
                                              name=name + ".scatter")
            self._gathering = False
        else:
            payload = flat.half() if wire == "fp16" else flat
            if alone():  # the mean is here now, not after Horovod's next cycle (50 ms alone)
                self._value = payload.float() if wire == "fp16" else flat.clone()
                return
            self._handle = hvd.allreduce_async(payload, op=hvd.Average, name=name)

    def poll(self) -> bool:
        """True once the result is here (bf16, int8: starts the second half when the first has arrived)."""
        if self._value is not None:
            return True
        if not hvd.poll(self._handle):
            return False
        if self._codec and not self._gathering:
            self._gather()
            return False
        return True

    def _gather(self) -> None:
        received, _ = hvd.synchronize(self._handle)
        n, count, codec = hvd.size(), self._sizes[hvd.rank()], self._codec
        # every rank's copy of this rank's chunk, summed in fp32 in rank order, then rounded once more
        mine = sum(codec.decode(p, count) for p in received.chunk(n)) / n if count else self._empty
        self._handle = hvd.allgather_async(codec.encode(mine), name=self.name + ".gather")
        self._gathering = True

    def result(self) -> torch.Tensor:
        if self._value is None:
            if self._codec and not self._gathering:
                self._gather()
            out = hvd.synchronize(self._handle)
            if self._codec:  # every rank decodes the same bytes: the same bits
                lengths = [self._codec.encoded_numel(c) for c in self._sizes]
                out = torch.cat([self._codec.decode(p, c) for p, c in zip(out.split(lengths), self._sizes)])
            self._value = out.float()
        return self._value

    @classmethod
    def arrived(cls, value: torch.Tensor) -> "Average":
        """An average already received (restored from a checkpoint)."""
        done = cls.__new__(cls)
        done._value = value
        return done
