"""The cost model behind ``hvdlm plan``: step time, tokens/s and bytes of every sync method at N ranks.

One concern per module, each term written down with its source in the module that computes it:

  ``network.py``  one collective's time: ring allreduce 2(N-1)/N x S/B + 2(N-1) x latency, the
                  hierarchical allreduce, hvdlm's alltoall + allgather exchange, Horovod's negotiation
                  (the CPU path); on GPUs it asks ``nccl.py``, or the fit of ``calibrate.py``
  ``topology.py`` a GPU host as it is built: GPUs, NVLink or PCIe, NVLink SHARP, NICs (defaults by
                  GPU, each with its source)
  ``nccl.py``     NCCL's choice of ring, tree, NVLS, CollNet per message and protocol, with NCCL's
                  tuning constants; Horovod's hierarchical allreduce as Horovod runs it over NCCL
  ``calibrate.py`` a user's nccl-tests or ``hvdlm bench allreduce`` output, fitted per size range
  ``straggler.py`` the wait for the slowest rank at each blocking collective, from the spread of a
                  rank's compute: it grows with the rank count as sqrt(2 ln N)
  ``overlap.py``  Horovod's background thread over one backward: when each gradient is ready, the
                  cycle, tensor fusion; how much of the allreduce ends after backward
  ``methods.py``  one row per method (none, fp16, bf16, powersgd r, local_sgd H, diloco H with each
                  wire, on time or overlapped): compute, exchange, exposed exchange, bytes
  ``penalty.py``  the loss each method was measured to cost (benchmarks/RESULTS.md)
  ``sources.py``  the model's parameters, and one rank's compute per step (given, read, measured,
                  or a GPU's peak x MFU)
  ``command.py``, ``table.py``  the command line and the table

What is not modelled: contention between the exchange and compute for memory or cores (on CPU
ranks the background thread shares the ranks' cores), MPI's choice of a non-ring algorithm for
small buffers, NCCL's channel counts and its small-size tree correction, a persistently slow rank (only a
spread, ``straggler.py``), DiLoCo's outer step's own compute,
Gloo's alltoall running below the link's rate with large chunks (benchmarks/RESULTS.md, the check).
"""
