"""Benchmarks behind ``hvdlm bench``: library code that the CLI and the scripts in benchmarks/ call.

``allreduce``  allreduce latency and bandwidth per backend (Horovod, torch.distributed, mpi4py, memcpy);
               a package, one module per concern (see its docstring)
``output``     aligned tables, CSV, JSON and PNG plots, shared by every benchmark
"""
