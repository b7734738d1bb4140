"""`hvdlm plan` against the test cluster: the runs run.sh recorded, with plan's prediction beside each.

Each row is one real `hvdlm train` (runs/<model>-<hosts>h-<group>/runs/<link>-<method>/), every step
logged. Its measured step time (wall time between the records) and its compute (the recorded step
time minus the time the step waited for the exchange, ``allreduce_wait``) are means over a window
of whole sync periods: every-step methods from step 4
(PowerSGD from step 6, after its plain-allreduce start) to the step before the last; local_sgd and
diloco (H=10) steps 11-30, two whole periods. The prediction is plan's, at that measured compute
(so the 2 shared cores do not blur the check: 4 hosts on 2 cores compute at half speed, and plan is
told so), the spread of that compute from step to step (plan's --jitter_ms: every rank waits for the
slowest of the N, and 4 ranks on 2 cores spread widely), the tc rate of the link (free: the fitted
bandwidth) and the fitted per-message latency.

Calibration: the two constants (a message's latency, the free link's bandwidth) are fitted on the
2-host rows of the free link only (least squares of log(predicted / measured)); every shaped-link
row, and every 3- and 4-host row, is the check. Pure computation over the recorded files:
    python benchmarks/results/plan/cluster/check.py [--runs DIR] > benchmarks/results/plan/cluster/check.md
(DIR: another campaign's runs, e.g. campaign.sh's OUT; default runs/, the runs of 2026-12-03.)
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
import sys
from pathlib import Path
from statistics import mean, stdev

from hvdlm.cli import build_parser
from hvdlm.plan.command import setting
from hvdlm.plan.methods import Method, predict
from hvdlm.plan.network import Link
from hvdlm.units import parse_rate

RUNS = Path(__file__).resolve().parent / "runs"
MEM_BW = "4GB/s"  # copies on this machine's cores: the bound plan's --mem_bw takes (see the note below)
H, T = 10, 4  # run.sh's --sync_every and --overlap_steps
BURST = 256 * 1024  # slurm/cluster.sh's tbf burst ("256kb": tc's kb is 1024 bytes)


def method_of(name: str) -> Method:
    every = {"none": Method("none"), "fp16": Method("fp16"), "bf16": Method("bf16"),
             "powersgd": Method("powersgd", rank=4)}
    if name in every:
        return every[name]
    base, *rest = name.split("-")
    overlap = T if rest and rest[-1] == "overlap" else 0
    wire = rest[0] if rest and rest[0] != "overlap" else "none"
    return Method(base, every=H, wire=wire, overlap=overlap)


def measured(run: Path) -> dict | None:
    if not (run / "row.json").is_file():
        return None
    flags = json.loads((run / "row.json").read_text())["flags"]
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    train = {r["step"]: r for r in rows if r["kind"] == "train"}
    ended = {}  # step -> when its last record (train, or the evaluation after it) was written
    for r in rows:
        if r["kind"] in ("train", "eval"):
            ended[r["step"]] = r["time"]
    last = max(train)
    if flags["method"] in ("none", "fp16", "bf16", "powersgd"):
        window = range(6 if flags["method"] == "powersgd" else 4, last)
    else:
        window = range(H + 1, 3 * H + 1)
    # The wall time of each step: from the previous step's last record to this step's train record.
    # It holds what the runs' step_time left out before the loop counted the logged loss's average.
    steps = [train[s]["time"] - ended[s - 1] for s in window]
    computes = [train[s]["step_time"] - train[s]["allreduce_wait"] for s in window]
    step, compute = mean(steps), mean(computes)
    tx = json.loads((run / "row.json").read_text())["row"].get("bytes_per_step_tx")
    a, b = window.start - 1, window.stop - 1
    return {"flags": flags, "steps": f"{window.start}-{b}", "step": step, "compute": compute,
            "step_each": steps, "compute_each": computes,  # per step: benchmarks/plan_exposed_check.py's noise
            "spread": stdev(computes),  # this rank's compute from step to step: plan's --jitter_ms
            "sent": (train[b]["sync_bytes"] - train[a]["sync_bytes"]) / (b - a), "tx": tx}


def predicted_step(m: dict, latency: float, free_bw: float) -> tuple[object, float]:
    """plan's row, and its step time on the test link (the tbf bucket's credit taken off)."""
    row = prediction(m, latency, free_bw)
    return row, row.step - tbf_credit(m, row)


def prediction(m: dict, latency: float, free_bw: float):
    """plan's row for this run, at its measured compute (the Setting built once per run)."""
    f = m["flags"]
    if "setting" not in m:
        args = build_parser().parse_args([
            "plan", "--preset", f["preset"], "--vocab_size", "256", "--ranks", str(m["hosts"]),
            "--ranks_per_host", "1", "--global_batch_size", str(f["global_batch"]), "--step_ms", repr(m["compute"] * 1e3),
            "--cycle_ms", "1", "--periodic_cycle_ms", "20", "--mem_bw", MEM_BW, "--log_interval", "1",
            "--jitter_ms", repr(m["spread"] * 1e3)])
        m["setting"] = setting(args)[0]
    s = m["setting"]
    bw = free_bw if f["link"] == "free" else parse_rate(f["link"])
    link = Link(bw, latency)  # one rank a host: every hop crosses the link
    return predict(replace(s, cluster=replace(s.cluster, inter=link, intra=link)), method_of(f["method"]))


def tbf_credit(m: dict, row) -> float:
    """Seconds per step the test link's token bucket saves: `slurm/cluster.sh slow` shapes with tc tbf,
    burst 256 KiB, so a transfer that starts after the link idled goes at line rate for up to
    min(burst, idle x rate) bytes. Not a property of a real link: the check adds it, plan does not.
    Transfers per step: one (every-step methods: Horovod's buffers start during backward, so the
    link idled about a forward, a third of the compute; bf16 and PowerSGD exchange after backward);
    local_sgd/diloco one per H steps after H-1 idle steps, overlapped T slices per H, each after a
    step's compute."""
    link = m["flags"]["link"]
    if link == "free":
        return 0.0
    rate = parse_rate(link)
    method, compute = row.method, m["compute"]
    if method.name in ("none", "fp16"):
        transfers, idle = 1.0, compute / 3
    elif method.name in ("bf16", "powersgd"):
        transfers, idle = 1.0, compute
    elif method.overlap:
        transfers, idle = method.overlap / method.every, compute
    else:
        transfers, idle = 1 / method.every, (method.every - 1) * compute
    per_transfer = row.nic / transfers  # bytes a host sends in one transfer
    return transfers * min(BURST, idle * rate, per_transfer) / rate


def all_runs() -> list[dict]:
    out = []
    for run in sorted(RUNS.glob("*/runs/*")):
        if run.is_dir() and (m := measured(run)):
            m["hosts"] = len(m["flags"]["hosts"].split(","))
            out.append(m)
    return out


def fit(rows: list[dict]) -> tuple[float, float]:
    """(latency s, free-link bytes/s) minimizing the squared log error over the free-link ``rows``
    (where the exposed part is the latency, cycle and copy terms); a shaped link's rate is its tc rate."""
    latencies = [10 ** (e / 8) * 1e-6 for e in range(0, 33)]  # 1 us .. 10 ms
    bandwidths = [10 ** (e / 8) * 1e8 for e in range(0, 25)]  # 0.8 .. 80 Gbit/s
    free = [r for r in rows if r["flags"]["link"] == "free"]

    def err(lat, bw):
        return sum(math.log(predicted_step(r, lat, bw)[1] / r["step"]) ** 2 for r in free)

    return min(((lat, bw) for lat in latencies for bw in bandwidths), key=lambda x: err(*x))


def use_runs(argv: list[str]) -> None:
    """``--runs DIR``: read another campaign's runs (the folder campaign.sh's OUT wrote)."""
    global RUNS
    if argv[:1] == ["--runs"] and len(argv) == 2:
        RUNS = Path(argv[1]).resolve()
    elif argv:
        sys.exit("usage: check.py [--runs DIR]")


def main() -> None:
    use_runs(sys.argv[1:])
    runs = all_runs()
    if not runs:
        sys.exit(f"no runs under {RUNS}")
    latency, free_bw = fit([r for r in runs if r["hosts"] == 2])
    print(f"Fitted on the {sum(r['hosts'] == 2 and r['flags']['link'] == 'free' for r in runs)} two-host free-link "
          f"rows: per-message latency "
          f"{latency * 1e6:.0f} us; the free link {free_bw * 8 / 1e9:.2g} Gbit/s. Memory copies at {MEM_BW}.\n")
    print("| model | hosts | link | method | steps | measured step ms | its compute ms | plan: exposed ms "
          "| plan: step ms | tbf credit ms | predicted step ms | predicted / measured | sent/step (hvdlm) "
          "| plan | NIC tx/step | plan |")
    print("|" + "---|" * 16)
    order = {"free": 0, "1gbit": 1, "100mbit": 2, "10mbit": 3}
    methods = ["none", "fp16", "bf16", "powersgd", "local_sgd", "diloco", "diloco-bf16", "diloco-int8", "diloco-overlap"]
    ratios = []
    for r in sorted(runs, key=lambda r: (r["flags"]["preset"] != "tiny", r["hosts"], order[r["flags"]["link"]],
                                         methods.index(r["flags"]["method"]))):
        f = r["flags"]
        p, step = predicted_step(r, latency, free_bw)
        ratio = step / r["step"]
        ratios.append((ratio, f"{f['preset']} {r['hosts']}h {f['link']} {p.method.label}"))
        flag = "" if abs(ratio - 1) <= 0.2 else " **"
        tx = f"{r['tx'] / 1e6:.3f}M" if r["tx"] else "-"
        print(f"| {f['preset']} | {r['hosts']} | {f['link']} | {p.method.label} | {r['steps']} | {r['step'] * 1e3:.0f} "
              f"| {r['compute'] * 1e3:.0f} | {p.exposed * 1e3:.0f} | {p.step * 1e3:.0f} | "
              f"{(p.step - step) * 1e3:.0f} | {step * 1e3:.0f} | {ratio:.2f}{flag} "
              f"| {r['sent'] / 1e6:.3f}M | {p.sent / 1e6:.3f}M | {tx} | {p.nic / 1e6:.3f}M |")
    print("\npredicted / measured step time, by method (the rows above):\n")
    labels = [method_of(m).label for m in methods]
    print("| model | hosts | link | " + " | ".join(labels) + " |")
    print("|" + "---|" * (3 + len(labels)))
    cells = {}
    for x, what in ratios:
        model, hosts, link, label = what.split(" ", 3)
        cells.setdefault((model, hosts, link), {})[label] = x
    for (model, hosts, link), got in cells.items():
        print(f"| {model} | {hosts[:-1]} | {link} | " + " | ".join(
            (f"**{got[lab]:.2f}**" if abs(got[lab] - 1) > 0.2 else f"{got[lab]:.2f}") if lab in got else "-"
            for lab in labels) + " |")
    inside = sum(abs(x - 1) <= 0.2 for x, _ in ratios)
    print(f"\n{inside} of {len(ratios)} rows within 20%; outside: "
          + ("; ".join(f"{what} {x:.2f}" for x, what in ratios if abs(x - 1) > 0.2) or "none"))


if __name__ == "__main__":
    main()
