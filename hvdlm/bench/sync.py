"""``hvdlm bench sync``: what each way of synchronizing ranks costs and gives, on the same link.

Each method is a real ``hvdlm train`` of the same model, data, seed, global batch and steps (so
equal steps are equal tokens), launched with horovodrun on ``--hosts`` (or on this machine):

  none, fp16, bf16     every step, the averaged gradient (fp32, fp16 or bf16 on the wire)
  powersgd             every step, a rank-``--powersgd_rank`` approximation, error feedback
  local_sgd, diloco    every ``--sync_every`` steps, averaged parameters / an outer Nesterov step
                       (``diloco-bf16``, ``diloco-fp16``, ``diloco-int8``: the outer exchange in 16 or
                       8 bits; ``-overlap`` after any: the exchange runs behind ``--overlap_steps``
                       inner steps)

for each link setting in ``--links`` (``free``, or a tc rate such as ``100mbit`` applied with
``--slow_cmd`` and undone with ``--heal_cmd``; ``10mbit:diloco+diloco-bf16`` runs only those
methods on that link). Per run: bytes sent per optimizer step, read from each host's interface
counter (``--tx_bytes_cmd``, polled while the run trains) and counted by the ranks themselves from
the payloads their collectives moved (``computed``, always), both over a window that starts and
ends right after a sync (whole periods of local_sgd/diloco), after ``--warmup`` and PowerSGD's
plain-allreduce start, and before the last step (so start-up broadcasts and the final checkpoint
are not counted); tokens/s over that window (the steady state) and over the whole run; the
validation loss at every ``--eval_interval`` steps and at the end; the ratios the issue's targets
are read against (bytes and tokens/s against ``none`` on the free link, val loss against ``none``
on the same link). Writes sync.csv, sync.json and sync.png (val loss against wall time, one panel
per link, one y axis for all, each with the free link's ``none``) to ``--out_dir``.

A shaped link changes how fast a run goes, never what it computes: the same steps give the same
losses on every link (each shaped run's evaluations are checked against the free link's, column
"same as free"). So with ``--shaped_window N`` a run on a shaped link stops (``--stop_after``, the
schedule still that of ``--steps``) once its window holds N steps, rounded up to whole sync
periods: its speed and bytes are measured, its val loss is the free run's.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from hvdlm.bench.output import format_grid, plot_panels, write_csv, write_json
from hvdlm.bench.sync_methods import METHODS, method_flags, parse_method, variants
from hvdlm.bench.sync_plot import loss_panels
from hvdlm.arguments import renamed
from hvdlm.errors import HvdlmError

BIN = Path(sys.executable).parent
def launcher(args) -> list[str]:
    """horovodrun for 2 ranks (or as many as --hosts has slots), through --via when given."""
    if args.hosts:
        slots = sum(int(h.split(":")[1]) if ":" in h else 1 for h in args.hosts.split(","))
        where = ["-np", str(slots), "-H", args.hosts]
    else:
        where = ["-np", str(args.ranks)]
    return [*shlex.split(args.via), str(BIN / "horovodrun"), *where, f"--{args.controller}",
            *shlex.split(args.launcher_args)]


def host_names(args) -> list[str]:
    return [h.split(":")[0] for h in args.hosts.split(",")] if args.hosts else []


def unit(method: str, args) -> int:
    """Steps between syncs: byte windows start and end at one, so each holds whole sync periods."""
    return args.sync_every if parse_method(method)[0].periodic else 1


def window_start(method: str, args) -> int:
    """The first sync the byte window may start at: after --warmup, and after PowerSGD's plain
    allreduce of the first --lr_warmup steps (its --powersgd_start default)."""
    first = max(args.warmup, args.lr_warmup if parse_method(method)[0].path == "low_rank" else 0)
    u = unit(method, args)
    return -(-first // u) * u


def shaped_stop(method: str, args) -> int:
    """Steps a run on a shaped link needs: its window start, then --shaped_window steps in whole
    sync periods, then one more (the last step saves the checkpoint, outside the window)."""
    u = unit(method, args)
    return min(args.steps, window_start(method, args) + max(1, -(-args.shaped_window // u)) * u + 1)


def read_tx(args) -> dict[str, int]:
    """Each host's transmitted-bytes counter (empty without --tx_bytes_cmd)."""
    if not args.tx_bytes_cmd:
        return {}
    out = {}
    for host in host_names(args) or ["localhost"]:
        cmd = args.tx_bytes_cmd.format(host=host)
        p = subprocess.run(cmd, shell=True, capture_output=True, text=True)
        if p.returncode != 0 or not p.stdout.strip().isdigit():
            raise HvdlmError(f"--tx_bytes_cmd for {host} ({cmd}) printed no byte count: {p.stderr.strip()[:200]}")
        out[host] = int(p.stdout.strip())
    return out


def shell(cmd: str, what: str) -> None:
    p = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    if p.returncode != 0:
        raise HvdlmError(f"{what} ({cmd}) failed: {(p.stdout + p.stderr).strip()[-300:]}")


def set_link(link: str, args) -> None:
    if args.heal_cmd:
        subprocess.run(args.heal_cmd, shell=True, capture_output=True)  # may have nothing to undo
    if link != "free":
        shell(args.slow_cmd.format(rate=link), f"shaping the link to {link}")


def train_rows(path: Path, kind: str) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line still being written
            break
    return [r for r in rows if r["kind"] == kind]


def first_error(log: Path) -> str:
    """The run's own reason: the first line hvdlm printed about an error (the ranks' launcher may
    print pages after it), else the log's last line."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    mine = [line for line in lines if line.startswith(("hvdlm: error:", "hvdlm: rank"))]
    return (mine or lines or ["(an empty log)"])[0 if mine else -1]


def measure(method: str, link: str, args, out_dir: Path) -> dict:
    """One training run; the interface counters are polled as the train records appear."""
    stop = shaped_stop(method, args) if link != "free" and args.shaped_window else args.steps
    flags = ["--data_dir", str(Path(args.data_dir).resolve()), "--out_dir", str(out_dir), "--preset", args.preset,
             "--global_batch_size", str(args.global_batch), "--batch_size", str(args.global_batch),
             "--max_steps", str(args.steps), "--warmup_steps", str(args.lr_warmup), "--eval_interval",
             str(args.eval_interval), "--eval_sequences", str(args.eval_sequences), "--seed", str(args.seed),
             "--threads", str(args.threads), "--log_interval", "1", "--sample_tokens", "0", "--progress", "false",
             "--resume", "false", *method_flags(method, args), *shlex.split(args.train_args)]
    if stop < args.steps:
        flags += ["--stop_after", str(stop)]
    if args.block_size:
        flags += ["--block_size", str(args.block_size)]
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if os.geteuid() == 0:
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    metrics = out_dir / "metrics.jsonl"
    log = open(out_dir.with_suffix(".log"), "w")
    proc = subprocess.Popen([*launcher(args), str(BIN / "hvdlm"), "train", *flags], stdout=log,
                            stderr=subprocess.STDOUT, env=env, text=True)
    samples = []  # (step, tx counters) when a train record was first seen
    seen, deadline = 0, time.monotonic() + args.timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            raise HvdlmError(f"{method} on the {link} link ran past --timeout {args.timeout:g}s (log: {log.name})")
        steps = [r["step"] for r in train_rows(metrics, "train")]
        if steps and steps[-1] > seen:
            seen = steps[-1]
            if seen == stop < args.steps and args.heal_cmd:
                # Past its window: the checkpoint a stop writes (every rank's parameters and moments
                # between syncs, gathered to rank 0) need not crawl over the slow link.
                subprocess.run(args.heal_cmd, shell=True, capture_output=True)
            if window_start(method, args) <= seen < stop and seen % unit(method, args) == 0:
                samples.append((seen, read_tx(args)))
        time.sleep(args.poll)
    log.close()
    if proc.returncode != 0:
        raise HvdlmError(f"{method} on the {link} link failed (exit {proc.returncode}): {first_error(Path(log.name))} "
                         f"(log: {log.name})")
    return summarize(method, link, args, metrics, samples, stop)


def summarize(method, link, args, metrics: Path, samples, stop: int) -> dict:
    train = {r["step"]: r for r in train_rows(metrics, "train")}
    evals = train_rows(metrics, "eval")
    summary = train_rows(metrics, "summary")[-1]
    tokens_per_step = round(train[1]["tokens_per_s"] * train[1]["step_time"])
    # The byte window: from one sync to a later one (every step's for every-step methods), after
    # window_start and before the last step (whose checkpoint gathers per-rank state): the steps at
    # which the counters were read, or without counters the widest such window.
    counted = len(samples) > 1 and bool(samples[0][1])
    if args.tx_bytes_cmd and not counted:
        raise HvdlmError(f"{method} on the {link} link: the counters were read at fewer than two syncs (steps "
                         f"{[s for s, _ in samples]}); raise --steps or lower --poll")
    if counted:
        a, b = samples[0][0], samples[-1][0]
    else:
        u = unit(method, args)
        a, b = window_start(method, args), (stop - 1) // u * u
    if not (min(train) <= a < b <= max(train)):
        raise HvdlmError(f"{method}: no byte window between step {window_start(method, args)} and step {stop - 1} "
                         f"that starts and ends at a sync; raise --steps")
    computed = (train[b]["sync_bytes"] - train[a]["sync_bytes"]) / (b - a)
    window_time = sum(train[s]["step_time"] for s in range(a + 1, b + 1))
    row = {"method": method, "link": link, "steps": summary["step"], "tokens": summary["step"] * tokens_per_step,
           "tokens_per_s": (b - a) * tokens_per_step / window_time, "tokens_per_s_run": summary["tokens_per_s"],
           "val_loss": summary["val_loss"], "bytes_per_step_computed": computed, "window": f"{a}-{b}",
           "evals": [(e["step"], e["time"], e["val_loss"]) for e in evals]}
    if counted:
        per_host = {h: (samples[-1][1][h] - samples[0][1][h]) / (b - a) for h in samples[0][1]}
        row["bytes_per_step_tx"] = max(per_host.values())
        row["bytes_per_step_tx_by_host"] = per_host
    return row


def find(rows: list[dict], method: str, link: str) -> dict | None:
    return next((r for r in rows if r["method"] == method and r["link"] == link), None)


def compare(rows: list[dict]) -> None:
    """The ratios the targets are read against: bytes and tokens/s against none on the free link,
    val loss against none at the same step (equal steps = equal tokens: the same global batch),
    on the free link when the run stopped early on a shaped one (its losses are the free run's)."""
    free = find(rows, "none", "free")
    for r in rows:
        same = find(rows, "none", r["link"])
        key = "bytes_per_step_tx" if "bytes_per_step_tx" in r else "bytes_per_step_computed"
        ref = same or free
        r["bytes_vs_none"] = ref[key] / r[key] if ref and r.get(key) else float("nan")
        r["tokens_per_s_vs_free_none"] = r["tokens_per_s"] / free["tokens_per_s"] if free else float("nan")
        twin = find(rows, r["method"], "free")
        if r["link"] != "free" and twin:  # same steps, same losses: the link must not change the math
            common = {s: v for s, _, v in twin["evals"]}
            pairs = [(v, common[s]) for s, _, v in r["evals"] if s in common]
            r["same_as_free"] = bool(pairs) and all(abs(v - w) <= 1e-6 * abs(w) for v, w in pairs)
        losses = twin if r["link"] != "free" and twin and r["steps"] < twin["steps"] else r
        base = find(rows, "none", losses["link"])
        r["val_loss_compared"], r["val_loss_compared_at"] = losses["val_loss"], losses["steps"]
        r["val_loss_vs_none"] = (losses["val_loss"] / base["val_loss"] - 1 if base and base["steps"] == losses["steps"]
                                 else float("nan"))


def run(args) -> list[dict]:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    plan = {}  # link -> its methods
    for entry in (x.strip() for x in args.links.split(",") if x.strip()):
        link, _, only = entry.partition(":")
        plan[link] = [m for m in only.split("+") if m] if only else methods
    known = variants()
    unknown = [m for ms in plan.values() for m in ms if m not in known]
    if unknown:
        raise HvdlmError(f"unknown method {unknown[0]!r}; choose from {', '.join(known)}")
    if any(x != "free" for x in plan) and not args.slow_cmd:
        print(f"hvdlm: no --slow_cmd: measuring the free link only (not {', '.join(x for x in plan if x != 'free')})")
        plan = {"free": plan["free"]} if "free" in plan else {}
    if not plan:
        raise HvdlmError("nothing to measure: --links names no link")
    if not (Path(args.data_dir) / "meta.json").is_file():
        raise HvdlmError(f"--data_dir {args.data_dir} holds no prepared data (no meta.json): make it with "
                         f"`hvdlm prepare --out_dir {args.data_dir}`")
    links = list(plan)
    if args.warmup >= args.steps - 1:
        raise HvdlmError("need --warmup below --steps - 1")
    out = Path(args.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for link in links:
            for method in plan[link]:
                run_dir = out / "runs" / f"{link}-{method}"
                done, flags = run_dir / "row.json", run_flags(method, link, args)
                if args.reuse and done.exists():  # a finished run of an interrupted benchmark
                    kept = json.loads(done.read_text())
                    if kept.get("flags") == flags:
                        print(f"[{link}] {method}: kept from {done}", flush=True)
                        rows.append(kept["row"])
                        continue
                print(f"[{link}] {method} ...", flush=True)
                set_link(link, args)  # again for each run: a stopped run's link was healed at its stop
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / "metrics.jsonl").unlink(missing_ok=True)
                rows.append(measure(method, link, args, run_dir))
                # hundreds of MB each (and each rank's own file beside them), and no figure needs them
                for saved in [*run_dir.glob("checkpoint*.pt"), *run_dir.glob("ranks/*.pt")]:
                    saved.unlink()
                done.write_text(json.dumps({"flags": flags, "row": rows[-1]}))
    finally:
        if args.heal_cmd and links != ["free"]:
            subprocess.run(args.heal_cmd, shell=True, capture_output=True)
    compare(rows)
    report(rows, args, out)
    return rows


def run_flags(method: str, link: str, args) -> dict:
    """What makes two runs the same run (for --reuse)."""
    keys = ("data_dir", "preset", "block_size", "global_batch", "steps", "lr_warmup", "eval_interval",
            "eval_sequences", "seed", "threads", "train_args", "hosts", "ranks", "controller", "launcher_args",
            "powersgd_rank", "sync_every", "warmup", "shaped_window", "tx_bytes_cmd")
    return {"method": method, "link": link, **{k: getattr(args, k) for k in keys}}


def report(rows: list[dict], args, out: Path) -> None:
    counted = "bytes_per_step_tx" in rows[0]
    fmt = lambda v, f: "-" if v is None or v != v else f.format(v)  # noqa: E731
    header = ["link", "method", "MB/step (tx counters)" if counted else "MB/step (computed)", "MB/step computed",
              "x fewer bytes", "window", "tokens/s", "vs none free", "run tokens/s", "steps", "val loss @step",
              "vs none", "same as free"]
    same = {True: "yes", False: "NO"}
    body = [[r["link"], r["method"], fmt(r.get("bytes_per_step_tx", r["bytes_per_step_computed"]) / 1e6, "{:.3f}"),
             fmt(r["bytes_per_step_computed"] / 1e6, "{:.3f}"), fmt(r["bytes_vs_none"], "{:.1f}x"), r["window"],
             fmt(r["tokens_per_s"], "{:.0f}"), fmt(r["tokens_per_s_vs_free_none"], "{:.2f}x"),
             fmt(r["tokens_per_s_run"], "{:.0f}"), str(r["steps"]),
             fmt(r["val_loss_compared"], "{:.4f}") + f" @{r['val_loss_compared_at']}",
             fmt(100 * r["val_loss_vs_none"], "{:+.2f}%"), same.get(r.get("same_as_free"), "-")] for r in rows]
    print(f"\nhvdlm bench sync: preset {args.preset}, global batch {args.global_batch}, {args.steps} steps "
          f"(= equal tokens), seed {args.seed}, hosts {args.hosts or 'this machine'}; bytes per optimizer step "
          + ("from the hosts' interface counters (the busiest host)" if counted else
             "COMPUTED from the collectives' payloads (no --tx_bytes_cmd)")
          + "; tokens/s over the byte window (steps a-b); val loss vs none at the same step (the free link's "
            "when a shaped run stopped early)")
    print(format_grid(header, body))
    write_csv(out / "sync.csv", [{k: v for k, v in r.items() if k != "evals"} for r in rows])
    write_json(out / "sync.json", {"args": vars(args), "bytes_source": "tx counters" if counted else "computed"}, rows)
    plot_panels(out / "sync.png", loss_panels(rows), sharey=True,
                title=f"hvdlm bench sync: {args.preset}, {args.steps} steps (dashed: the free run's losses at the "
                      f"shaped link's measured speed; dotted: none on the free link)")
    print(f"wrote {out / 'sync.csv'}, {out / 'sync.json'}, {out / 'sync.png'}")


def add_sync_parser(sub) -> None:
    s = sub.add_parser("sync", help="bytes per step, tokens/s and val loss of each --compression/--sync method",
                       description=__doc__.split("\n\n")[0].replace("``", "`"),
                       epilog="example (the 2-host test cluster, hvdnode2's link also at 100 Mbit/s):\n"
                              "  hvdlm bench sync --hosts hvdnode1:1,hvdnode2:1 --via 'bash slurm/cluster.sh exec "
                              "hvdnode1' \\\n    --links free,100mbit --slow_cmd 'bash slurm/cluster.sh slow hvdnode2 "
                              "{rate}' --heal_cmd 'bash slurm/cluster.sh heal hvdnode2' \\\n    --tx_bytes_cmd "
                              "'ip netns exec {host} cat /sys/class/net/eth0/statistics/tx_bytes'",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    w = s.add_argument_group("what to compare")
    w.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma list of {', '.join(variants())} (default: {','.join(METHODS)})")
    w.add_argument("--powersgd_rank", type=int, default=4)
    w.add_argument("--sync_every", type=int, default=50, help="H of local_sgd and diloco (default: 50)")
    w.add_argument("--overlap_steps", type=int, default=0,
                   help="--overlap_steps of the -overlap methods (default: half of --sync_every)")
    w.add_argument("--links", default="free", help="comma list: free, or tc rates such as 100mbit (need --slow_cmd); "
                                                   "RATE:M1+M2 runs only methods M1, M2 on that link")
    w.add_argument("--shaped_window", type=int, default=0,
                   help="on shaped links, stop each run once its byte window holds this many steps (whole sync "
                        "periods); 0 = run --steps there too")
    m = s.add_argument_group("the run (the same for every method)")
    m.add_argument("--data_dir", default="data/default")
    m.add_argument("--preset", default="mini")
    m.add_argument("--block_size", type=int, default=0, help="context length (default: the preset's)")
    m.add_argument("--global_batch_size", dest="global_batch", type=int, default=12,
                   help="sequences per step over all ranks (default: 12)")
    renamed(m, "--global_batch", "--global_batch_size")
    m.add_argument("--steps", type=int, default=300)
    m.add_argument("--lr_warmup", type=int, default=50, help="--warmup_steps of the runs (default: 50)")
    m.add_argument("--eval_interval", type=int, default=50, help="a multiple of --sync_every (default: 50)")
    m.add_argument("--eval_sequences", type=int, default=64)
    m.add_argument("--seed", type=int, default=1337)
    m.add_argument("--threads", type=int, default=1, help="torch threads per rank (default: 1)")
    m.add_argument("--train_args", default="", help="more `hvdlm train` flags, one string")
    l_ = s.add_argument_group("where it runs")
    l_.add_argument("--hosts", default="", help="horovodrun -H, e.g. hvdnode1:1,hvdnode2:1 (default: this machine)")
    l_.add_argument("--ranks", type=int, default=2, help="ranks without --hosts (default: 2)")
    l_.add_argument("--controller", default="gloo", choices=["gloo", "mpi"])
    l_.add_argument("--via", default="", help="prefix that runs horovodrun elsewhere, e.g. "
                                              "'bash slurm/cluster.sh exec hvdnode1'")
    l_.add_argument("--launcher_args", default="", help="more horovodrun flags, one string")
    l_.add_argument("--slow_cmd", default="", help="shell command shaping the link; {rate} is replaced")
    l_.add_argument("--heal_cmd", default="", help="shell command undoing --slow_cmd")
    l_.add_argument("--tx_bytes_cmd", default="", help="shell command printing a host's transmitted bytes; {host} "
                                                       "is replaced (without it bytes are computed, and labelled so)")
    o = s.add_argument_group("measurement")
    o.add_argument("--warmup", type=int, default=10, help="steps before the byte count starts (default: 10)")
    o.add_argument("--poll", type=float, default=0.2, help="seconds between looks at the run's progress")
    o.add_argument("--timeout", type=float, default=7200, help="seconds one run may take")
    o.add_argument("--out_dir", default="out/bench/sync")
    o.add_argument("--reuse", action="store_true", help="keep the runs an interrupted benchmark finished "
                                                       "(same flags) instead of running them again")
    s.set_defaults(func=run)
