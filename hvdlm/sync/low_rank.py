"""PowerSGD's arithmetic, with no Horovod: which gradients are compressed, the power iteration with
error feedback, Q and the residuals saved and taken back by name. The strategy (``powersgd.py``)
hands it the averages; ``hvdlm plan --measure`` times it alone on a model's shapes.

Per step (``average_``): each compressed matrix M (a gradient of n x m, plus this rank's residual
from the last step) sends P = M Q (n x r); one average carries every P and, in the same fused
buffer, every gradient not worth compressing (averaged exactly); each averaged P is orthogonalized
(QR), Q = M^T P is averaged in a second exchange; P Q^T becomes the gradient and M minus it is
this rank's residual, added to its next gradient. Q is warm-started from step to step.
"""

from __future__ import annotations

from typing import Callable

import torch

from hvdlm.wire_bytes import compressed_shape
from hvdlm.tensors import flatten, unflatten_into

MeanOverRanks = Callable[[torch.Tensor, str], torch.Tensor]  # (flat payload, name) -> its mean over the ranks


class LowRank:
    def __init__(self, rank: int, min_compression: float, seed: int):
        self.rank, self.min_compression, self.seed = rank, min_compression, seed
        self.q: list[torch.Tensor] = []
        self.errors: list[torch.Tensor] | None = None  # this rank's residuals, from the first compressed step

    def setup(self, names: list[str], params: list[torch.Tensor]) -> None:
        """Split ``params`` into compressed and plain, and draw the starting Q's."""
        self.params = params
        self.compressed, self.plain, self.shapes = [], [], []
        for i, p in enumerate(params):
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
        self.q = [torch.randn(m, r, generator=gen).to(params[i].device)
                  for i, (n, m, r) in zip(self.compressed, self.shapes)]

    def average_(self, grads: list[torch.Tensor], average: MeanOverRanks) -> tuple[int, int]:
        """Replace each gradient by its PowerSGD average; keep this rank's residuals. Returns the
        element counts of the two exchanges (P's with the plain tensors, then Q's)."""
        if self.errors is None:
            self.errors = [torch.zeros_like(grads[i]) for i in self.compressed]
        mats = [(grads[i] + e).view(n, m) for i, e, (n, m, r) in zip(self.compressed, self.errors, self.shapes)]
        plain = [grads[i] for i in self.plain]
        ps = [mat @ q for mat, q in zip(mats, self.q)]
        first = flatten(plain + ps)
        unflatten_into(average(first, "hvdlm.powersgd.p"), plain + ps)
        ps = [torch.linalg.qr(p, mode="reduced").Q for p in ps]
        qs = [mat.t() @ p for mat, p in zip(mats, ps)]
        second = 0
        if qs:
            flat = flatten(qs)
            unflatten_into(average(flat, "hvdlm.powersgd.q"), qs)
            second = flat.numel()
        for k, (i, mat, p, q) in enumerate(zip(self.compressed, mats, ps, qs)):
            approx = p @ q.t()
            self.errors[k] = (mat - approx).view_as(grads[i])
            grads[i].copy_(approx.view_as(grads[i]))
        self.q = qs  # warm start: next step's power iteration begins here
        return first.numel(), second

    def q_state(self) -> dict:
        return {n: q.clone() for n, q in zip(self.names, self.q)}

    def load_q(self, saved) -> list[str]:
        saved = self._by_name(saved)
        kept = [n for n, q in zip(self.names, self.q) if n in saved and saved[n].shape == q.shape]
        self.q = [saved[n].to(q.device).clone() if n in kept else q for n, q in zip(self.names, self.q)]
        return self._dropped("Q", saved, kept, "drawn afresh from --seed")

    def residual_state(self) -> dict | None:
        return None if self.errors is None else {n: e.clone() for n, e in zip(self.names, self.errors)}

    def load_residuals(self, saved) -> list[str]:
        saved = self._by_name(saved)
        shapes = [self.params[i].shape for i in self.compressed]
        kept = [n for n, shape in zip(self.names, shapes) if n in saved and saved[n].shape == shape]
        self.errors = [saved[n].to(self.params[i].device).clone() if n in kept else torch.zeros_like(self.params[i])
                       for n, i in zip(self.names, self.compressed)]
        return self._dropped("residual", saved, kept, "starting from zero")

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
