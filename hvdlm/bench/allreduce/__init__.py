"""``hvdlm bench allreduce``: allreduce latency and bandwidth per backend, in nccl-tests' terms.

Launched like training (``horovodrun -np 2 hvdlm bench allreduce``, ``mpirun -np 2 ...``,
``srun ...``). For every dtype, placement (in-place, out-of-place) and message size, each backend
runs in turn (interleaved by size, so drift on a shared machine hits them all alike):

  horovod     ``hvd.allreduce_`` (in place) / ``hvd.allreduce``, op Sum, over whatever this launch
              gives Horovod: MPI or Gloo on CPUs (``mpirun`` vs ``horovodrun --gloo``), NCCL on GPUs
  torch-gloo  ``torch.distributed.all_reduce`` over gloo (torch-nccl: over NCCL, GPUs only)
  mpi4py      ``MPI.COMM_WORLD.Allreduce``: raw MPI, the floor to beat (needs an MPI launcher).
              Measured first, before hvd.init(): Horovod's background thread runs a coordination
              collective every cycle (busy-polling under MPI), and on a host with few cores that
              takes the cores raw MPI needs. ``mpi4py-hvd`` (asked for by name) measures the same
              calls beside Horovod, interleaved with the others, to show that cost.
  memcpy      ``dst.copy_(src)`` of the same buffer on every rank at once: the one-host roofline

Timing is synchronous: each call returns with the result in place (GPUs: after a device
synchronize), and each iteration is timed on its own after ``warmup`` untimed ones. A rank's
avg/min/max are over its iterations; the reported avg/min/max are each the largest over ranks.
algbw = bytes / avg and busbw = algbw * 2(n-1)/n, the bytes each rank moves in a ring allreduce;
for memcpy both are bytes copied per second by one rank (while every rank copies).

Correctness: after timing, each rank's buffer is refilled with small integers (element i of rank r
holds (i + r) mod m) whose sum over ranks is exact in every dtype, one more allreduce runs, and

Modules, one concern each:
  units        byte counts, sweep sizes, algbw and busbw
  correctness  the exact-sum pattern and the count of wrong elements
  settings     the flags as checked Settings
  backends     Horovod, torch.distributed, mpi4py, memcpy
  startup      the launch, the MPI floor (before Horovod), Horovod and the other backends
  measure      one backend at one size
  sweep        every size and backend, and the whole run
  results      the table, the summary, the description in the JSON, the plot, the median of runs
"""

from hvdlm.bench.allreduce.correctness import (count_wrong, expected_pattern, fill_periodic, pattern_period,
                                               rank_pattern)
from hvdlm.bench.allreduce.measure import time_calls
from hvdlm.bench.allreduce.results import CSV_FIELDS, median_of_runs, plot
from hvdlm.bench.allreduce.settings import Settings, settings_from_args
from hvdlm.bench.allreduce.sweep import run
from hvdlm.bench.allreduce.bandwidth import DTYPES, EXACT_INTEGERS, algbw, busbw, element_count, sweep_sizes

__all__ = ["CSV_FIELDS", "DTYPES", "EXACT_INTEGERS", "Settings", "algbw", "busbw", "count_wrong",
           "element_count", "expected_pattern", "fill_periodic", "median_of_runs",
           "pattern_period", "plot", "rank_pattern", "run", "settings_from_args", "sweep_sizes",
           "time_calls"]
