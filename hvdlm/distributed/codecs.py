"""The payloads of the averages Horovod cannot sum itself (``exchange.Average``): bf16 as int16,
int8 in scaled blocks; encoded before its alltoall and allgather, decoded after. Plain torch."""

from __future__ import annotations

import torch

from hvdlm.wire_bytes import INT8_BLOCK, int8_encoded_bytes


class Bf16:
    """bf16 values as int16 (Horovod moves them without summing)."""

    BLOCK = 1  # a rank's chunk may start anywhere

    @staticmethod
    def encode(x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.bfloat16).view(torch.int16)

    @staticmethod
    def encoded_numel(count: int) -> int:
        return count

    @staticmethod
    def decode(payload: torch.Tensor, count: int) -> torch.Tensor:
        return payload.view(torch.bfloat16).float()


class Int8:
    """Blocks of 256 values as one fp32 scale (the block's largest magnitude / 127) and 256 int8
    steps of it, round to nearest: 1.016 bytes per value, an error of at most 1/254 of the block's
    largest value. Each block is 260 bytes: its scale's 4, then its 256 steps."""

    BLOCK = INT8_BLOCK

    @staticmethod
    def encoded_numel(count: int) -> int:
        return int8_encoded_bytes(count)

    @classmethod
    def encode(cls, x: torch.Tensor) -> torch.Tensor:
        if not x.numel():  # a rank that owns no chunk (more ranks than blocks)
            return x.new_zeros(0, dtype=torch.uint8)
        blocks = torch.nn.functional.pad(x.float(), (0, -x.numel() % cls.BLOCK)).view(-1, cls.BLOCK)
        scale = blocks.abs().amax(1, keepdim=True) / 127
        steps = torch.round(blocks / scale.clamp_min(torch.finfo(torch.float32).tiny)).clamp_(-127, 127)
        return torch.cat([scale.view(torch.uint8), steps.to(torch.int8).view(torch.uint8)], 1).view(-1)

    @classmethod
    def decode(cls, payload: torch.Tensor, count: int) -> torch.Tensor:
        if not count:
            return payload.new_zeros(0, dtype=torch.float32)
        rows = payload.view(-1, cls.BLOCK + 4)
        scale = rows[:, :4].contiguous().view(torch.float32)
        return (rows[:, 4:].contiguous().view(torch.int8).float() * scale).view(-1)[:count]


CODECS = {"bf16": Bf16, "int8": Int8}  # the wire types distributed.Average sends through these
