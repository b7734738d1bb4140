"""The gradient allreduce of every step through Horovod's ``DistributedOptimizer`` (ring-allreduce
over NCCL on GPUs, MPI or Gloo on CPUs), or its Adasum; used by ``sync/allreduce.py``."""

from __future__ import annotations

import time

import horovod.torch as hvd
import torch


def wrap_optimizer(optimizer: torch.optim.Optimizer, model: torch.nn.Module, compression: str,
                   reduce_op: str) -> torch.optim.Optimizer:
    """Step 3: gradients are allreduced as backward produces them, after as many local backward
    passes as ``set_accumulation`` says (one until then)."""
    return hvd.DistributedOptimizer(
        optimizer,
        named_parameters=model.named_parameters(),
        compression={"none": hvd.Compression.none, "fp16": hvd.Compression.fp16}[compression],
        op={"average": hvd.Average, "adasum": hvd.Adasum}[reduce_op],
    )


def set_accumulation(optimizer, grad_accum: int) -> None:
    """Micro-steps per optimizer step: the global batch split over this world's ranks."""
    optimizer.set_backward_passes_per_step(grad_accum)


def synchronize(optimizer) -> float:
    """Step 5: wait for the gradient allreduce the backward hooks started; returns the seconds
    waited. The clip and the step come after it (``sync.base.clip_and_step``) under
    ``skip_synchronize``: clipping before it would clip each rank's local gradient, not the one
    that is applied, and a step without ``skip_synchronize`` would synchronize twice."""
    t0 = time.perf_counter()
    optimizer.synchronize()
    return time.perf_counter() - t0


def skip_synchronize(optimizer):
    """The context a step takes after ``synchronize`` (Horovod's ``optimizer.skip_synchronize()``)."""
    return optimizer.skip_synchronize()


def adasum_step(optimizer) -> float:
    """Horovod's Adasum optimizer (more than one rank) applies the optimizer to each rank's own
    gradient in the backward hooks and combines the resulting updates in ``step()``: there is no
    averaged gradient to clip, and ``skip_synchronize()`` is not supported. Returns the wait."""
    t0 = time.perf_counter()
    optimizer.step()  # waits for the Adasum-combined updates and applies them
    optimizer.zero_grad()
    return time.perf_counter() - t0
