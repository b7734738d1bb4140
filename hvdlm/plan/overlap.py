"""How much of the gradient allreduce hides behind backward: Horovod's background thread, simulated.

Horovod's DistributedOptimizer hooks every parameter: when backward has produced a gradient
(on the last micro-step, ``backward_passes_per_step``), it is queued. Horovod's background thread
wakes once per cycle (HOROVOD_CYCLE_TIME, Horovod's default 1 ms; hvdlm sets 1 ms for CPU ranks
under MPI, ``launcher.CPU_DEFAULTS_MPI``), negotiates which queued tensors every rank has
ready, packs them in order into fused buffers of at most HOROVOD_FUSION_THRESHOLD bytes (Horovod
0.28.1's default 128 MB, ``horovodrun --help``; the docs' "Tensor Fusion" page still says 64 MB,
the default until 0.21.0 raised it, with the cycle from 5 to 1 ms: its changelog, #2468) and
runs them one after another (docs "Tensor Fusion"); a tensor larger than the threshold goes
alone. The next cycle starts when the buffers are done, or one cycle after the last start.

When a gradient is ready: backward runs the layers in reverse, so the gradients of the last
block come first. Its time is shared in proportion to the backward FLOPs each part does: the
output head (tied to the token embedding) first, then each block; the embeddings' gradients
(the tied token embedding sums the head's and the input's contributions) are ready only at the
very end of backward. What runs after backward is exposed: the step waits for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from hvdlm.model import padded_vocab


@dataclass
class Ready:
    at: float  # seconds after the last backward starts
    nbytes: float


@dataclass
class Timeline:
    busy: float  # seconds the background thread spent negotiating and reducing
    finish: float  # when the last buffer is done, seconds after the last backward starts
    buffers: int


def fused(sizes: list[float], threshold: float) -> list[float]:
    """Fused buffers, in order: each at most ``threshold`` bytes; a larger tensor goes alone."""
    out: list[float] = []
    current = 0.0
    for s in sizes:
        if current and current + s > threshold:
            out.append(current)
            current = 0.0
        current += s
    if current:
        out.append(current)
    return out


def simulate(tensors: list[Ready], cycle: float, threshold: float, cost: Callable[[float], float],
             negotiate: float) -> Timeline:
    """Run the background thread over ``tensors`` (ready times and bytes); the first cycle starts
    half a cycle in (its phase against the step is unknown)."""
    pending = sorted(tensors, key=lambda r: r.at)
    t, busy, buffers = cycle / 2, 0.0, 0
    while pending:
        ready = [r for r in pending if r.at <= t]
        if not ready:
            # idle cycles until the next gradient arrives
            t = t + max(1, -(-(pending[0].at - t) // cycle)) * cycle if cycle > 0 else pending[0].at
            continue
        pending = pending[len(ready):]
        start = t
        t += negotiate
        for size in fused([r.nbytes for r in ready], threshold):
            t += cost(size)
            buffers += 1
        busy += t - start
        t = max(t, start + cycle)
    return Timeline(busy, t if buffers else 0.0, buffers)


def ready_times(params: list[tuple[str, tuple[int, ...]]], shape: dict, backward: float,
                bytes_per_element: float) -> list[Ready]:
    """When each gradient of hvdlm's GPT is ready in a backward of ``backward`` seconds."""
    c, t_ctx, layers = shape["n_embd"], shape["block_size"], shape["n_layer"]
    head = 4 * padded_vocab(shape) * c  # backward FLOPs per token: 2/3 of 6 x weights (padding rows too)
    block = 4 * 12 * c * c + 8 * c * t_ctx  # weights, plus 2/3 of attention's 12 x C x T
    total = head + layers * block
    out = []
    for name, shp in params:
        numel = 1
        for d in shp:
            numel *= d
        if name.startswith("blocks."):
            i = int(name.split(".")[1])
            done = head + (layers - i) * block  # block i is done after the blocks above it
        elif name.startswith("ln_f"):
            done = head
        else:  # the embeddings: ready when backward ends
            done = total
        out.append(Ready(backward * done / total, numel * bytes_per_element))
    return out
