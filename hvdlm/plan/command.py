"""``hvdlm plan``: the command line, and the table it prints."""

from __future__ import annotations

import argparse

from hvdlm.arguments import ranged, renamed
from hvdlm.errors import HvdlmError
from hvdlm.launcher import CPU_DEFAULTS_MPI, PERIODIC_CYCLE_MS
from hvdlm.mfu import flops_per_token, gpu_named, gpu_names

DEFAULT_INTRA = "1600gbit,2us"  # inside a host: NVLink-class (200 GB/s); CPU ranks: shared memory
DEFAULT_LINK = "25gbit,20us"  # between hosts, CPU ranks: 25 Gbit/s Ethernet
MPI_LATENCY = 5e-6  # MPI between hosts under --hierarchical on a --fabric, when --link gives none: a few us
#                     on InfiniBand/RoCE (assumed; give --link to state it)


def add_plan_parser(sub) -> None:
    """Every number is range-checked as it is parsed (``ranged``), --gpu looked up by its exact name
    (``gpu``): a bad value is one `hvdlm: error:` line naming the option before anything runs. A
    default of 0 or None means "not given" and is never checked."""
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
        g.add_argument(f"--{name}", type=ranged(int, 1), default=0, help=f"{name} (default: the preset's)")
    g.add_argument("--vocab_size", type=ranged(int, 1), default=0, help="default: --data_dir's meta.json, else 50257")
    g.add_argument("--data_dir", default="data/default", help="prepared data: vocabulary, and --measure's tokens")
    g = p.add_argument_group("batch and ranks")
    g.add_argument("--ranks", type=ranged(int, 1), required=True, help="ranks (one per GPU, or per CPU share)")
    g.add_argument("--ranks_per_host", type=ranged(int, 1), default=8, help="default: 8 (at most --ranks)")
    g.add_argument("--global_batch_size", dest="global_batch", type=ranged(int, 0), default=0,
                   help="sequences per step over all ranks (default, or 0 as in hvdlm train: --ranks x --batch_size)")
    renamed(p, "--global_batch", "--global_batch_size")
    g.add_argument("--batch_size", type=ranged(int, 1), default=0, help="sequences per rank per micro-step (at most "
                   "a rank's share; fewer means gradient accumulation; default: 8 when --global_batch_size is not "
                   "given, else the whole share)")
    g = p.add_argument_group("compute of one rank per step (one of)")
    g.add_argument("--step_ms", type=ranged(float, 0, above=True), default=0.0,
                   help="given, at this plan's per-rank batch")
    g.add_argument("--metrics", default="", help="a run's metrics.jsonl or out_dir: step time minus wait, per token")
    g.add_argument("--measure", type=ranged(int, 3), default=0, metavar="STEPS",
                   help="run hvdlm train here for STEPS steps (at least 3: the first 2 are not counted)")
    g.add_argument("--measure_ranks", type=ranged(int, 1), default=1, help="local ranks of --measure (default: 1)")
    g.add_argument("--gpu", type=gpu, default=None, help=f"with --mfu, one of: {gpu_names()} (case, spaces and "
                   "hyphens do not matter; a name is never matched by a part of it)")
    g.add_argument("--mfu", type=ranged(float, 0, 1, above=True), default=0.4,
                   help="model FLOPs utilization with --gpu, in (0, 1] (default: 0.4)")
    g.add_argument("--precision", default="bf16", choices=["fp32", "bf16"], help="with --gpu (default: bf16)")
    g.add_argument("--jitter_ms", type=ranged(float, 0), default=None, help="the spread (standard deviation) of "
                   "one rank's compute from step to step: every blocking collective waits for the slowest rank "
                   "(default: measured with --metrics/--measure, else 0)")
    g = p.add_argument_group("network and Horovod")
    g.add_argument("--link", default=None, help=f"between hosts: BANDWIDTH,LATENCY (default: {DEFAULT_LINK}); with "
                   "a --fabric: one NIC's rate (and MPI's latency for --hierarchical), one NIC a host unless --nics")
    g.add_argument("--preflight", default="", metavar="JSON", help="take the bandwidth between hosts from "
                   "`hvdlm preflight --json` (its slowest rank's point-to-point GB/s); latency from --link")
    g.add_argument("--intra_link", default=None, help=f"inside a host (default: {DEFAULT_INTRA}; with a --fabric: "
                   "its GPUs' ring bus bandwidth)")
    g.add_argument("--hierarchical", action="store_true", help="HOROVOD_HIERARCHICAL_ALLREDUCE=1")
    g.add_argument("--fabric", default="", metavar="GPU", help="GPU ranks under NCCL on hosts of this GPU (default: "
                   "--gpu's; 'none': Horovod over MPI/Gloo with --link and --intra_link): NCCL's ring, tree, NVLS or "
                   "CollNet per message, with the host's NICs and NVLink or PCIe (hvdlm/plan/topology.py)")
    g.add_argument("--nics", type=ranged(int, 1), default=None, help="NICs a host (default: the --fabric's)")
    g.add_argument("--nvls", default="auto", choices=["auto", "on", "off"], help="NVLink SHARP (default: where the "
                   "--fabric has it)")
    g.add_argument("--sharp", action="store_true", help="the switches reduce (NCCL's CollNet/SHARP)")
    g.add_argument("--calibrate", action="append", default=[], metavar="FILE", help="an nccl-tests all_reduce_perf "
                   "output or `hvdlm bench allreduce`'s allreduce.json: the allreduce's bus bandwidth per size and "
                   "latency fitted from it, each dtype apart (again for another rank count: overhead and hop "
                   "latency apart)")
    g.add_argument("--cycle_ms", type=ranged(float, 0), default=None,
                   help=f"Horovod's cycle under every-step sync (default: {CPU_DEFAULTS_MPI['HOROVOD_CYCLE_TIME']}, "
                        "hvdlm's on CPUs under MPI)")
    g.add_argument("--periodic_cycle_ms", type=ranged(float, 0), default=None,
                   help=f"hvdlm's cycle under local_sgd/diloco (default: {PERIODIC_CYCLE_MS})")
    g.add_argument("--fusion", default="128M", help="HOROVOD_FUSION_THRESHOLD (default: 128M, Horovod 0.28's; "
                   "0: no fusion, as in Horovod)")
    g.add_argument("--mem_bw", default="", help="memory bandwidth for copies, e.g. 3.35TB/s (default: --gpu's "
                   "HBM, else timed here)")
    g = p.add_argument_group("methods")
    d = DistributedConfig()
    g.add_argument("--powersgd_rank", dest="powersgd_ranks", default="4,8",
                   help="PowerSGD's rank, or a comma list of ranks to compare (default: 4,8)")
    renamed(p, "--powersgd_ranks", "--powersgd_rank")
    g.add_argument("--powersgd_min_compression", type=ranged(float, 0), default=d.powersgd_min_compression,
                   help=f"as in hvdlm train (default: {d.powersgd_min_compression:g})")
    g.add_argument("--sync_every", default="25,50", help="local_sgd/diloco H, comma list (default: 25,50)")
    g.add_argument("--overlap_steps", type=ranged(int, 1), default=4, help="the overlapped rows' T (default: 4)")
    g.add_argument("--log_interval", type=ranged(int, 1), default=10, help="hvdlm train's --log_interval (default: "
                   "10): a logged step waits for the loss's average, behind an overlapped exchange in flight")
    g.add_argument("--max_loss_penalty", type=ranged(float, 0), default=3.0,
                   help="in %% of fp32 every-step sync's val loss (default: 3)")
    g.add_argument("--json", default="", metavar="PATH", help="also write the rows to this JSON file")
    p.set_defaults(func=cmd_plan)


def gpu(text: str):
    """--gpu's type: the GPU of that exact name, else one line listing the known ones."""
    found = gpu_named(text)
    if found is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a GPU hvdlm knows; it knows {gpu_names()}")
    return found


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
    from hvdlm.units import parse_bytes, parse_rate

    cluster = network_of(args)
    global_batch = args.global_batch or args.ranks * (args.batch_size or 8)
    if global_batch % args.ranks:
        raise HvdlmError(f"--global_batch_size {global_batch} does not divide into --ranks {args.ranks} equal shares")
    share = global_batch // args.ranks
    micro = min(args.batch_size, share) if args.batch_size else share
    if share % micro:
        raise HvdlmError(f"--batch_size {micro} does not divide a rank's share of {share} sequences")
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
    spread = 0.0  # the compute's spread from step to step, where it is measured
    if args.step_ms:
        compute, source = args.step_ms / 1e3, f"--step_ms {args.step_ms:g}"
    elif args.metrics:
        (compute, spread), source = sources.compute_from_metrics(args.metrics, tokens_per_rank), f"from {args.metrics}"
    elif args.gpu:
        compute = sources.compute_from_gpu(shape, tokens_per_rank, args.gpu, args.mfu, args.precision)
        source = f"{args.gpu.name} {args.precision} at MFU {args.mfu:g}"
    else:
        compute, spread = sources.compute_by_measuring(shape, micro, args.measure, args.measure_ranks, args.data_dir)
        compute, spread = compute * (share // micro), spread * (share // micro)
        work = tuple(sources.powersgd_work(shape, int_list(args.powersgd_ranks, "--powersgd_rank"),
                                          args.powersgd_min_compression).items())
        source = (f"measured here: {args.measure} steps on {args.measure_ranks} rank(s); PowerSGD's work "
                  + ", ".join(f"r{r} {t * 1e3:.3g} ms" for r, t in work))
    if args.jitter_ms is not None:
        spread = args.jitter_ms / 1e3
    cycle_ms = float(CPU_DEFAULTS_MPI["HOROVOD_CYCLE_TIME"]) if args.cycle_ms is None else args.cycle_ms
    periodic_cycle_ms = float(PERIODIC_CYCLE_MS) if args.periodic_cycle_ms is None else args.periodic_cycle_ms

    s = Setting(params=sources.parameters(shape), shape=shape, cluster=cluster, compute=compute,
                accum=share // micro, tokens_per_step=global_batch * shape["block_size"],
                cycle=cycle_ms / 1e3, periodic_cycle=periodic_cycle_ms / 1e3,
                threshold=parse_bytes(args.fusion, "--fusion"),
                mem_bw=parse_rate(args.mem_bw, "--mem_bw") if args.mem_bw else sources.memory_bandwidth(args.gpu),
                flops=flops_per_token(shape) * tokens_per_rank / compute,
                min_compression=args.powersgd_min_compression, powersgd_work=work, log_interval=args.log_interval,
                jitter=spread)
    return s, share, source


def network_of(args: argparse.Namespace):
    """The Cluster: Horovod over MPI/Gloo (--link, --intra_link), GPU ranks under NCCL on a --fabric
    (its defaults, with what the command line states instead), or --calibrate's measurements."""
    from hvdlm.plan import calibrate, sources, topology
    from hvdlm.plan.network import Cluster, Link
    from hvdlm.plan.nccl import HOP
    from hvdlm.units import parse_link

    name = args.fabric or (args.gpu.name if getattr(args, "gpu", None) else "")
    fabric = None if name.lower() in ("", "none") else topology.fabric_for(name)
    link = parse_link(args.link, "--link") if args.link else None
    if fabric is None:
        inter = Link(*(link or parse_link(DEFAULT_LINK, "--link")))
        intra = Link(*parse_link(args.intra_link or DEFAULT_INTRA, "--intra_link"))
    else:
        ring = parse_link(args.intra_link, "--intra_link")[0] if args.intra_link else None
        fabric = topology.override(fabric, nics=args.nics if args.nics is not None else (1 if link else None),
                                   nic=link[0] if link else None, ring_busbw=ring, nvls=args.nvls, sharp=args.sharp)
        if args.ranks_per_host > fabric.gpus and args.ranks > fabric.gpus:
            raise HvdlmError(f"--ranks_per_host {args.ranks_per_host} is more than the {fabric.gpus} GPUs a host "
                             f"of {fabric.name} has")
        # the links hvdlm's alltoall/allgather and the negotiation use: the host's NICs and NCCL's
        # Simple ring hop latencies (nccl.HOP); MPI's latency for Horovod's hierarchical allreduce
        inter = Link(fabric.network(args.ranks_per_host), link[1] if link else MPI_LATENCY)
        intra = Link(fabric.ring_busbw, HOP[fabric.intra]["ring"][2] * 1e-6)
    if args.preflight:
        inter = Link(sources.preflight_bandwidth(args.preflight), inter.latency)
    measured = calibrate.from_files(args.calibrate) if args.calibrate else None
    if measured is not None and fabric is None:  # hvdlm's alltoall and allgather: the measured link
        inter = intra = Link(measured.peak, measured.hop)
    uncertainty = measured.uncertainty if measured else fabric.uncertainty if fabric else None
    extra = {"uncertainty": uncertainty} if uncertainty is not None else {}
    return Cluster(args.ranks, args.ranks_per_host, inter, intra, args.hierarchical, fabric=fabric,
                   measured=measured, **extra)
