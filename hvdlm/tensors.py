"""Tensors as hvdlm moves them, plain torch: which tensors in a state are one (a tied weight appears
in a state dict under two names, as two tensor objects over the same memory: a snapshot copies it
once and a broadcast sends it once, as ``torch.save`` writes it once), the one walk over a state's
containers, and the flat buffers the sync strategies exchange."""

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


def flatten(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten_into(flat: torch.Tensor, tensors: list[torch.Tensor]) -> None:
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def grads_of(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each parameter's gradient, made zero where backward gave none (every rank sends the same shapes)."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    return [p.grad for p in params]
