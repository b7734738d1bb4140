"""Dropout whose mask costs a third as much on CPUs.

On a CPU, torch draws a dropout mask one element at a time (``bernoulli_``, on one core whatever
the thread count): at nanoGPT's character shape with dropout 0.2 the masks took 27% of a bf16
training step, more than all the matmuls of the attention (benchmarks/RESULTS.md, "hvdlm's
defaults against nanoGPT's on a CPU"). Here a mask is drawn as 32-bit random integers, each of
them two 16-bit uniform halves compared against ``p``: half the draws for the same elements, and
no float conversion. An element is dropped with probability ``round(p * 65536) / 65536`` (p to within
1/131072), from torch's own generator, so ``torch.manual_seed`` and a saved RNG state reproduce
it. On GPUs torch's dropout (Philox, in the kernel) is already cheap and is used as it is.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

HALF = 2**16
# True: torch's own dropout and attention on CPUs too, as nanoGPT computes them (the baseline of
# benchmarks/nanogpt_cpu.py: ``python -m hvdlm.bench.bare --torch_dropout``)
TORCH_DROPOUT = False


def cheap_masks(device: torch.device) -> bool:
    """Whether dropout on ``device`` draws ``keep_mask``'s masks (CPUs), not torch's."""
    return device.type == "cpu" and not TORCH_DROPOUT


def keep_mask(shape: torch.Size, p: float) -> torch.Tensor:
    """A CPU bool mask of ``shape``: True (kept) with probability 1 - p."""
    n = shape.numel()
    # random_(from, to) draws from [from, to): the whole int32 range but its last value (2^-32 off
    # uniform), so both 16-bit halves of every word are uniform over int16
    words = torch.empty((n + 1) // 2, dtype=torch.int32).random_(-(2**31), 2**31 - 1)
    threshold = round(p * HALF) - HALF // 2  # P(half < threshold) = round(p * 65536) / 65536
    return (words.view(torch.int16)[:n] >= threshold).view(shape)


class _MaskedScale(torch.autograd.Function):
    """``x * keep / (1 - p)``, saving the bool mask (a byte an element, as torch's dropout does)
    rather than a scaled copy of it in ``x``'s dtype."""

    @staticmethod
    def forward(ctx, x, keep, scale: float):
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x.mul(keep).mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return grad.mul(keep).mul_(ctx.scale), None, None


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``F.dropout(x, p, training)``, with the cheaper mask on CPUs."""
    if not training or p == 0.0:
        return x
    if not cheap_masks(x.device) or p >= 1.0:
        return F.dropout(x, p, training)
    return _MaskedScale.apply(x, keep_mask(x.shape, p), 1.0 / (1.0 - p))


class Dropout(nn.Module):
    """``nn.Dropout`` with the cheaper CPU mask (no parameters or state: checkpoints are unchanged)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
