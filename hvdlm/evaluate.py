"""Validation loss: the same sequences at every evaluation, split across ranks, averaged."""

from __future__ import annotations

import math

import numpy as np
import torch

from hvdlm import distributed as dist
from hvdlm import watchdog
from hvdlm.data.sampler import get_batch, num_sequences
from hvdlm.precision import autocast


class Evaluator:
    """Evaluates at step 0, every ``interval`` steps (0: never in between) and at the last step."""

    def __init__(self, val: np.ndarray, sequences: int, batch_size: int, interval: int, precision: str):
        self.val, self.sequences, self.batch_size = val, sequences, batch_size
        self.interval, self.precision = interval, precision

    def due(self, step: int, last_step: int) -> bool:
        return (self.interval and step % self.interval == 0) or step == last_step

    @torch.no_grad()
    def __call__(self, model, world: dist.World) -> float:
        """Mean validation loss over the same ``sequences`` sequences, split across ranks."""
        block_size = model.cfg.block_size
        available = num_sequences(len(self.val), block_size)
        # spread over the whole split, not its first few files; rank r takes every size-th of them
        chosen = np.unique(np.linspace(0, available - 1, min(self.sequences, available)).astype(np.int64))
        mine = chosen[world.rank::world.size]
        model.eval()
        total, count = 0.0, 0
        for start in range(0, len(mine), self.batch_size):
            idx = mine[start:start + self.batch_size]
            x, y = get_batch(self.val, idx, block_size, world.device)
            with autocast(self.precision, world.device):
                _, loss = model(x, y)
            total, count = total + loss.item() * len(idx), count + len(idx)
            watchdog.beat()
        model.train()
        total, count = dist.sum_all([total, count], name="eval_loss")
        return total / count


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50))
