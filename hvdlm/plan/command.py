"""``hvdlm plan``: the command line, and the table it prints."""

from __future__ import annotations

import argparse

from hvdlm.arguments import renamed
from hvdlm.errors import HvdlmError
from hvdlm.launcher import CPU_DEFAULTS_MPI, PERIODIC_CYCLE_MS

DEFAULT_INTRA = "1600gbit,2us"  # inside a host: NVLink-class (200 GB/s); CPU ranks: shared memory


def add_plan_parser(sub) -> None:
    from hvdlm.config import DistributedConfig
    from hvdlm.model import PRESETS

    p = sub.add_parser("plan", help="predict step time, tokens/s and bytes of every sync method at N ranks",
                       description="A cost model (hvdlm/plan/): for every --compression/--sync method, one rank's "
                                   "compute, the exchange, the part of it not hidden behind backward, the step, "
                                   "tokens/s, scaling efficiency against N independent ranks and the bytes sent; "
                                   "then the fastest method whose measured loss penalty is within "
                                   "--max_loss_penalty. Runs nothing on other hosts.")
    g = p.add_argument_group("model")
    g.add_argument("--preset", default=None, choices=list(PRESETS), help="model size (or --out_dir, --init_from)")
    g.add_argument("--out_dir", default="", help="the model of this `hvdlm train` run (its config.toml)")
    g.add_argument("--init_from", default="", help="the model `hvdlm train --init_from` would start from: a GPT-2 "
                   "folder (its config.json) or an hvdlm out_dir")
    for name in ("n_layer", "n_head", "n_embd", "block_size"):
        g.add_argument(f"--{name}", type=int, default=0, help=f"{name} (default: the preset's)")
    g.add_argument("--vocab_size", type=int, default=0, help="default: --data_dir's meta.json, else 50257")
    g.add_argument("--data_dir", default="data/default", help="prepared data: vocabulary, and --measure's tokens")
    g = p.add_argument_group("batch and ranks")
    g.add_argument("--ranks", type=int, required=True, help="ranks (one per GPU, or per CPU share)")
    g.add_argument("--ranks_per_host", type=int, default=8, help="default: 8 (at most --ranks)")
    g.add_argument("--global_batch_size", dest="global_batch", type=int, default=0,
                   help="sequences per step over all ranks (default: --ranks x --batch_size)")
    renamed(p, "--global_batch", "--global_batch_size")
    g.add_argument("--batch_size", type=int, default=0, help="sequences per rank per micro-step (at most a rank's "
                   "share; fewer means gradient accumulation; default: 8 when --global_batch_size is not given, else "
                   "the whole share)")
    g = p.add_argument_group("compute of one rank per step (one of)")
    g.add_argument("--step_ms", type=float, default=0.0, help="given, at this plan's per-rank batch")
    g.add_argument("--metrics", default="", help="a run's metrics.jsonl or out_dir: step time minus wait, per token")
    g.add_argument("--measure", type=int, default=0, metavar="STEPS", help="run hvdlm train here for STEPS steps")
    g.add_argument("--measure_ranks", type=int, default=1, help="local ranks of --measure (default: 1)")
    g.add_argument("--gpu", default="", help="a GPU name of hvdlm.mfu.GPU_PEAKS (with --mfu)")
    g.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilization with --gpu (default: 0.4)")
    g.add_argument("--precision", default="bf16", choices=["fp32", "bf16"], help="with --gpu (default: bf16)")
    g = p.add_argument_group("network and Horovod")
    g.add_argument("--link", default="25gbit,20us", help="between hosts: BANDWIDTH,LATENCY (default: 25gbit,20us)")
    g.add_argument("--preflight", default="", metavar="JSON", help="take the bandwidth between hosts from "
                   "`hvdlm preflight --json` (its slowest rank's point-to-point GB/s); latency from --link")
    g.add_argument("--intra_link", default=DEFAULT_INTRA, help=f"inside a host (default: {DEFAULT_INTRA})")
    g.add_argument("--hierarchical", action="store_true", help="HOROVOD_HIERARCHICAL_ALLREDUCE=1")
    g.add_argument("--cycle_ms", type=float, default=None,
                   help=f"Horovod's cycle under every-step sync (default: {CPU_DEFAULTS_MPI['HOROVOD_CYCLE_TIME']}, "
                        "hvdlm's on CPUs under MPI)")
    g.add_argument("--periodic_cycle_ms", type=float, default=None,
                   help=f"hvdlm's cycle under local_sgd/diloco (default: {PERIODIC_CYCLE_MS})")
    g.add_argument("--fusion", default="128M", help="HOROVOD_FUSION_THRESHOLD (default: 128M, Horovod 0.28's)")
    g.add_argument("--mem_bw", default="", help="memory bandwidth for copies, e.g. 3.35TB/s (default: --gpu's "
                   "HBM, else timed here)")
    g = p.add_argument_group("methods")
    d = DistributedConfig()
    g.add_argument("--powersgd_rank", dest="powersgd_ranks", default="4,8",
                   help="PowerSGD's rank, or a comma list of ranks to compare (default: 4,8)")
    renamed(p, "--powersgd_ranks", "--powersgd_rank")
    g.add_argument("--powersgd_min_compression", type=float, default=d.powersgd_min_compression)
    g.add_argument("--sync_every", default="25,50", help="local_sgd/diloco H, comma list (default: 25,50)")
    g.add_argument("--overlap_steps", type=int, default=4, help="the overlapped rows' T (default: 4)")
    g.add_argument("--log_interval", type=int, default=10, help="hvdlm train's --log_interval (default: 10): a "
                   "logged step waits for the loss's average, behind an overlapped exchange in flight")
    g.add_argument("--max_loss_penalty", type=float, default=3.0,
                   help="in %% of fp32 every-step sync's val loss (default: 3)")
    g.add_argument("--json", default="", metavar="PATH", help="also write the rows to this JSON file")
    p.set_defaults(func=cmd_plan)


def int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise HvdlmError(f"{what} {text!r} is not a comma list of positive whole numbers")
    return values


def cmd_plan(args: argparse.Namespace) -> None:
    from hvdlm.plan.table import methods, report

    try:
        ms = methods(int_list(args.powersgd_ranks, "--powersgd_rank"), int_list(args.sync_every, "--sync_every"),
                     args.overlap_steps)
        s, share, source = setting(args)
    except HvdlmError as e:  # one process: a clean exit (cli.main ends a lone rank's error with os._exit)
        raise HvdlmError(str(e), everywhere=True) from None
    report(args, ms, s, share, source)


def setting(args: argparse.Namespace):
    """(Setting, per-rank batch, compute source) from the command line; every input checked first."""
    from hvdlm.plan import sources
    from hvdlm.plan.methods import Setting
    from hvdlm.plan.network import Cluster, Link
    from hvdlm.units import parse_bytes, parse_link, parse_rate

    inter, intra = Link(*parse_link(args.link, "--link")), Link(*parse_link(args.intra_link, "--intra_link"))
    if args.preflight:
        inter = Link(sources.preflight_bandwidth(args.preflight), inter.latency)
    cluster = Cluster(args.ranks, args.ranks_per_host, inter, intra, args.hierarchical)
    global_batch = args.global_batch or args.ranks * (args.batch_size or 8)
    if global_batch < 1 or global_batch % args.ranks:
        raise HvdlmError(f"--global_batch_size {global_batch} does not divide into --ranks {args.ranks} equal shares")
    share = global_batch // args.ranks
    micro = min(args.batch_size, share) if args.batch_size else share
    if share % micro:
        raise HvdlmError(f"--batch_size {micro} does not divide a rank's share of {share} sequences")
    if args.log_interval < 1:
        raise HvdlmError(f"--log_interval {args.log_interval} is out of range: at least 1")
    given = [bool(args.step_ms), bool(args.metrics), bool(args.measure), bool(args.gpu)]
    if sum(given) != 1:
        raise HvdlmError("give one of --step_ms, --metrics, --measure STEPS or --gpu NAME (with --mfu)")
    if sum(map(bool, (args.preset, args.out_dir, args.init_from))) != 1:
        raise HvdlmError("give the model as --preset NAME, --out_dir RUN or --init_from FOLDER (one of them)")
    if args.out_dir:
        shape = sources.model_from_out_dir(args.out_dir, args.vocab_size)
    elif args.init_from:
        shape = sources.model_from_init(args.init_from, args.block_size)
    else:
        overrides = {k: getattr(args, k) for k in ("n_layer", "n_head", "n_embd", "block_size")}
        shape = sources.model_from_preset(args.preset, overrides, sources.vocab_of(args.data_dir, args.vocab_size))
    tokens_per_rank = share * shape["block_size"]
    work = ()  # PowerSGD's own work, timed here only when the plan measures here
    if args.step_ms:
        compute, source = args.step_ms / 1e3, f"--step_ms {args.step_ms:g}"
    elif args.metrics:
        compute, source = sources.compute_from_metrics(args.metrics, tokens_per_rank), f"from {args.metrics}"
    elif args.gpu:
        compute = sources.compute_from_gpu(shape, tokens_per_rank, args.gpu, args.mfu, args.precision)
        source = f"{args.gpu} {args.precision} at MFU {args.mfu:g}"
    else:
        compute = sources.compute_by_measuring(shape, micro, args.measure, args.measure_ranks, args.data_dir)
        compute *= share // micro
        work = tuple(sources.powersgd_work(shape, int_list(args.powersgd_ranks, "--powersgd_rank"),
                                          args.powersgd_min_compression).items())
        source = (f"measured here: {args.measure} steps on {args.measure_ranks} rank(s); PowerSGD's work "
                  + ", ".join(f"r{r} {t * 1e3:.3g} ms" for r, t in work))
    from hvdlm.mfu import flops_per_token

    cycle_ms = float(CPU_DEFAULTS_MPI["HOROVOD_CYCLE_TIME"]) if args.cycle_ms is None else args.cycle_ms
    periodic_cycle_ms = float(PERIODIC_CYCLE_MS) if args.periodic_cycle_ms is None else args.periodic_cycle_ms

    s = Setting(params=sources.parameters(shape), shape=shape, cluster=cluster, compute=compute,
                accum=share // micro, tokens_per_step=global_batch * shape["block_size"],
                cycle=cycle_ms / 1e3, periodic_cycle=periodic_cycle_ms / 1e3,
                threshold=parse_bytes(args.fusion, "--fusion"),
                mem_bw=parse_rate(args.mem_bw, "--mem_bw") if args.mem_bw else sources.memory_bandwidth(args.gpu),
                flops=flops_per_token(shape) * tokens_per_rank / compute,
                min_compression=args.powersgd_min_compression, powersgd_work=work, log_interval=args.log_interval)
    return s, share, source

