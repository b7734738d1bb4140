"""Which training sequences each rank reads, step after step.

The training shard is cut into non-overlapping sequences (sequence i is tokens
``[i*T, i*T + T + 1)``: T inputs and, shifted by one, T targets). Each epoch visits them in a
permutation fixed by (seed, epoch). Every micro-step takes the next ``size * batch_size`` of that
permutation and rank r reads the r-th block of ``batch_size``, so within an epoch no sequence is
read twice on any rank, and N ranks with batch B/N read exactly the sequences one rank with batch
B would. The tail of an epoch that cannot fill a whole global batch is skipped: every rank must
run the same number of steps, or the allreduce of the last one would wait forever.

The position (epoch, sequences consumed in it) is global, the same on every rank, so it goes in
the checkpoint and a resumed run continues where it stopped, on any number of ranks that can
split the same global batch.
"""

from __future__ import annotations

import numpy as np
import torch


def num_sequences(num_tokens: int, block_size: int) -> int:
    return max(0, (num_tokens - 1) // block_size)


def split_global_batch(global_batch: int, size: int, max_micro: int) -> tuple[int, int]:
    """(per-rank micro-batch, micro-steps per step) that make ``global_batch`` sequences per step
    on ``size`` ranks, with the fewest micro-steps whose micro-batch is at most ``max_micro``."""
    if global_batch % size:
        raise ValueError(f"a global batch of {global_batch} sequences cannot be split evenly over {size} ranks")
    accum = -(-global_batch // (size * max_micro))  # ceil
    while global_batch % (size * accum):
        accum += 1
    return global_batch // (size * accum), accum


class ShardedSampler:
    def __init__(self, num_seqs: int, batch_size: int, rank: int, size: int, seed: int, grad_accum: int = 1):
        self.num_seqs, self.batch_size, self.rank, self.size, self.seed = num_seqs, batch_size, rank, size, seed
        self.global_batch = batch_size * size  # sequences per micro-step, all ranks
        self.step_sequences = self.global_batch * grad_accum  # per optimizer step
        if num_seqs < self.step_sequences:
            raise ValueError(f"{num_seqs} sequences cannot fill one global batch of {self.step_sequences}")
        self.epoch, self.offset = 0, 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_seqs)

    @property
    def steps_per_epoch(self) -> int:
        return self.num_seqs // self.step_sequences

    def next_indices(self) -> np.ndarray:
        """This rank's sequence indices for the next micro-step."""
        # Epochs turn only between optimizer steps, so a step's micro-batches never straddle two
        # epochs and any split of the same global batch (ranks x micro-batch x micro-steps) reads
        # the same sequences in each step.
        at_step_start = self.offset % self.step_sequences == 0
        if at_step_start and self.offset + self.step_sequences > self.num_seqs:
            self.epoch, self.offset = self.epoch + 1, 0
            self._perm = self._permutation(self.epoch)
        start = self.offset + self.rank * self.batch_size
        self.offset += self.global_batch
        return self._perm[start:start + self.batch_size]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.offset, self.seed = state["epoch"], state["offset"], state["seed"]
        self._perm = self._permutation(self.epoch)


def get_batch(tokens: np.ndarray, indices: np.ndarray, block_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets (both (B, T) int64) for the given sequence indices."""
    rows = indices[:, None] * block_size + np.arange(block_size + 1)[None, :]
    chunk = torch.from_numpy(tokens[rows].astype(np.int64))
    x, y = chunk[:, :-1], chunk[:, 1:]
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.contiguous(), y.contiguous()
