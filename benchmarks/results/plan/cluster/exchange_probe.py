"""How long one of hvdlm's exchanges takes on the test cluster's link, by wire type and size: the
calibration of `hvdlm plan`'s network terms apart from training. Every rank runs
``distributed.Average`` (the exchange local_sgd/diloco and bf16 use: fp32 and fp16 by Horovod's
ring allreduce, bf16 and int8 by alltoall + allgather) on a flat fp32 buffer, one warm-up and
--iters timed, each started right after a barrier; rank 0 prints one JSON line per (wire, size):
the best and median seconds. The fitted constants of RESULTS' plan check are read against these.
Launch like training, e.g. on 2 hosts at 100 Mbit/s:
    bash slurm/cluster.sh slow hvdnode1 100mbit; bash slurm/cluster.sh slow hvdnode2 100mbit
    bash slurm/cluster.sh exec hvdnode1 horovodrun -np 2 -H hvdnode1:1,hvdnode2:1 --gloo \\
        python benchmarks/results/plan/cluster/exchange_probe.py --sizes 1M,8M
"""

import argparse
import json
import os
import statistics
import time

import torch

from hvdlm import distributed as dist
from hvdlm.units import parse_bytes


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="1M,8M", help="fp32 buffer sizes (bytes, K/M binary)")
    p.add_argument("--wires", default="none,fp16,bf16,int8")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--label", default="")
    p.add_argument("--cycle_ms", default="1", help="HOROVOD_CYCLE_TIME (default 1: the latency shows)")
    args = p.parse_args()
    os.environ["HOROVOD_CYCLE_TIME"] = args.cycle_ms
    world = dist.init()
    for size in [parse_bytes(s, "--sizes") for s in args.sizes.split(",")]:
        flat = torch.randn(size // 4)
        for wire in args.wires.split(","):
            times = []
            for i in range(args.iters + 1):
                dist.barrier(f"probe.{wire}.{size}.{i}")
                t0 = time.perf_counter()
                dist.Average(flat, f"probe.{wire}.{size}.{i}", wire).result()
                times.append(time.perf_counter() - t0)
            if world.rank == 0:
                print(json.dumps({"label": args.label, "ranks": world.size, "wire": wire, "fp32_bytes": size,
                                  "best_s": min(times[1:]), "median_s": statistics.median(times[1:])}), flush=True)


if __name__ == "__main__":
    main()
