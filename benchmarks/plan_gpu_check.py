"""hvdlm plan's GPU network model (hvdlm/plan/nccl.py, topology.py) against published figures.

Prints, for H100-class hosts (8 GPUs, NVLink 4 + NVSwitch, 8 x 400 Gbit/s NICs), the predicted
allreduce bus bandwidth (nccl-tests' busbw) beside every published figure found: single points
(``PUBLISHED``), then whole runs of 2-8 hosts at 64 MB-1 GB (``RUNS``: the one nccl.MULTI_HOST was
fitted on, and the others, a check), with the error; then the model's grid for 1-16 hosts; then
Horovod's published scaling efficiency on its benchmark (128 and 512 GPUs), predicted from the
models' parameters, the published step time and the published cluster. Arithmetic only:

    .venv/bin/python benchmarks/plan_gpu_check.py
"""

from __future__ import annotations

import math
from dataclasses import replace

from hvdlm.plan import nccl, overlap
from hvdlm.plan.topology import EDR, GB, Fabric, fabric_for

MB = 1 << 20
H100 = fabric_for("H100")

# (hosts, bytes, algorithms NCCL may use or None for its choice, nvls, published busbw GB/s, source)
PUBLISHED = [
    (1, 8 << 30, None, True, 480.0, "nccl-tests#347: 8 H100, 8 GB, 479.4-480.1 GB/s (NVLS)"),
    (1, 4 << 30, ("ring",), True, 367.5, "nccl#1455: 8 H100, NCCL_ALGO=RING, 2-4 GB: 365-370 GB/s"),
    (1, 1 << 30, None, True, 476.0, "nccl-tests#290: 8 H100, 128 MB-4 GB, avg busbw 476 GB/s (NVLS)"),
    (2, 4 << 30, None, True, 430.0, "nccl#1221: 2 x 8 H100, 8 x 400G RoCE, 4-8 GB, NVLS on: 430 GB/s"),
    (2, 4 << 30, None, False, 330.0, "nccl#1221: the same, NCCL_NVLS_ENABLE=0: 330 GB/s"),
    (4, 4 << 30, None, True, 320.0, "nccl#1221: 4 x 8 H100, 4-8 GB: 320 GB/s, NVLS on or off"),
    (16, 64 * MB, None, True, 150.0, "nccl#1469: 16 x 8 H100, 64 MB: 'normal' ~150 GB/s (unstable run to run)"),
    (248, 512 * MB, None, True, 350.0, "nccl-tests#283: 248 x 8 H200, 512 MB: ~350 GB/s typical"),
]


# Whole published runs at 64 MB, 128 MB, 256 MB, 512 MB and 1 GB (out-of-place busbw, GB/s), 8 H100 a
# host; runs that their threads diagnose as broken (nccl-tests#290's, #319's) are left out.
SIZES = [64 * MB, 128 * MB, 256 * MB, 512 * MB, 1 << 30]
RUNS = [  # (hosts, algorithms or None, busbw at SIZES, source; "fitted" marks nccl.MULTI_HOST's run)
    (2, None, [269.98, 336.29, 392.35, 426.97, 448.90], "nccl-tests#309 (XE9680, 8 x CX-7 400G IB, NCCL 2.26.2; "
     "maintainer: 'look good') - fitted"),
    (2, None, [263.66, 335.25, 388.31, 423.57, 447.65], "nccl-tests#309, a second cluster (400G IB), default"),
    (2, ("ring",), [290.04, 316.24, 371.22, 379.87, 384.49], "the same, NCCL_ALGO=Ring, MIN_CTAS=24, 2 QPs"),
    (4, None, [224.53, 262.48, 294.16, 334.58, 358.14], "nccl-tests#309, 4 VMs of 8 x 400G IB (maintainer: 'good')"),
    (4, None, [208.34, 246.41, 234.35, 288.88, 322.02], "nccl-tests#309, the second cluster, default"),
    (4, None, [224.38, 275.26, 239.78, 290.67, 324.48], "Voltage Park (ZiyanIshani/vpbenchmarking), NCCL 2.24.3"),
    (8, None, [184.00, 227.97, 270.31, 300.51, 286.81], "nccl-tests#309, the second cluster, default"),
]


def predicted(hosts: int, nbytes: int, algorithms=None, nvls: bool = True, fabric: Fabric = H100):
    f = fabric if nvls else replace(fabric, nvls_busbw=0.0)
    n = 8 * hosts
    pairs = [c for c in nccl.candidates(f, n, 8, nbytes) if algorithms is None or c.algorithm in algorithms]
    best = min(pairs, key=lambda c: c.seconds)
    return nccl.busbw(nbytes, n, best.seconds) / GB, best.label


def size(b: int) -> str:
    return f"{b / (1 << 30):g} GB" if b >= 1 << 30 else f"{b / MB:g} MB"


def published_check() -> list[float]:
    errors = []
    print("| hosts x 8 GPUs | size | NCCL's pick (model) | predicted busbw GB/s | published GB/s | error | source |")
    print("|---|---|---|---|---|---|---|")
    for hosts, nbytes, algos, nvls, pub, src in PUBLISHED:
        bw, label = predicted(hosts, nbytes, algos, nvls)
        e = bw / pub - 1
        errors.append(e)
        print(f"| {hosts} | {size(nbytes)} | {label} | {bw:.0f} | {pub:.0f} | {e:+.0%} | {src} |")
    return errors


def runs_check() -> list[float]:
    """Every published run of ``RUNS`` size by size; the errors of the runs not fitted on."""
    errors = []
    print("\n| hosts x 8 H100 | " + " | ".join(size(s) for s in SIZES) + " | source |")
    print("|---|" + "---|" * len(SIZES) + "---|")
    for hosts, algos, pubs, src in RUNS:
        cells = []
        for nbytes, pub in zip(SIZES, pubs):
            bw, _ = predicted(hosts, nbytes, algos)
            e = bw / pub - 1
            if not src.endswith("fitted"):
                errors.append(e)
            cells.append(f"{bw:.0f} / {pub:.0f} {e:+.0%}" + ("" if abs(e) <= 0.2 else " **"))
        print(f"| {hosts}{' (ring)' if algos else ''} | " + " | ".join(cells) + f" | {src} |")
    inside = sum(abs(e) <= 0.2 for e in errors)
    print(f"\npredicted / published busbw (** outside 20%); the runs not fitted on: {inside} of {len(errors)} "
          "points within 20%")
    return errors


def grid() -> None:
    print("\n| hosts x 8 H100 | 64 MB | 256 MB | 1 GB |")
    print("|---|---|---|---|")
    for hosts in (1, 2, 4, 8, 16):
        cells = []
        for nbytes in (64 * MB, 256 * MB, 1 << 30):
            bw, label = predicted(hosts, nbytes)
            cells.append(f"{bw:.0f} ±{bw * H100.uncertainty:.0f} ({label})")
        print(f"| {hosts} | " + " | ".join(cells) + " |")


# Horovod's benchmark (docs/benchmarks.rst, README): 128 servers x 4 Pascal GPUs, RoCE-capable
# 25 Gbit/s, tf_cnn_benchmarks with batch 64 a GPU; 90% scaling efficiency for Inception V3 and
# ResNet-101, 68% for VGG-16 at 512 GPUs. Its ring-only NCCL 2 (trees came with NCCL 2.4, 2019),
# HOROVOD_CYCLE_TIME 5 ms and fusion 64 MB (the defaults before 0.21, Horovod's changelog #2468).
PASCAL = Fabric(name="4 x P100 PCIe, 1 x 25 Gbit/s RoCE", ring_busbw=10 * GB, intra="pcie", nvls_busbw=0.0,
                nics=1, nic=25e9 / 8 * EDR / 12.5e9, uncertainty=0.25)
# parameters: Keras Applications' counts. One GPU's step (batch 64): Inception V3 142 and VGG-16 154 img/s on
# a P100 (TensorFlow's benchmarks page, DGX-1, synthetic data, May 2017: tensorflow/docs_src/performance/
# benchmarks.md); ResNet-101 is not on it: Horovod's own docs give 1656.82 img/s on 16 GPUs (103.6 a GPU).
MODELS = [("ResNet-101", 44.7e6, 64 / (1656.82 / 16), "spread"),
          ("Inception V3", 23.9e6, 64 / 142, "spread"),
          ("VGG-16", 138.4e6, 64 / 154, "vgg")]
# Published scaling efficiency by GPU count: 512 (128 servers; docs/benchmarks.rst since April 2018)
# and 128 (32 servers of the same kind, 90% / 90% / 79%; docs/benchmarks.md before the 512-GPU chart
# replaced it, whose runs used branch horovod_v2 of alsrgv/benchmarks).
SCALING = {128: {"ResNet-101": 0.90, "Inception V3": 0.90, "VGG-16": 0.79},
           512: {"ResNet-101": 0.90, "Inception V3": 0.90, "VGG-16": 0.68}}


def horovod_efficiency(params: float, step: float, profile: str, gpus: int = 512) -> float:
    """Horovod's background thread over one backward (overlap.simulate) with NCCL's ring on the
    Pascal cluster; gradients ready evenly through backward, except VGG-16's fully connected layers
    (123.6M of its parameters), ready as backward starts (they are the last layers of forward)."""
    backward = step * 2 / 3
    nbytes = params * 4
    if profile == "vgg":
        ready = [overlap.Ready(0.0, 123.6e6 * 4)] + [overlap.Ready(backward * (k + 1) / 13, (params - 123.6e6) * 4 / 13)
                                                     for k in range(13)]
    else:
        ready = [overlap.Ready(backward * (k + 1) / 100, nbytes / 100) for k in range(100)]

    def cost(b):
        return min((c for c in nccl.candidates(PASCAL, gpus, 4, b) if c.algorithm == "ring"),
                   key=lambda c: c.seconds).seconds

    tl = overlap.simulate(ready, 0.005, 64 * MB, cost, 2 * math.ceil(math.log2(gpus)) * 20e-6)
    return step / (step + max(0.0, tl.finish - backward))


def horovod_check() -> list[float]:
    print("\n| model (Pascal GPUs, 4 a server, 25 Gbit/s) | params | step s | GPUs | predicted | published "
          "| error (points) |")
    print("|---|---|---|---|---|---|---|")
    out = []
    for gpus, published in SCALING.items():
        for name, params, step, profile in MODELS:
            eff, pub = horovod_efficiency(params, step, profile, gpus), published[name]
            out.append(eff - pub)
            print(f"| {name} | {params / 1e6:.1f}M | {step:.3f} | {gpus} | {eff:.0%} | {pub:.0%} "
                  f"| {(eff - pub) * 100:+.0f} |")
    return out


if __name__ == "__main__":
    errors = published_check()
    print(f"\nlargest error {max(abs(e) for e in errors):.0%}; H100 fabric's stated uncertainty "
          f"±{H100.uncertainty:.0%} (hvdlm/plan/topology.py)")
    runs_check()
    grid()
    horovod_check()
