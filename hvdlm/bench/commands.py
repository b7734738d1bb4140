"""``hvdlm bench ...``: the benchmark subcommands (added to hvdlm's parser by ``add_bench_parser``)."""

from __future__ import annotations

import argparse

ALLREDUCE_EXAMPLES = """\
examples:
  mpirun -np 2 hvdlm bench allreduce                      # Horovod over MPI, torch gloo, mpi4py, memcpy
  horovodrun -np 2 --gloo hvdlm bench allreduce           # Horovod over Gloo (mpi4py needs an MPI launcher)
  mpirun -np 2 hvdlm bench allreduce --dtypes all --placement both --max_bytes 256M
  mpirun -np 2 --mca mpi_yield_when_idle 1 hvdlm bench allreduce --backends horovod,mpi4py --cycle_time_ms 0.1

Per size: bytes, elements, dtype, op, time avg/min/max (each the largest over ranks), algbw = bytes / avg,
busbw = algbw * 2(n-1)/n, and #wrong (elements that differ from the exact expected sum). Rank 0 prints the
table and writes allreduce.csv, allreduce.json and allreduce.png (busbw against size) to --out_dir.
Exit status: 0, 2 for bad input (on every rank), 1 when any result was wrong.
"""


def add_bench_parser(subparsers) -> None:
    """Add ``bench`` with its ``allreduce`` subcommand to hvdlm's subcommands."""
    p = subparsers.add_parser("bench", help="benchmarks (launch with horovodrun, mpirun or srun)",
                              description="Benchmarks of the pieces training relies on.")
    sub = p.add_subparsers(dest="bench", required=True, metavar="{allreduce,train,sync}")

    a = sub.add_parser("allreduce", help="allreduce latency and bandwidth: Horovod, torch.distributed, mpi4py, memcpy",
                       description="Sweep allreduce over message sizes, dtypes and in-place/out-of-place for "
                                   "each backend, nccl-tests style. Launch N ranks like training.",
                       epilog=ALLREDUCE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = a.add_argument_group("what to measure")
    g.add_argument("--backends", default="all",
                   help="comma list of horovod, torch-gloo, torch-nccl (GPUs), mpi4py (MPI launchers only; "
                        "measured before Horovod starts), memcpy, or all (default: all available here); "
                        "'torch' is torch-nccl on GPUs, torch-gloo otherwise; mpi4py-hvd (not in all): "
                        "mpi4py again, beside Horovod's background thread")
    g.add_argument("--dtypes", default="fp32", help="comma list of fp32, fp16, bf16, or all (default: fp32)")
    g.add_argument("--placement", default="in", help="in (in-place), out (out-of-place) or both (default: in)")
    g.add_argument("--min_bytes", default="4", help="smallest message; K/M/G are binary (default: 4)")
    g.add_argument("--max_bytes", default="64M", help="largest message, at most 2G (default: 64M)")
    g.add_argument("--factor", default="2", help="each size is the previous one times this (default: 2)")
    g.add_argument("--warmup", default="5", help="untimed iterations per size and backend (default: 5)")
    g.add_argument("--iters", default="20", help="timed iterations per size and backend (default: 20)")
    g.add_argument("--device", default="auto", help="auto (the GPU Horovod pins, else cpu), cpu or cuda")
    g.add_argument("--threads", default="0", help="torch threads per rank; 0 = this host's cores / its ranks")

    h = a.add_argument_group("Horovod settings (applied before hvd.init)")
    h.add_argument("--cycle_time_ms", default=None, help="HOROVOD_CYCLE_TIME: ms between background cycles")
    h.add_argument("--fusion_threshold", default=None,
                   help="HOROVOD_FUSION_THRESHOLD in bytes, K/M/G allowed; 0 disables tensor fusion")
    h.add_argument("--horovod_env", action="append", default=[], metavar="HOROVOD_NAME=VALUE",
                   help="any other Horovod setting (repeatable), e.g. HOROVOD_CACHE_CAPACITY=0")

    o = a.add_argument_group("output")
    o.add_argument("--out_dir", default="out/bench/allreduce",
                   help="where rank 0 writes allreduce.csv/.json/.png (default: out/bench/allreduce)")
    o.add_argument("--no_plot", action="store_true", help="skip the PNG")
    a.add_argument("--corrupt_for_test", action="store_true", help=argparse.SUPPRESS)
    a.set_defaults(func=cmd_allreduce)

    from hvdlm.bench.train import add_train_parser

    add_train_parser(sub)

    from hvdlm.bench.sync import add_sync_parser

    add_sync_parser(sub)


def cmd_allreduce(args: argparse.Namespace) -> None:
    from hvdlm.bench.allreduce import run, settings_from_args

    run(settings_from_args(args))
