"""How ranks synchronize: the one object the training loop calls wherever ranks exchange anything.

The loop (``loop.py``) calls a ``Sync`` at four points, and nowhere else talks to other ranks about
the model:

  ``wrap(optimizer, model, accum)``  at setup: the optimizer the loop steps (a Horovod
                                     DistributedOptimizer for gradient allreduce, or the plain one
                                     for a strategy that runs its own collectives)
  ``start(model)``                   at start and resume: every rank from rank 0's parameters
  ``step(optimizer, model, clip)``   after the last backward of an optimizer step: exchange what
                                     this strategy exchanges, clip, step; returns ``StepStats``
  ``after_step(step, model)``        after every optimizer step: a strategy that averages
                                     parameters every H steps does it here (returns the wait)

plus ``set_accumulation(accum)`` when an elastic reset re-plans the micro-steps, and
``state_dict()`` / ``load_state_dict()`` for its own state (checkpointed with the run and synced
by elastic commits). ``describe()`` is the phrase the start line uses.

``GradientAllreduce`` is the default and today's behaviour: Horovod's DistributedOptimizer
allreduces each gradient as backward produces it; ``step`` waits for it (``synchronize()``),
clips the averaged gradient and steps under ``skip_synchronize()`` (``distributed.optimizer_step``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hvdlm import distributed as dist
from hvdlm.config import DistributedConfig


@dataclass
class StepStats:
    wait: float       # seconds this rank waited on other ranks in the step
    grad_norm: float  # the norm of the gradient that was applied (before clipping), or nan


class Sync:
    """The interface; every method has the do-nothing default of a single process."""

    def describe(self) -> str:
        return ""

    def wrap(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module, accum: int) -> torch.optim.Optimizer:
        return optimizer

    def set_accumulation(self, optimizer: torch.optim.Optimizer, accum: int) -> None:
        pass

    def start(self, model: torch.nn.Module) -> None:
        pass

    def step(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module, grad_clip: float) -> StepStats:
        raise NotImplementedError

    def after_step(self, step: int, model: torch.nn.Module) -> float:
        return 0.0

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class GradientAllreduce(Sync):
    """Every step, the average of all ranks' gradients, through Horovod's DistributedOptimizer."""

    def __init__(self, compression: str, reduce_op: str):
        self.compression, self.reduce_op = compression, reduce_op

    def describe(self) -> str:
        parts = ["gradient allreduce"]
        if self.compression != "none":
            parts.append(f"{self.compression} compression")
        if self.reduce_op != "average":
            parts.append(self.reduce_op)
        return ", ".join(parts)

    def wrap(self, optimizer, model, accum):
        return dist.wrap_optimizer(optimizer, model, self.compression, self.reduce_op, accum)

    def set_accumulation(self, optimizer, accum):
        dist.set_accumulation(optimizer, accum)

    def start(self, model):
        dist.broadcast_parameters(model)

    def step(self, optimizer, model, grad_clip):
        wait, norm = dist.optimizer_step(optimizer, model, grad_clip)
        return StepStats(wait, norm)


def build(cfg: DistributedConfig) -> Sync:
    """The strategy the configuration asks for."""
    return GradientAllreduce(cfg.compression, cfg.reduce_op)

