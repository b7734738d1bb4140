"""Every step, the average of all ranks' gradients.

``GradientAllreduce`` is the default: Horovod's DistributedOptimizer allreduces each gradient as
backward produces it (fp32, or fp16 with ``--compression fp16``; ``Adasum`` combines updates
instead); ``step`` waits for it (``distributed.synchronize``), then clips the averaged gradient and
steps under ``skip_synchronize()`` (``base.clip_and_step``). A process that trains alone for the
whole run (``distributed.alone()``, not elastic) keeps the plain optimizer: no exchange at all.

``Bf16Allreduce`` (``--compression bf16``): Horovod cannot sum bf16 over MPI or Gloo, so the
gradients go, after the last backward, as one fused buffer through ``distributed.bf16_average``
(alltoall reduce-scatter, fp32 sum, allgather): the bytes of fp16 with fp32's exponent range, so
no loss scaling and no overflow. Every rank applies the same bf16-rounded mean.
"""

from __future__ import annotations

import time

from hvdlm import distributed as dist
from hvdlm.sync.base import FiniteWatch, OwnCollectives, StepStats, Sync, clip_and_step
from hvdlm.sync.modes import MODES
from hvdlm.tensors import flatten, grads_of, unflatten_into


class GradientAllreduce(Sync):
    """Every step, the average of all ranks' gradients, through Horovod's DistributedOptimizer."""

    reduce_op = "average"

    def __init__(self, compression: str, elastic: bool = False):
        self.compression, self.elastic, self.numel = compression, elastic, 0
        self.mode = MODES[compression]
        self.hooks = False  # Horovod's DistributedOptimizer wraps the optimizer (not when training alone)

    def describe(self) -> str:
        return "gradient allreduce" + (f", {self.compression} compression" if self.compression != "none" else "")

    def wrap(self, optimizer, model):
        self.numel = sum(p.numel() for p in model.parameters() if p.requires_grad)
        # Alone for the whole run (an elastic world may grow), Horovod's hooks would still queue every
        # gradient through its background thread each step: a cost with nothing in return.
        self.hooks = not (dist.alone() and not self.elastic)
        if not self.hooks:
            return optimizer
        return dist.wrap_optimizer(optimizer, model, self.compression, self.reduce_op)

    def set_accumulation(self, optimizer, accum):
        if self.hooks:
            dist.set_accumulation(optimizer, accum)

    def start(self, model):
        dist.broadcast_parameters(model)

    def step(self, optimizer, model, grad_clip):
        if not self.hooks:
            return StepStats(0.0, clip_and_step(optimizer, model, grad_clip))
        wait = dist.synchronize(optimizer)
        with dist.skip_synchronize(optimizer):
            norm = clip_and_step(optimizer, model, grad_clip)
        self.count_sent()
        return StepStats(wait, norm)

    def count_sent(self) -> None:
        """One ring allreduce of every gradient, in fp32 or fp16."""
        self.count_ring(self.numel, 2 if self.compression == "fp16" else 4)


class Adasum(GradientAllreduce):
    """Every step, Horovod's Adasum of the ranks' updates (``--reduce_op adasum``): each rank's
    optimizer steps on its own gradient and the updates are combined, so there is no averaged
    gradient to clip (at one rank it is the plain gradient allreduce)."""

    reduce_op = "adasum"

    def describe(self) -> str:
        return super().describe() + ", adasum"

    def step(self, optimizer, model, grad_clip):
        if not self.hooks or dist.alone():  # Horovod's Adasum of one rank's update is that update
            return super().step(optimizer, model, grad_clip)
        wait = dist.adasum_step(optimizer)
        self.count_sent()
        return StepStats(wait, None)


class Bf16Allreduce(OwnCollectives):
    """Every step, the mean gradient with bf16 on the wire, in one fused exchange."""

    mode = MODES["bf16"]

    def __init__(self):
        self.finite = FiniteWatch("gradient", "bf16")

    def describe(self) -> str:
        return "gradient allreduce, bf16 on the wire"

    def step(self, optimizer, model, grad_clip):
        grads = grads_of(self.params)
        flat = flatten(grads)
        t0 = time.perf_counter()
        mean = dist.bf16_average(flat, "hvdlm.grad.bf16")
        wait = time.perf_counter() - t0
        self.finite.note(mean, flat)
        unflatten_into(mean, grads)
        self.count_ring(flat.numel(), 2)
        return StepStats(wait, clip_and_step(optimizer, model, grad_clip))

    def check(self, step):
        self.finite.check(step)
