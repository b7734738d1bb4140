"""``hvdlm bench train``: training throughput of hvdlm beside its baselines, in one invocation.

Each configuration is a real run of ``hvdlm train`` (or of the DDP baseline, ``hvdlm.bench.ddp``
under torchrun, or of the bare PyTorch loop, ``hvdlm.bench.bare``) with the same model, data,
global batch, precision and cores; the runs are interleaved ``--repeats`` times because these
machines are noisy. Per run: tokens/s (total and per rank) over the steps after ``--warmup``,
the step time split into compute and the wait for the allreduce, the whole process's wall time
(start-up included), and these ratios: against one rank using all the cores (what data
parallelism should not lose on one host), the scaling efficiency N-rank / (N x one rank of 1/N
of the cores), N ranks against N one-rank runs side by side (the same per-rank work at the same
time, so sharing the host's memory bandwidth as the ranks do: what the exchange itself costs;
the median over repeats of the ratio within each repeat), and, for one rank, the bare loop's wall
time over this run's (what hvdlm's own machinery costs end to end; 1.00 = nothing).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from hvdlm.bench.output import format_grid, write_csv, write_json
from hvdlm.arguments import renamed
from hvdlm.errors import HvdlmError

BIN = Path(sys.executable).parent


@dataclass
class RunSpec:
    name: str
    launcher: list[str]  # prefix: [] for one process
    ranks: int
    threads: int
    module: str = "hvdlm"  # "hvdlm" (hvdlm train), "ddp" or "bare"
    copies: int = 1  # independent runs side by side, each with 1/copies of the global batch


def specs(ranks: int, cores: int, which: list[str]) -> list[RunSpec]:
    per_rank = max(1, cores // ranks)
    hvdrun = str(BIN / "horovodrun")
    all_specs = {
        "single": RunSpec(f"1 rank x {cores} threads", [], 1, cores),
        "single-1": RunSpec(f"1 rank x {per_rank} thread(s)", [], 1, per_rank),
        # What N ranks can reach on this host with no communication at all: N one-rank runs, each
        # with one rank's share of the batch and cores, at the same time (they share the memory
        # bandwidth and caches as the ranks do). The ceiling for a scaling efficiency.
        "side-by-side": RunSpec(f"{ranks} x (1 rank x {per_rank}) side by side", [], 1, per_rank, copies=ranks),
        "bare": RunSpec(f"bare PyTorch 1 x {cores}", [], 1, cores, "bare"),
        "bare-1": RunSpec(f"bare PyTorch 1 x {per_rank}", [], 1, per_rank, "bare"),
        "horovod-mpi": RunSpec(f"Horovod MPI {ranks} x {per_rank}", [hvdrun, "-np", str(ranks), "--mpi"], ranks, per_rank),
        "horovod-gloo": RunSpec(f"Horovod Gloo {ranks} x {per_rank}", [hvdrun, "-np", str(ranks), "--gloo"], ranks, per_rank),
        "ddp": RunSpec(f"DDP gloo {ranks} x {per_rank}",
                       [str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={ranks}"], ranks, per_rank, "ddp"),
    }
    unknown = [w for w in which if w not in all_specs]
    if unknown:
        raise HvdlmError(f"unknown run {unknown[0]!r}; choose from {', '.join(all_specs)}")
    return [all_specs[w] for w in which]


def command(spec: RunSpec, flags: list[str], out_dir: Path) -> list[str]:
    common = [*flags, "--threads", str(spec.threads), "--out_dir", str(out_dir)]
    if spec.module == "ddp":
        return [*spec.launcher, "-m", "hvdlm.bench.ddp", *common]
    if spec.module == "bare":
        return [sys.executable, "-m", "hvdlm.bench.bare", *common]
    return [*spec.launcher, str(BIN / "hvdlm"), "train", *common]


def measure(spec: RunSpec, flags: list[str], out_dir: Path, warmup: int, timeout: float) -> dict:
    """Run ``spec`` (its ``copies`` side by side, each with its share of the global batch) and read
    its row: tokens/s summed over the copies, their mean step time."""
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if os.geteuid() == 0:  # OpenMPI refuses root unless told (containers, CI)
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    batch = int(flags[flags.index("--global_batch_size") + 1])
    if batch % spec.copies:
        raise HvdlmError(f"{spec.name}: --global_batch_size {batch} does not split into {spec.copies} equal runs")
    share = str(batch // spec.copies)
    mine = [share if i and flags[i - 1] in ("--global_batch_size", "--batch_size") else f for i, f in enumerate(flags)]
    dirs = [out_dir] if spec.copies == 1 else [out_dir / f"copy-{i}" for i in range(spec.copies)]
    started, cpu_before = time.perf_counter(), _children_cpu()
    procs = [subprocess.Popen(command(spec, mine, d), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env) for d in dirs]
    try:
        outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    except subprocess.TimeoutExpired:
        raise HvdlmError(f"{spec.name} ran past --timeout {timeout:g} s") from None
    finally:
        for p in procs:  # a copy that failed or ran out of time takes the others with it
            if p.poll() is None:
                p.kill()
                p.wait()
    wall, cpu = time.perf_counter() - started, _children_cpu() - cpu_before
    for p, out in zip(procs, outputs):
        if p.returncode != 0:
            tail = "\n".join(out.strip().splitlines()[-5:])
            raise HvdlmError(f"{spec.name} failed (exit {p.returncode}):\n{tail}")
    each = [figures(spec, d, warmup, wall, cpu) for d in dirs]
    if spec.copies == 1:
        return each[0]
    tps = sum(r["tokens_per_s"] for r in each)
    step_ms = statistics.fmean(r["step_ms"] for r in each)
    return dict(each[0], global_batch=batch, tokens_per_s=tps, tokens_per_s_per_rank=tps / spec.copies,
                step_ms=step_ms, compute_ms=step_ms, ranks=spec.copies)


def figures(spec: RunSpec, out_dir: Path, warmup: int, wall: float, cpu: float) -> dict:
    """One run's row, from its metrics.jsonl."""
    rows = [json.loads(line) for line in open(out_dir / "metrics.jsonl")]
    steps = [r for r in rows if r["kind"] == "train" and r["step"] > warmup]
    summary = [r for r in rows if r["kind"] == "summary"][-1]
    if not steps:
        raise HvdlmError(f"{spec.name}: no steps after the {warmup} warm-up steps; raise --steps")
    tokens_per_step = steps[0]["tokens_per_s"] * steps[0]["step_time"]
    step_time = sum(r["step_time"] for r in steps) / len(steps)
    waits = [r["allreduce_wait"] for r in steps if r["allreduce_wait"] == r["allreduce_wait"]]  # drop nan
    wait = statistics.fmean(waits) if waits else float("nan")
    # the spread of this rank's own compute from step to step: what makes ranks wait for each other
    computes = [r["step_time"] - r["allreduce_wait"] for r in steps if r["allreduce_wait"] == r["allreduce_wait"]]
    spread = statistics.stdev(computes) if len(computes) > 1 else 0.0
    tps = tokens_per_step / step_time
    return {"run": spec.name, "ranks": spec.ranks, "threads_per_rank": spec.threads,
            "global_batch": summary["global_batch"], "micro_batch": summary["micro_batch"],
            "grad_accum": summary["grad_accum"], "tokens_per_s": tps, "tokens_per_s_per_rank": tps / spec.ranks,
            "step_ms": 1e3 * step_time, "compute_ms": 1e3 * (step_time - (wait if wait == wait else 0.0)),
            "compute_sd_ms": 1e3 * spread, "allreduce_wait_ms": 1e3 * wait, "wall_s": wall, "cpu_s": cpu}


def _children_cpu() -> float:
    """CPU seconds (user + system) of the finished child processes: on a machine shared with
    other jobs, a steadier measure of what a run costs than its wall time."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(args) -> list[dict]:
    cores = args.cores or len(os.sched_getaffinity(0))
    if args.ranks < 1 or args.steps <= args.warmup or args.repeats < 1:
        raise HvdlmError("need --ranks >= 1, --steps > --warmup and --repeats >= 1")
    runs = specs(args.ranks, cores, [w.strip() for w in args.runs.split(",") if w.strip()])
    flags = ["--data_dir", args.data_dir, "--preset", args.preset, "--global_batch_size", str(args.global_batch),
             "--batch_size", str(args.global_batch), "--max_steps", str(args.steps), "--warmup_steps", "2",
             "--precision", args.precision, "--compression", args.compression, "--eval_interval", "0",
             "--eval_sequences", "2", "--sample_tokens", "0", "--progress", "false", "--resume", "false",
             "--log_interval", "1"]
    if args.block_size:
        flags += ["--block_size", str(args.block_size)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="hvdlm-bench-train-") as tmp:
        for repeat in range(args.repeats):
            for i, spec in enumerate(runs):
                print(f"[{repeat + 1}/{args.repeats}] {spec.name} ...", flush=True)
                row = measure(spec, flags, Path(tmp) / f"{repeat}-{i}", args.warmup, args.timeout)
                rows.append(dict(row, repeat=repeat + 1))
    best = {}
    for row in rows:  # the best of the repeats: noise only ever slows a run down
        if row["run"] not in best or row["tokens_per_s"] > best[row["run"]]["tokens_per_s"]:
            best[row["run"]] = dict(row)
    table = list(best.values())
    for r in table:  # wall time too: the best of the repeats, independently of the step times
        r["wall_s"] = min(x["wall_s"] for x in rows if x["run"] == r["run"])
        r["cpu_s"] = min(x["cpu_s"] for x in rows if x["run"] == r["run"])
    add_ratios(table, rows, cores, args.ranks)
    report(table, rows, args, cores)
    return table


def add_ratios(table: list[dict], rows: list[dict], cores: int, ranks: int) -> None:
    """Each row's ratios against its baselines (the module's docstring), from the table's best rows
    (``rows``: every repeat, for the paired ratio)."""
    bare = {r["threads_per_rank"]: r for r in table if r["run"].startswith("bare")}
    hvdlm_1 = [r for r in table if r["ranks"] == 1 and not r["run"].startswith("bare")]  # ratios are against hvdlm
    by_cores = next((r for r in hvdlm_1 if r["threads_per_rank"] == cores), None)
    one_slice = next((r for r in hvdlm_1 if r["threads_per_rank"] == max(1, cores // ranks)), None)
    beside = next((r for r in table if r["run"].endswith("side by side")), None)
    for r in table:
        r["vs_1_rank_all_cores"] = r["tokens_per_s"] / by_cores["tokens_per_s"] if by_cores else float("nan")
        r["scaling_efficiency"] = (r["tokens_per_s"] / (r["ranks"] * one_slice["tokens_per_s"])
                                   if one_slice else float("nan"))
        r["vs_side_by_side"] = (paired_median(rows, r["run"], beside["run"])
                                if beside and r["ranks"] == beside["ranks"] else float("nan"))
        same = bare.get(r["threads_per_rank"]) if r["ranks"] == 1 else None
        r["bare_step_ratio"] = same["step_ms"] / r["step_ms"] if same else float("nan")
        r["bare_wall_ratio"] = same["wall_s"] / r["wall_s"] if same else float("nan")
        r["bare_cpu_ratio"] = same["cpu_s"] / r["cpu_s"] if same else float("nan")


def paired_median(rows: list[dict], run: str, baseline: str) -> float:
    """The median over repeats of ``run``'s tokens/s over ``baseline``'s in the same repeat: runs of
    one round see the same moment of a shared machine, best-of-N of each row need not."""
    base = {r["repeat"]: r["tokens_per_s"] for r in rows if r["run"] == baseline}
    return statistics.median(r["tokens_per_s"] / base[r["repeat"]] for r in rows if r["run"] == run)


def report(table: list[dict], rows: list[dict], args, cores: int) -> None:
    fmt = lambda v, f: "-" if v != v else f.format(v)  # noqa: E731 (nan -> "-")
    header = ["run", "tokens/s", "per rank", "step ms", "compute ms", "wait ms", "wall s", "cpu s",
              "vs 1 rank all cores", "scaling eff.", "vs side by side", "bare/this step", "bare/this wall",
              "bare/this cpu"]
    body = [[r["run"], fmt(r["tokens_per_s"], "{:.0f}"), fmt(r["tokens_per_s_per_rank"], "{:.0f}"),
             fmt(r["step_ms"], "{:.1f}"), fmt(r["compute_ms"], "{:.1f}"), fmt(r["allreduce_wait_ms"], "{:.2f}"),
             fmt(r["wall_s"], "{:.2f}"), fmt(r["cpu_s"], "{:.2f}"), fmt(r["vs_1_rank_all_cores"], "{:.2f}x"),
             fmt(r["scaling_efficiency"], "{:.2f}"), fmt(r["vs_side_by_side"], "{:.3f}"),
             fmt(r["bare_step_ratio"], "{:.3f}"),
             fmt(r["bare_wall_ratio"], "{:.3f}"), fmt(r["bare_cpu_ratio"], "{:.3f}")] for r in table]
    print(f"\nhvdlm bench train: preset {args.preset}, global batch {args.global_batch} sequences, {args.precision}, "
          f"{cores} cores, best of {args.repeats} interleaved repeat(s), {args.steps - args.warmup} timed steps each")
    print(format_grid(header, body))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "train.csv", table)
    write_json(out / "train.json", {"preset": args.preset, "global_batch": args.global_batch, "cores": cores,
                                    "precision": args.precision, "repeats": args.repeats, "all_runs": rows}, table)
    if not args.no_plot:
        plot(table, out / "train.png", f"{args.preset}, global batch {args.global_batch}, {cores} cores")
    print(f"wrote {out / 'train.csv'}, {out / 'train.json'}" + ("" if args.no_plot else f", {out / 'train.png'}"))


def plot(table: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    names = [r["run"] for r in table]
    compute = [r["tokens_per_s"] for r in table]
    ax.barh(names, compute, color="#4c72b0")
    for y, r in enumerate(table):
        ax.text(r["tokens_per_s"], y, f" {r['tokens_per_s']:.0f}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("tokens/s (all ranks)")
    ax.set_title(f"hvdlm bench train: {title}", fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_train_parser(sub) -> None:
    t = sub.add_parser("train", help="training tokens/s: 1 rank vs N ranks (Horovod MPI/Gloo) vs PyTorch DDP",
                       description=__doc__.split("\n\n")[0].replace("``", "`"))
    t.add_argument("--data_dir", default="data/default", help="prepared data (default: data/default)")
    t.add_argument("--preset", default="mini", help="model preset (default: mini, 10.8M parameters on bytes)")
    t.add_argument("--block_size", type=int, default=0, help="context length (default: the preset's)")
    t.add_argument("--global_batch_size", dest="global_batch", type=int, default=12,
                   help="sequences per step over all ranks (default: 12)")
    renamed(t, "--global_batch", "--global_batch_size")
    t.add_argument("--ranks", type=int, default=2, help="ranks of the data-parallel runs (default: 2)")
    t.add_argument("--cores", type=int, default=0, help="cores to use (default: those this process may use)")
    t.add_argument("--runs", default="single,single-1,side-by-side,bare,bare-1,horovod-mpi,horovod-gloo,ddp",
                   help="comma list of single, single-1, side-by-side (--ranks one-rank runs at once, each with "
                        "its share of the batch and cores), bare, bare-1 (the bare PyTorch loop, all cores or one "
                        "rank's share), horovod-mpi, horovod-gloo, ddp (default: all)")
    t.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    t.add_argument("--compression", default="none", choices=["none", "fp16", "bf16", "powersgd"],
                   help="what the hvdlm runs send (DDP and the bare loop: fp32); to compare the methods' bytes and "
                        "val loss on a slow link, use `hvdlm bench sync`")
    t.add_argument("--steps", type=int, default=25, help="steps per run (default: 25)")
    t.add_argument("--warmup", type=int, default=5, help="untimed first steps (default: 5)")
    t.add_argument("--repeats", type=int, default=2, help="interleaved repetitions; the best counts (default: 2)")
    t.add_argument("--timeout", type=float, default=900, help="seconds one run may take (default: 900)")
    t.add_argument("--out_dir", default="out/bench/train", help="where train.csv/.json/.png go")
    t.add_argument("--no_plot", action="store_true")
    t.set_defaults(func=lambda args: run(args))
