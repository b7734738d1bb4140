"""Numeric precision of the forward pass: fp32, or bf16 autocast where it pays.

``--precision auto`` picks bf16 where it trains faster: on GPUs that support it, and on CPUs whose
own matmuls say so (bf16 against fp32, each measured once per host and cached with the MFU peak,
``mfu.cpu_peak``) for models wide enough that the matmuls dominate. On a CPU without native bf16
(AVX2 only) bf16 matmuls are converted in software and run slower than fp32, so it stays fp32.
"""

from __future__ import annotations

import contextlib

import torch

from hvdlm.mfu import cpu_peak

# bf16 matmul peak over fp32's that a CPU must reach: native bf16 (AVX-512 BF16 doubles the
# FMAs, AMX far more) passes; AVX2-only CPUs convert in software and fall below 1.
BF16_PEAK_RATIO = 1.5
# The narrowest width bf16 autocast was measured faster at equal loss on CPUs with native bf16
# (`mini`, 384: 1.26-1.47x on a Xeon with AMX and a Zen 4 EPYC; 2.0x with hvdlm's cheaper dropout
# against nanoGPT's CPU default). Narrower models stay fp32 until measured at equal loss (`tiny`
# ran 1.35x faster for 15 steps on the Zen 4: benchmarks/RESULTS.md; benchmarks/precision.sh).
BF16_MIN_WIDTH = 384


def resolve_precision(precision: str, device: torch.device, n_embd: int, threads: int) -> tuple[str, str]:
    """The precision to train in, and why, in words for the start line ("" when it was given)."""
    if precision != "auto":
        return precision, ""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "auto: this GPU has bf16"
        return "fp32", "auto: this GPU has no bf16"
    ratio = cpu_peak("bf16", threads) / cpu_peak("fp32", threads)
    measured = f"bf16 matmuls {ratio:.2f}x fp32's on this CPU"
    if ratio < BF16_PEAK_RATIO:
        return "fp32", f"auto: {measured}"
    if n_embd < BF16_MIN_WIDTH:
        return "fp32", f"auto: {measured}, but a width of {n_embd} is below the {BF16_MIN_WIDTH} where bf16 pays"
    return "bf16", f"auto: {measured}"


def configure_matmuls(device: torch.device) -> None:
    """TF32 for fp32 matmuls on Ampere and newer GPUs (what nanoGPT and PyTorch recommend for
    training: fp32's range, a 10-bit mantissa, 8x the throughput); nothing on CPUs."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def compiles(setting: str, device: torch.device) -> bool:
    """``--compile``: auto compiles on GPUs only (on a 2-core CPU the compiled step was slower)."""
    return setting == "true" or (setting == "auto" and device.type == "cuda")


def autocast(precision: str, device: torch.device):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
