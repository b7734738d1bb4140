"""Which tensors in a state are one: a tied weight appears in a state dict under two names, as two
tensor objects (``state_dict()`` detaches each) over the same memory. A snapshot copies it once and
a broadcast sends it once, as ``torch.save`` writes it once."""

from __future__ import annotations

import collections

import torch


def alias_key(t: torch.Tensor) -> tuple:
    """Equal for two tensors that view the same elements of the same memory."""
    return (t.device, t.dtype, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))


def map_tensors(obj, fn, leaf: type = torch.Tensor):
    """``obj`` rebuilt with ``fn(x)`` in place of every ``leaf`` inside dicts (an OrderedDict stays
    one), lists and tuples; every other value as it is. The one walk over a state's containers."""
    if isinstance(obj, leaf):
        return fn(obj)
    if isinstance(obj, dict):
        kind = collections.OrderedDict if isinstance(obj, collections.OrderedDict) else dict
        return kind((k, map_tensors(v, fn, leaf)) for k, v in obj.items())
    if isinstance(obj, list):
        return [map_tensors(v, fn, leaf) for v in obj]
    if type(obj) is tuple:
        return tuple(map_tensors(v, fn, leaf) for v in obj)
    return obj
