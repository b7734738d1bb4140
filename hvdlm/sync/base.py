"""The ``Sync`` interface the loop calls, and what the strategies that run their own collectives share.

The loop (``loop.py``) calls a ``Sync`` at four points, and nowhere else talks to other ranks about
the model:

  ``wrap(optimizer, model)``         at setup: the optimizer the loop steps (a Horovod
                                     DistributedOptimizer for gradient allreduce, or the plain one
                                     for a strategy that runs its own collectives)
  ``start(model)``                   at start and resume: every rank from rank 0's parameters (or,
                                     resuming, from its own where the strategy keeps per-rank state)
  ``step(optimizer, model, clip)``   after the last backward of an optimizer step: exchange what
                                     this strategy exchanges, clip, step; returns ``StepStats``
  ``after_step(step, model)``        after every optimizer step: a strategy that averages
                                     parameters every H steps does it here (returns the wait)
  ``check(step)``                    on logged steps and before a checkpoint: end the job with one
                                     line if an exchange since the last check was not finite

plus ``set_accumulation(optimizer, accum)`` whenever the loop plans the micro-steps for a world
(at its start and after an elastic reset), and two
kinds of state for checkpoints (``checkpoint.Checkpointer``), tagged with the strategy's ``kind``
so that a resume under another strategy drops them instead of misreading them:

  ``state_dict()`` / ``load_state_dict()``   state that is the same on every rank (PowerSGD's Q,
                                             DiLoCo's synced parameters and outer momentum, step
                                             counters): rank 0 writes it into the checkpoint
  ``rank_state()`` / ``load_rank_state()``   state that differs by rank (error-feedback residuals;
                                             under local_sgd/diloco each rank's parameters and
                                             optimizer moments between syncs): each rank writes
                                             its own file and reads only its own back, on the
                                             same rank count; nothing per rank crosses the network

The loads return the lines a resume prints (what was dropped or replaced, and why).
``sent_bytes`` counts the payload bytes this rank has sent so far, computed from what each
collective moves (``wire_bytes.ring_bytes``: a ring allreduce of B bytes sends 2(n-1)/n x B per rank);
``describe()`` is the phrase the start line uses; ``mode`` (``modes.Mode``, given by
``build.build_strategy``) is what the rest of hvdlm asks about the strategy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hvdlm import distributed as dist
from hvdlm.errors import HvdlmError
from hvdlm.sync.modes import MODES, Mode
from hvdlm.wire_bytes import ring_bytes


@dataclass
class StepStats:
    wait: float                     # seconds this rank waited on other ranks in the step
    grad_norm: torch.Tensor | None  # the applied gradient's norm before clipping (on its device), or None


class Sync:
    """The interface; every method has the do-nothing default of a single process."""

    sent_bytes: float = 0.0
    mode: Mode = MODES["none"]

    @property
    def kind(self) -> str:
        """The tag of this strategy's checkpointed state (``Mode.kind``)."""
        return self.mode.kind

    def count_ring(self, numel: int, bytes_per_element: float) -> None:
        """Add one ring allreduce of ``numel`` elements over this world's ranks to ``sent_bytes``."""
        self.sent_bytes += ring_bytes(numel, bytes_per_element, dist.size())

    def describe(self) -> str:
        return ""

    def wrap(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> torch.optim.Optimizer:
        return optimizer

    def set_accumulation(self, optimizer: torch.optim.Optimizer, accum: int) -> None:
        pass

    def start(self, model: torch.nn.Module) -> None:
        pass

    def step(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module, grad_clip: float) -> StepStats:
        """No exchange in the step: clip and step (local SGD and DiLoCo exchange in ``after_step``)."""
        return StepStats(0.0, clip_and_step(optimizer, model, grad_clip))

    def after_step(self, step: int, model: torch.nn.Module) -> float:
        return 0.0

    def check(self, step: int) -> None:
        """Raise the one-line error if an exchange's mean since the last check was not finite."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> list[str]:
        return []

    def rank_state(self) -> dict | None:
        """This rank's own state, or None when the strategy keeps none (then no rank file is written)."""
        return None

    def load_rank_state(self, state: dict) -> list[str]:
        """This rank's own state, from its file of a checkpoint on the same rank count."""
        return []

    def what_ranks_hold(self) -> str:
        """The per-rank state in words, for the line a resume on another rank count prints."""
        return ""


class FiniteWatch:
    """Whether every exchange's mean since the last check was finite, kept on the device: the
    step never waits for the host to read it. ``check`` reads it (the loop asks on logged steps and
    before every checkpoint, so a nan never reaches a checkpoint) and ends the job with one line
    naming the rank(s) whose own part of the first non-finite exchange was not finite. The mean is
    the same on every rank, so every rank raises, or none does."""

    def __init__(self, what: str, wire: str = "none"):
        self.what, self.wire = what, wire
        self.all_finite: torch.Tensor | None = None  # since the last check
        self.mine_bad: torch.Tensor | None = None    # this rank's part, frozen at the first bad mean
        self.checked_at = 0

    def note(self, mean: torch.Tensor, mine: torch.Tensor) -> None:
        finite, mine_bad = torch.isfinite(mean).all(), ~torch.isfinite(mine).all()
        if self.all_finite is None:
            self.all_finite, self.mine_bad = finite, mine_bad
        else:
            self.mine_bad = torch.where(self.all_finite, mine_bad, self.mine_bad)
            self.all_finite = self.all_finite & finite

    def check(self, step: int) -> None:
        since, self.checked_at = self.checked_at, step
        if self.all_finite is None or bool(self.all_finite):
            self.all_finite = self.mine_bad = None
            return
        when = f"between steps {since} and {step}"
        bad = dist.ranks_where(bool(self.mine_bad), "hvdlm.nonfinite")
        if bad:
            raise HvdlmError(f"rank {', '.join(map(str, bad))}'s {self.what} holds nan or inf ({when}): stopped "
                             "before a checkpoint held it; resume from the last checkpoint with a lower --lr or "
                             "--grad_clip", everywhere=True)
        raise HvdlmError(f"the mean {self.what} overflowed {self.wire} on the wire ({when}; every rank's was "
                         "finite); use --compression bf16, whose range is fp32's", everywhere=True)


class OwnCollectives(Sync):
    """A strategy that steps the plain optimizer and runs its own collectives (not Horovod's
    DistributedOptimizer, whose backward hooks would allreduce every gradient anyway)."""

    params: list[torch.Tensor]
    optimizer: torch.optim.Optimizer

    def wrap(self, optimizer, model):
        # Gradients accumulate in .grad over the micro-steps (the loop divides each loss by accum),
        # so exchanging once per optimizer step needs nothing from the micro-step count.
        self.optimizer, self.params = optimizer, [p for p in model.parameters() if p.requires_grad]
        return optimizer

    def start(self, model):
        dist.broadcast_parameters(model)


def clip_and_step(optimizer: torch.optim.Optimizer, model: torch.nn.Module, grad_clip: float
                  ) -> torch.Tensor | None:
    """Clip the gradient now in .grad (the averaged one, or this rank's own between syncs), step,
    zero the gradients; returns the norm before clipping, on the device (the loop reads it on
    logged steps only), or None when not clipping. Every strategy's step ends here; Horovod's
    DistributedOptimizer calls it after ``synchronize()``, so the clip acts on the averaged
    gradient, not on each rank's own."""
    norm = None
    if grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad()  # Horovod 0.28.1's takes no arguments; torch sets the grads to None
    return norm
