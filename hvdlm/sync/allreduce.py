"""Every step, the average of all ranks' gradients.

``GradientAllreduce`` is the default: Horovod's DistributedOptimizer allreduces each gradient as
backward produces it (fp32, or fp16 with ``--compression fp16``; or Adasum); ``step`` waits for it
(``synchronize()``), clips the averaged gradient and steps under ``skip_synchronize()``
(``distributed.optimizer_step``).

``Bf16Allreduce`` (``--compression bf16``): Horovod cannot sum bf16 over MPI or Gloo, so the
gradients go, after the last backward, as one fused buffer through ``distributed.bf16_average``
(alltoall reduce-scatter, fp32 sum, allgather): the bytes of fp16 with fp32's exponent range, so
no loss scaling and no overflow. Every rank applies the same bf16-rounded mean.
"""

from __future__ import annotations

import time

from hvdlm import distributed as dist
from hvdlm.sync.base import OwnCollectives, StepStats, Sync, check_finite, flatten, grads_of, ring_bytes, unflatten_into


class GradientAllreduce(Sync):
    """Every step, the average of all ranks' gradients, through Horovod's DistributedOptimizer."""

    def __init__(self, compression: str, reduce_op: str, alone: bool = False):
        self.compression, self.reduce_op, self.alone = compression, reduce_op, alone
        self.numel = 0

    def describe(self) -> str:
        parts = ["gradient allreduce"]
        if self.compression != "none":
            parts.append(f"{self.compression} compression")
        if self.reduce_op != "average":
            parts.append(self.reduce_op)
        return ", ".join(parts)

    def wrap(self, optimizer, model, accum):
        self.numel = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return dist.wrap_optimizer(optimizer, model, self.compression, self.reduce_op, accum, self.alone)

    def set_accumulation(self, optimizer, accum):
        dist.set_accumulation(optimizer, accum)

    def start(self, model):
        dist.broadcast_parameters(model)

    def step(self, optimizer, model, grad_clip):
        wait, norm = dist.optimizer_step(optimizer, model, grad_clip)
        self.sent_bytes += ring_bytes(self.numel, 2 if self.compression == "fp16" else 4)
        return StepStats(wait, norm)


class Bf16Allreduce(OwnCollectives):
    """Every step, the mean gradient with bf16 on the wire, in one fused exchange."""

    def describe(self) -> str:
        return "gradient allreduce, bf16 on the wire"

    def step(self, optimizer, model, grad_clip):
        grads = grads_of(self.params)
        flat = flatten(grads)
        t0 = time.perf_counter()
        mean = dist.bf16_average(flat, "hvdlm.grad.bf16")
        wait = time.perf_counter() - t0
        check_finite(mean, flat, "gradient", "bf16")
        unflatten_into(mean, grads)
        self.sent_bytes += ring_bytes(flat.numel(), 2)
        return StepStats(wait, self.clip_and_step(optimizer, model, grad_clip))
