"""How long the logged step's one-number allreduce waits for Horovod's cycle after a step's compute,
with the compute busy on the CPU or asleep (issue 32: `hvdlm plan`'s `collective` term). Each rank
runs the loop's shape: compute for C ms, start the stop check's allreduce (read a step later, as
``distributed.StopSignals`` does), then a blocking one-number average (``loop``'s train loss).
"busy" computes with one torch thread (matrix products) the whole C ms; "sleep" sleeps them. The
loop locks to the cycle: the average ends on a cycle's boundary, so the next step's compute ends C
after one, and the average waits for the next boundary: ceil(C / cycle) x cycle - C, half a cycle
on average over C (plan's model), when the cycle after the compute catches it; a cycle more when it
does not. Rank 0 prints one JSON line per (C, mode): the median and mean wait of the steps after
the first 5. Launch like training, e.g. on the test cluster's first two hosts:
    bash slurm/cluster.sh exec hvdnode1 horovodrun -np 2 -H hvdnode1:1,hvdnode2:1 --gloo \\
        python benchmarks/results/plan/cluster/cycle_probe.py --label "2 hosts"
"""

import argparse
import json
import math
import os
import statistics
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--compute_ms", default="65,73,80,88,95")
    p.add_argument("--modes", default="sleep,busy")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--cycle_ms", type=float, default=20.0, help="HOROVOD_CYCLE_TIME (default 20: hvdlm's periodic)")
    p.add_argument("--label", default="")
    args = p.parse_args()
    os.environ["HOROVOD_CYCLE_TIME"] = repr(args.cycle_ms)
    import torch
    import horovod.torch as hvd

    hvd.init()
    torch.set_num_threads(1)
    a = torch.randn(256, 256)
    for mode in args.modes.split(","):
        for c_ms in (float(x) for x in args.compute_ms.split(",")):
            waits, asked = [], None
            for step in range(args.steps + 5):
                t0 = time.perf_counter()
                if mode == "busy":
                    while time.perf_counter() - t0 < c_ms / 1e3:
                        a = (a @ a).clamp_(-1, 1)
                else:
                    time.sleep(c_ms / 1e3)
                t1 = time.perf_counter()
                if asked is not None:
                    hvd.synchronize(asked)
                asked = hvd.allreduce_async(torch.tensor([0.0, -c_ms], dtype=torch.float64), op=hvd.Max,
                                            name="probe.stop")
                hvd.allreduce(torch.tensor([1.0], dtype=torch.float64), op=hvd.Average, name="probe.loss")
                waits.append((time.perf_counter() - t1) * 1e3)
            hvd.synchronize(asked)
            if hvd.rank() == 0:
                cyc = args.cycle_ms
                print(json.dumps({"label": args.label, "ranks": hvd.size(), "mode": mode, "compute_ms": c_ms,
                                  "cycle_ms": cyc, "next_boundary_ms": math.ceil(c_ms / cyc) * cyc - c_ms,
                                  "wait_median_ms": round(statistics.median(waits[5:]), 2),
                                  "wait_mean_ms": round(statistics.mean(waits[5:]), 2)}), flush=True)


if __name__ == "__main__":
    main()
