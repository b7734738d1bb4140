"""Which tensors in a state are one: a tied weight appears in a state dict under two names, as two
tensor objects (``state_dict()`` detaches each) over the same memory. A snapshot copies it once and
a broadcast sends it once, as ``torch.save`` writes it once."""

from __future__ import annotations

import torch


def alias_key(t: torch.Tensor) -> tuple:
    """Equal for two tensors that view the same elements of the same memory."""
    return (t.device, t.dtype, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
