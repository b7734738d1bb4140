"""Numeric precision of the forward pass: fp32, or bf16 autocast where it pays."""

from __future__ import annotations

import contextlib

import torch


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        return precision
    # bf16 autocast pays off on GPUs with bf16; on CPUs only for larger models on CPUs with bf16
    # instructions, not for the tiny default, so CPUs stay fp32 (docs/training.md, "Precision";
    # measure with benchmarks/precision.sh).
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def autocast(precision: str, device: torch.device):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
