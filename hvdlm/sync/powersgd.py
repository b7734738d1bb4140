"""PowerSGD (Vogels, Karimireddy and Jaggi, NeurIPS 2019): every step a rank-r approximation of
the averaged gradient of each large matrix, with error feedback; the design of PyTorch's DDP
``powerSGD_hook``, on Horovod collectives.

Per optimizer step (after the last micro-step's backward; gradients accumulated in .grad):

  1. For the first ``start`` steps (at least the lr warmup) the whole gradient is averaged in one
     plain fp32 allreduce: early gradients change too fast for a warm-started low-rank basis.
  2. Then each compressed matrix M (a gradient of n x m, plus this rank's residual from the last
     step: error feedback) sends P = M Q (n x r) instead of M; Q (m x r) is the previous step's,
     the same on every rank (initialized from the seed, warm-started after that).
  3. One allreduce carries every P and, in the same fused buffer, every gradient not worth
     compressing (biases, norms, small matrices: those whose n x m is not at least
     ``min_compression`` times (n + m) x r), averaged exactly. Fusing them saves a round trip.
  4. Each averaged P is orthogonalized (QR), Q = M^T P is computed and all Q's are averaged in a
     second allreduce; the approximation P Q^T (the average M projected on P's columns) becomes
     the gradient, and M minus it is this rank's residual, added to its next gradient.
  5. The loop's clip and step then act on that decompressed average; the residual is never clipped.

Q is the same on every rank (``state_dict``); the residuals differ (``rank_state``). Both are
saved by parameter name and taken back only where the name and shape still match: another
``--powersgd_rank`` or ``--powersgd_min_compression`` drops what no longer fits, never adds one
layer's residual to another's.

The arithmetic (which tensors, the power iteration, Q and the residuals by name) is
``low_rank.LowRank``, with no Horovod; this strategy gives it Horovod's averages and the plain
allreduce of the first steps.
"""

from __future__ import annotations

import time

import torch

from hvdlm import distributed as dist
from hvdlm.sync.base import FiniteWatch, OwnCollectives, StepStats, clip_and_step
from hvdlm.sync.low_rank import LowRank
from hvdlm.sync.modes import MODES
from hvdlm.tensors import flatten, grads_of, unflatten_into


class PowerSGD(LowRank, OwnCollectives):
    mode = MODES["powersgd"]

    def __init__(self, rank: int, start: int, min_compression: float, seed: int):
        super().__init__(rank, min_compression, seed)
        self.start_step = start
        self.steps = 0  # optimizer steps taken: plain allreduce while below start_step
        self.finite = FiniteWatch("gradient (PowerSGD's P and uncompressed tensors)")

    def describe(self) -> str:
        return (f"PowerSGD rank {self.rank} ({len(self.compressed)} of {len(self.params)} tensors compressed, "
                f"plain allreduce for the first {self.start_step} steps)")

    def wrap(self, optimizer, model):
        optimizer = OwnCollectives.wrap(self, optimizer, model)
        self.setup([n for n, p in model.named_parameters() if p.requires_grad], self.params)
        return optimizer

    def step(self, optimizer, model, grad_clip):
        grads = grads_of(self.params)
        t0 = time.perf_counter()
        if self.steps < self.start_step:
            flat = flatten(grads)
            unflatten_into(dist.allreduce_average(flat, "hvdlm.powersgd.plain"), grads)
            self.count_ring(flat.numel(), 4)
        else:
            self.compress_and_average(grads)
        wait = time.perf_counter() - t0  # includes the small matmuls and QR, which are the price of the method
        self.steps += 1
        return StepStats(wait, clip_and_step(optimizer, model, grad_clip))

    def compress_and_average(self, grads: list[torch.Tensor]) -> None:
        """Replace each gradient by its PowerSGD average over the ranks; keep this rank's residuals."""
        first, second = self.average_(grads, self._average)
        self.count_ring(first, 4)
        self.count_ring(second, 4)

    def _average(self, flat: torch.Tensor, name: str) -> torch.Tensor:
        mean = dist.allreduce_average(flat, name)
        if name == "hvdlm.powersgd.p":
            self.finite.note(mean, flat)
        return mean

    def check(self, step):
        self.finite.check(step)

    def state_dict(self) -> dict:
        return {"steps": self.steps, "q": self.q_state()}

    def load_state_dict(self, state: dict) -> list[str]:
        if "q" not in state:  # a fresh run
            return []
        self.steps = state["steps"]
        return self.load_q(state["q"])

    def rank_state(self) -> dict | None:
        return {"errors": self.residual_state()}

    def load_rank_state(self, state: dict) -> list[str]:
        if state.get("errors") is None:
            return []
        return self.load_residuals(state["errors"])

    def what_ranks_hold(self) -> str:
        return "PowerSGD's error-feedback residuals; Q is kept"
