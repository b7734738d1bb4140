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
"""

from __future__ import annotations

import time

import torch

from hvdlm import distributed as dist
from hvdlm.sync.base import OwnCollectives, StepStats, check_finite, flatten, grads_of, ring_bytes, unflatten_into


def compressed_shape(shape: tuple[int, ...], rank: int, min_compression: float) -> tuple[int, int, int] | None:
    """(n, m, r) when a gradient of this shape is compressed (viewed as n x m, rank r), else None:
    a matrix whose n x m is at least ``min_compression`` times (n + m) x r."""
    if len(shape) < 2:
        return None
    n = shape[0]
    m = 1
    for d in shape[1:]:
        m *= d
    r = min(rank, n, m)
    return (n, m, r) if min_compression * (n + m) * r <= n * m else None


class PowerSGD(OwnCollectives):
    kind = "powersgd"

    def __init__(self, rank: int, start: int, min_compression: float, seed: int):
        self.rank, self.start_step, self.min_compression, self.seed = rank, start, min_compression, seed
        self.steps = 0  # optimizer steps taken: plain allreduce while below start_step
        self.q: list[torch.Tensor] = []
        self.errors: list[torch.Tensor] | None = None  # this rank's residuals, from the first compressed step

    def describe(self) -> str:
        return (f"PowerSGD rank {self.rank} ({len(self.compressed)} of {len(self.params)} tensors compressed, "
                f"plain allreduce for the first {self.start_step} steps)")

    def wrap(self, optimizer, model):
        optimizer = super().wrap(optimizer, model)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.compressed, self.plain, self.shapes = [], [], []
        for i, p in enumerate(self.params):
            nmr = compressed_shape(tuple(p.shape), self.rank, self.min_compression)
            if nmr:
                self.compressed.append(i)
                self.shapes.append(nmr)
            else:
                self.plain.append(i)
        self.names = [names[i] for i in self.compressed]
        # The same starting Q on every rank and device: drawn in order on the CPU from a generator
        # seeded with --seed, then moved to its parameter's device.
        gen = torch.Generator().manual_seed(self.seed)
        self.q = [torch.randn(m, r, generator=gen).to(self.params[i].device)
                  for i, (n, m, r) in zip(self.compressed, self.shapes)]
        return optimizer

    def step(self, optimizer, model, grad_clip):
        grads = grads_of(self.params)
        t0 = time.perf_counter()
        if self.steps < self.start_step:
            flat = flatten(grads)
            unflatten_into(dist.allreduce_average(flat, "hvdlm.powersgd.plain"), grads)
            self.sent_bytes += ring_bytes(flat.numel(), 4)
        else:
            self.compress_and_average(grads)
        wait = time.perf_counter() - t0  # includes the small matmuls and QR, which are the price of the method
        self.steps += 1
        return StepStats(wait, self.clip_and_step(optimizer, model, grad_clip))

    def compress_and_average(self, grads: list[torch.Tensor]) -> None:
        """Replace each gradient by its PowerSGD average; keep this rank's residuals."""
        if self.errors is None:
            self.errors = [torch.zeros_like(grads[i]) for i in self.compressed]
        mats = [(grads[i] + e).view(n, m) for i, e, (n, m, r) in zip(self.compressed, self.errors, self.shapes)]
        plain = [grads[i] for i in self.plain]
        ps = [mat @ q for mat, q in zip(mats, self.q)]
        first = flatten(plain + ps)
        mean = dist.allreduce_average(first, "hvdlm.powersgd.p")
        check_finite(mean, first, "gradient (PowerSGD's P and uncompressed tensors)")
        unflatten_into(mean, plain + ps)
        ps = [torch.linalg.qr(p, mode="reduced").Q for p in ps]
        qs = [mat.t() @ p for mat, p in zip(mats, ps)]
        if qs:
            second = flatten(qs)
            unflatten_into(dist.allreduce_average(second, "hvdlm.powersgd.q"), qs)
            self.sent_bytes += ring_bytes(second.numel(), 4)
        self.sent_bytes += ring_bytes(first.numel(), 4)
        for k, (i, mat, p, q) in enumerate(zip(self.compressed, mats, ps, qs)):
            approx = p @ q.t()
            self.errors[k] = (mat - approx).view_as(grads[i])
            grads[i].copy_(approx.view_as(grads[i]))
        self.q = qs  # warm start: next step's power iteration begins here

    def state_dict(self) -> dict:
        return {"steps": self.steps, "q": {n: q.clone() for n, q in zip(self.names, self.q)}}

    def load_state_dict(self, state: dict) -> list[str]:
        if "q" not in state:  # a fresh run
            return []
        self.steps = state["steps"]
        saved = self._by_name(state["q"])
        kept = [n for n, q in zip(self.names, self.q) if n in saved and saved[n].shape == q.shape]
        self.q = [saved[n].to(q.device).clone() if n in kept else q for n, q in zip(self.names, self.q)]
        return self._dropped("Q", saved, kept, "drawn afresh from --seed")

    def rank_state(self) -> dict | None:
        if self.errors is None:
            return {"errors": None}
        return {"errors": {n: e.clone() for n, e in zip(self.names, self.errors)}}

    def load_rank_state(self, state: dict) -> list[str]:
        if state.get("errors") is None:
            return []
        saved = self._by_name(state["errors"])
        shapes = [self.params[i].shape for i in self.compressed]
        kept = [n for n, shape in zip(self.names, shapes) if n in saved and saved[n].shape == shape]
        self.errors = [saved[n].to(self.params[i].device).clone() if n in kept else torch.zeros_like(self.params[i])
                       for n, i in zip(self.names, self.compressed)]
        return self._dropped("residual", saved, kept, "starting from zero")

    def what_ranks_hold(self) -> str:
        return "PowerSGD's error-feedback residuals; Q is kept"

    def _by_name(self, saved) -> dict:
        """{name: tensor}; an older hvdlm saved lists in the order of its compressed tensors, taken by
        position only when every shape agrees with this run's."""
        if isinstance(saved, dict):
            return saved
        if [tuple(t.shape) for t in saved] in ([tuple(q.shape) for q in self.q],
                                               [tuple(self.params[i].shape) for i in self.compressed]):
            return dict(zip(self.names, saved))
        return {}

    def _dropped(self, what: str, saved: dict, kept: list[str], instead: str) -> list[str]:
        if len(kept) == len(saved) == len(self.names):
            return []
        return [f"hvdlm: PowerSGD's {what} kept for {len(kept)} of {len(self.names)} compressed tensor(s) (matched by "
                f"name and shape; the checkpoint had {len(saved)}); the others {instead}"]
