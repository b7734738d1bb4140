"""What the sweep prints and writes: the nccl-tests table, the header, the side-by-side summary,
the run's description (stored in the JSON), the plot, and the median of several runs."""

from __future__ import annotations

import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from hvdlm.bench import output
from hvdlm.bench.allreduce.settings import PLACEMENTS, Settings

# Horovod settings worth recording with the results (rendezvous variables are left out).
HOROVOD_KNOBS = ("HOROVOD_CYCLE_TIME", "HOROVOD_FUSION_THRESHOLD", "HOROVOD_CACHE_CAPACITY",
                 "HOROVOD_CPU_OPERATIONS", "HOROVOD_CONTROLLER", "HOROVOD_HIERARCHICAL_ALLREDUCE",
                 "HOROVOD_AUTOTUNE", "HOROVOD_MPI_THREADS_DISABLE", "HOROVOD_THREAD_AFFINITY",
                 "HOROVOD_NUM_NCCL_STREAMS", "HOROVOD_BATCH_D2D_MEMCOPIES")


COLUMNS = [
    output.Column("bytes", "size", 11),
    output.Column("count", "count", 11),
    output.Column("dtype", "type", 5),
    output.Column("op", "redop", 5),
    output.Column("placement", "place", 5),
    output.Column("backend", "backend", 11, align="<"),
    output.Column("time_avg_us", "time avg", 10, "{:.1f}"),
    output.Column("time_min_us", "min", 10, "{:.1f}"),
    output.Column("time_max_us", "max", 10, "{:.1f}"),
    output.Column("algbw_GBps", "algbw", 7, "{:.2f}"),
    output.Column("busbw_GBps", "busbw", 7, "{:.2f}"),
    output.Column("wrong", "#wrong", 6),
]
UNITS = ["(B)", "(elements)", "", "", "", "", "(us)", "(us)", "(us)", "(GB/s)", "(GB/s)", ""]
CSV_FIELDS = ["backend", "transport", "bytes", "count", "dtype", "op", "placement", "time_avg_us",
              "time_min_us", "time_max_us", "algbw_GBps", "busbw_GBps", "wrong", "ranks", "warmup", "iters"]


def say(rank: int, text: str = "") -> None:
    if rank == 0:
        print(text, flush=True)


# Variables mpirun sets for its own plumbing, not settings a user chose.
OMPI_PLUMBING = ("OMPI_MCA_orte_", "OMPI_MCA_ess", "OMPI_MCA_pmix", "OMPI_MCA_shmem_RUNTIME_QUERY_hint",
                 "OMPI_MCA_initial_wdir", "OMPI_MCA_mpi_oversubscribe")


def _is_knob(name: str) -> bool:
    """Settings that change how the backends perform, worth keeping with the figures."""
    if name in HOROVOD_KNOBS or name.startswith(("GLOO_", "NCCL_")):
        return True
    return name.startswith("OMPI_MCA_") and not name.startswith(OMPI_PLUMBING)


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def describe(s: Settings, world, hosts, device, launcher, backends) -> dict:
    """Everything needed to read or redo the run later (stored in the JSON)."""
    import horovod

    env_knobs = {k: v for k, v in sorted(os.environ.items()) if _is_knob(k)}
    return {
        "benchmark": "allreduce",
        "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "launcher": launcher,
        "ranks": world.size,
        "hosts": sorted(set(hosts)),
        "ranks_per_host": world.local_size,
        "device": str(device),
        "torch_threads_per_rank": world.threads,
        "cpu_count": os.cpu_count(),
        "loadavg_start": loadavg(),  # a shared machine: other work skews every figure
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "horovod": horovod.__version__,
        "backends": {b.name: {"label": b.label, "transport": b.transport,
                              **({"version": b.version} if hasattr(b, "version") else {})}
                     for b in backends},
        "settings": env_knobs,
        "horovod_defaults": "HOROVOD_CYCLE_TIME and HOROVOD_FUSION_THRESHOLD unset mean Horovod's own defaults",
        "sizes": s.sizes,
        "dtypes": s.dtypes,
        "placements": [PLACEMENTS[p] for p in s.placements],
        "warmup": s.warmup,
        "iters": s.iters,
        "timing": "per-iteration wall time of a synchronous call; avg/min/max over iterations, "
                  "each the max over ranks",
        "busbw": "algbw * 2(n-1)/n for allreduce; memcpy: bytes copied per second per rank",
    }


def side_by_side(rows: list[dict], dtype: str, placement: str) -> str | None:
    """Per size: each backend's avg time and busbw, and its time over mpi4py's (the floor)."""
    group = [r for r in rows if r["dtype"] == dtype and r["placement"] == placement]
    if not group:
        return None
    names = list(dict.fromkeys(r["backend"] for r in group))
    by = {(r["backend"], r["bytes"]): r for r in group}
    floor = "mpi4py" if "mpi4py" in names else None
    header = ["size"]
    for n in names:
        header += [f"{n} us", "GB/s"] + (["x floor"] if floor and n not in (floor, "memcpy") else [])
    body = []
    for nbytes in sorted({r["bytes"] for r in group}):
        line = [output.human_bytes(nbytes)]
        for n in names:
            r = by.get((n, nbytes))
            ratio = floor and n not in (floor, "memcpy")
            if r is None:
                line += ["-", "-"] + (["-"] if ratio else [])
                continue
            line += [_short(r["time_avg_us"]), f"{r['busbw_GBps']:.2f}"]
            if ratio:
                base = by.get((floor, nbytes))
                line.append(f"{r['time_avg_us'] / base['time_avg_us']:.1f}" if base else "-")
        body.append(line)
    title = (f"# side by side, {dtype} {PLACEMENTS[placement]}: avg time (us), busbw (GB/s)"
             + (", and time / mpi4py's time (x floor)" if floor else ""))
    return title + "\n" + output.format_grid(header, body)


def _short(us: float) -> str:
    return f"{us:.1f}" if us < 100 else f"{us:.0f}"


def plot(rows: list[dict], meta: dict, path: Path) -> Path:
    """busbw (and time) against size, one line per backend, one row of panels per dtype/placement."""
    panels = []
    labels = {name: b["label"] for name, b in meta["backends"].items()}
    styles = {"memcpy": {"linestyle": "--", "color": "0.4", "marker": None},
              "mpi4py": {"color": "tab:green"}, "mpi4py-hvd": {"color": "tab:green", "linestyle": ":"},
              "horovod": {"color": "tab:blue"},
              "torch-gloo": {"color": "tab:orange"}, "torch-nccl": {"color": "tab:red"}}
    groups = list(dict.fromkeys((r["dtype"], r["placement"]) for r in rows))
    for dtype, placement in groups:
        group = [r for r in rows if r["dtype"] == dtype and r["placement"] == placement]
        bw = output.Panel(f"busbw, {dtype} {PLACEMENTS[placement]}", "message size (bytes)", "busbw (GB/s)")
        tm = output.Panel(f"time per allreduce, {dtype} {PLACEMENTS[placement]}", "message size (bytes)",
                          "avg time (us)")
        for name in dict.fromkeys(r["backend"] for r in group):
            mine = sorted((r for r in group if r["backend"] == name), key=lambda r: r["bytes"])
            label = labels.get(name, name)
            xs = [r["bytes"] for r in mine]
            bw.series[label] = (xs, [r["busbw_GBps"] for r in mine])
            tm.series[label] = (xs, [r["time_avg_us"] for r in mine])
            bw.styles[label] = tm.styles[label] = styles.get(name, {})
        panels += [bw, tm]
    hosts = meta["hosts"]
    title = (f"allreduce, {meta['ranks']} ranks on {len(hosts)} host{'s' if len(hosts) > 1 else ''} "
             f"({meta['device']}), launched by {meta['launcher']}")
    knobs = ", ".join(f"{k}={v}" for k, v in meta["settings"].items()) or "Horovod defaults"
    runs = f", median of {meta['runs']} runs" if meta.get("runs", 1) > 1 else ""
    note = f"{meta['date']}  warm-up {meta['warmup']}, {meta['iters']} iterations{runs}; {knobs}"
    return output.plot_panels(path, panels, title=title, ncols=2, note=note)


def median_of_runs(docs: list[dict]) -> tuple[dict, list[dict]]:
    """Several runs of one configuration (their JSON documents) as one: each figure is the median
    over the runs, #wrong the sum. On a shared machine a single run can catch a neighbour's burst."""
    import statistics

    groups: dict[tuple, list[dict]] = {}
    for doc in docs:
        for r in doc["rows"]:
            groups.setdefault((r["backend"], r["dtype"], r["placement"], r["bytes"]), []).append(r)
    rows = []
    for same in groups.values():
        row = dict(same[0])
        for key in ("time_avg_us", "time_min_us", "time_max_us", "algbw_GBps", "busbw_GBps"):
            row[key] = statistics.median(r[key] for r in same)
        row["wrong"] = sum(r["wrong"] for r in same)
        row["runs"] = len(same)
        rows.append(row)
    meta = {**docs[0]["meta"], "runs": len(docs), "dates": [d["meta"]["date"] for d in docs],
            "loadavg_start": [d["meta"].get("loadavg_start") for d in docs]}
    return meta, rows


def header_lines(ctx, s: Settings) -> list[str]:
    m = ctx.meta
    hosts = m["hosts"]
    lines = [f"# hvdlm bench allreduce: {ctx.size} ranks on {len(hosts)} host{'s' if len(hosts) > 1 else ''} "
             f"({', '.join(hosts[:4])}{', ...' if len(hosts) > 4 else ''}), launched by {ctx.launcher}; "
             f"{ctx.device}, {ctx.threads} torch thread{'s' if ctx.threads > 1 else ''} per rank"]
    for b in ctx.early_backends + ctx.backends:
        version = f" {b.version}" if hasattr(b, "version") else ""
        when = ", measured before Horovod started" if b in ctx.early_backends else ""
        lines.append(f"#   {b.name:<11} {b.label}{version}{when}")
    knobs = ", ".join(f"{k}={v}" for k, v in m["settings"].items())
    lines.append(f"# settings: {knobs or 'none (Horovod and MPI defaults)'}")
    sizes = s.sizes
    lines.append(f"# sizes {output.human_bytes(sizes[0])}..{output.human_bytes(sizes[-1])} (x{s.factor}), "
                 f"warm-up {s.warmup}, {s.iters} timed iterations; times are the largest over ranks; "
                 f"busbw = algbw * 2(n-1)/n")
    lines += [f"# note: {n}" for n in ctx.notes]
    return lines
