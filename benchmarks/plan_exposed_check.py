"""`hvdlm plan`'s exposed exchange time against the test cluster's recorded runs (issue 32).

check.py (benchmarks/results/plan/cluster/) compares step times, but each prediction is given its
run's own compute, so most of a step is right by construction. This compares what plan exists to
predict: the exposed exchange, measured = step - compute (check.py's window and definitions), and
predicted = plan's step - compute - the tbf credit (check.py's `tbf_credit`, a test-link effect).

Four calibrations of the link; A-C fitted on the 2-host free-link rows only (every other row is a
prediction), D fitted on no training run at all:
  A  check.py's: one per-message latency and the free link's rate, fitted on step time;
  B  the same two constants, fitted on the exposed time (log error);
  C  Horovod/Gloo's per-collective overhead (a constant per allreduce, alltoall and allgather call),
     apart from the per-hop latency (x the ring's 2(N-1) hops) and the free link's rate;
  D  what a user does before a plan: the allreduce measured alone on the free link at the host
     count (exchange_probe.py through probe.sh: an fp32 allreduce of 64 KiB and 8 MiB, the median of
     3), fitted by plan's own --calibrate (hvdlm/plan/calibrate.py: latency as 2(N-1) hops, the bus
     bandwidth); a host count the probe lacks takes the fit over the counts it has (overhead and
     hop latency apart, the bandwidth of the most hosts), as plan does with several files. On a
     shaped link the bandwidth is the tc rate, for every calibration.
plan has no overhead term: C adds it here, by wrapping plan's network functions (`overhead`).

Each prediction is given its run's compute and that compute's spread from step to step (check.py:
plan's --jitter_ms), so plan's wait for the slowest rank (hvdlm/plan/straggler.py) is in every
row; the last column is that term, and the summary also counts the rows without it.

The runs of 2026-12-03 (runs/) predate ec12f59 (the stop check read `check_lag` steps after it is
asked); at their step times (75-2400 ms, above two cycles) the old blocking term and today's are
equal in every row. The rerun of 2026-12-07 (runs-1207/, `OUT=... campaign.sh`) ran today's loop.

Noise: each run's std error of its mean exposed time from its own steps; under local_sgd/diloco
the steps are stratified by their place in the period (the syncing step is not noise). A row is
"within noise" when |predicted - measured| <= max(25% of measured, 2 x that error). The plain 25%
count is the issue's criterion. Pure computation over the recorded files, about a minute:
    .venv/bin/python benchmarks/plan_exposed_check.py [--runs DIR --probe FILE] > .../exposed.md
(the rerun: --runs benchmarks/results/plan/cluster/runs-1207 --probe .../probe-1207.jsonl). With
--bench FILE..., also calibration E on the free-link rows: `hvdlm bench allreduce --dtypes fp32,fp16`
on the free link (bench-allreduce-1207/: 2 and 4 hosts) through plan's own --calibrate, per dtype and
with fp32's fit alone. With --against RUNS PROBE, how far the measurement repeats: another campaign
of the same settings beside this one (the measured exposed times, and D against each and their mean).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from statistics import variance

sys.path.insert(0, str(Path(__file__).resolve().parent / "results" / "plan" / "cluster"))
import check  # noqa: E402  the recorded runs' reading, window and tbf credit (one place)

from hvdlm.plan import calibrate, network, straggler  # noqa: E402
from hvdlm.plan.methods import predict  # noqa: E402
from hvdlm.plan.network import Link  # noqa: E402

EVERY_STEP = ("none", "fp16", "bf16", "powersgd")
ORDER = {"free": 0, "1gbit": 1, "100mbit": 2, "10mbit": 3}


@contextmanager
def overhead(o: float):
    """plan with ``o`` seconds added to every allreduce, allgather and alltoall (calibration C).
    A wrapper, not a change to hvdlm/plan: C did not predict better (RESULTS.md)."""
    saved = network.ring_allreduce, network.ring_allgather, network.alltoall
    ar, ag, a2a = saved
    network.ring_allreduce = lambda b, n, link: ar(b, n, link) + (o if n > 1 else 0.0)
    network.ring_allgather = lambda b, n, link: ag(b, n, link) + (o if n > 1 else 0.0)
    network.alltoall = lambda c, b: a2a(c, b) + (o if c.ranks > 1 else 0.0)
    try:
        yield
    finally:
        network.ring_allreduce, network.ring_allgather, network.alltoall = saved


def predicted(r: dict, cal: tuple) -> float:
    """plan's exposed exchange for run ``r`` under calibration (latency, free bw, overhead)."""
    lat, bw, o = cal
    with overhead(o):
        return check.predicted_step(r, lat, bw)[1] - r["compute"]


def printed_error(r: dict, exposed: float) -> float:
    """plan's printed +- of run ``r``'s predicted ``exposed`` time: the CPU path's 20% of it
    (``network.CPU_UNCERTAINTY``) and half a cycle per blocking collective (``methods.cycles``, which
    depends on the method and the cycles, not on the link)."""
    return network.CPU_UNCERTAINTY * exposed + check.prediction(r, 1e-3, 1e9).cycle_error


def measured(r: dict) -> float:
    return r["step"] - r["compute"]


def noise(r: dict) -> float:
    """Std error of the mean exposed time, stratified by the step's place in the sync period."""
    each = [s - c for s, c in zip(r["step_each"], r["compute_each"])]
    h = 1 if r["flags"]["method"] in EVERY_STEP else check.H
    strata = [each[i::h] for i in range(h)]
    return math.sqrt(sum(variance(x) / len(x) for x in strata)) / h


def stragglers(r: dict) -> float:
    """plan's wait for the slowest rank in run ``r``'s prediction (every run logs every step, so every
    step blocks: hvdlm/plan/straggler.py at a gap of one step)."""
    return straggler.wait(r["spread"], r["hosts"])


def fit(rows: list[dict], with_overhead: bool) -> tuple:
    """(latency, free bw, overhead) minimizing the squared log error of the exposed time over
    ``rows``: a grid in quarter decades, then one in sixteenths around its best."""
    def err(cal):
        return sum(math.log(max(predicted(r, cal), 1e-6) / measured(r)) ** 2 for r in rows)

    def grid(lats, bws, ovs):
        return min(((lat, bw, o) for lat in lats for bw in bws for o in ovs), key=err)

    quarter = [10 ** (e / 4) for e in range(17)]  # 1 .. 1e4
    ovs = [0.0] + [q * 1e-6 for q in quarter] if with_overhead else [0.0]
    lat, bw, o = grid([q * 1e-6 for q in quarter], [q * 1e7 for q in quarter], ovs)  # 1us-10ms, 0.08-800 Gbit/s

    def near(x):
        return [x * 10 ** (j / 16) for j in range(-4, 5)]
    return grid(near(lat), near(bw), (near(o) if o else [0.0] + [1e-6 * 10 ** (j / 16) for j in range(0, 65, 4)])
                if with_overhead else [0.0])


def probed(path: Path, stat: str = "median_s") -> dict:
    """{hosts: (hop latency, bus bandwidth, overhead)} from exchange_probe's fp32 allreduce on the free
    link, through plan's --calibrate fit: each host count alone, and None for the fit over all."""
    measured = {}
    for line in open(path):
        r = json.loads(line)
        if r["wire"] == "none" and r["label"].endswith(" free"):
            m = measured.setdefault(r["ranks"], [])
            m.append((r["fp32_bytes"], r[stat]))
    ms = {n: calibrate.Measured(n, n, tuple(points), f"{path.name} {n} hosts") for n, points in measured.items()}
    out = {}
    for key, group in [(n, [m]) for n, m in ms.items()] + [(None, list(ms.values()))]:
        cal = calibrate.calibrate(group)
        out[key] = (cal.hop, cal.peak, cal.overhead)
    return out


def through_calibrate(r: dict, cal) -> float:
    """plan's exposed exchange for run ``r`` with its allreduce from ``--calibrate`` (``cal``, a
    calibrate.Calibration) and hvdlm's own exchange on the fit's link, as `hvdlm plan --calibrate` does."""
    check.prediction(r, 1e-3, 1e9)  # the run's Setting, built once
    s = r["setting"]
    link = Link(cal.peak, cal.hop)
    cluster = replace(s.cluster, inter=link, intra=link, measured=cal)
    return predict(replace(s, cluster=cluster), check.method_of(r["flags"]["method"])).exposed


def bench_check(res: list, files: list[str]) -> None:
    """E: `hvdlm bench allreduce --dtypes fp32,fp16` files of the free link, through plan's own
    --calibrate, per dtype and with fp32's fit alone; the free-link rows only (the bench measured no
    shaped link)."""
    cal = calibrate.from_files(files)
    fp32 = replace(cal, others=())
    free = [x for x in res if x[0]["flags"]["link"] == "free"]
    print(f"\nE, {' + '.join(Path(f).name for f in files)} through --calibrate ({', '.join(cal.dtypes)}), "
          f"the {len(free)} free-link rows:\n")
    print("| model | hosts | method | measured ms | D / meas | E fp32 fit alone / meas | E per dtype / meas |")
    print("|---|---|---|---|---|---|---|")
    counts = [0, 0, 0]
    for r, m, _, p, _, _ in free:
        e32, e = through_calibrate(r, fp32), through_calibrate(r, cal)
        for i, q in enumerate((p["D"], e32, e)):
            counts[i] += within(q, m, 0.25)
        f = r["flags"]
        print(f"| {f['preset']} | {r['hosts']} | {f['method']} | {m * 1e3:.1f} | {p['D'] / m:.2f} | {e32 / m:.2f} "
              f"| {e / m:.2f} |")
    print(f"\nWithin 25%, of {len(free)}: D {counts[0]}, E with fp32's fit alone {counts[1]}, E per dtype {counts[2]}.")


def key(r: dict) -> tuple:
    f = r["flags"]
    return f["preset"], r["hosts"], f["link"], f["method"]


def repeat_check(res: list, other: Path, other_probe: Path) -> None:
    """How far the measurement repeats: another campaign of the same settings (its own runs and
    probe), the two measured exposed times side by side, and D against each and their mean. A
    prediction cannot be within 25% of both where the two differ by more than 1.25 / 0.75."""
    here = check.RUNS
    check.RUNS = other.resolve()
    try:
        probe = probed(other_probe)
        second = {key(r): (measured(r), predicted(r, probe.get(r["hosts"], probe[None]))) for r in check.all_runs()}
    finally:
        check.RUNS = here
    pairs = [(x, second[key(x[0])]) for x in res if key(x[0]) in second]
    if not pairs:
        sys.exit(f"no setting of {other} is among the runs")
    n = len(pairs)
    agree = sum(within(m2, x[1], 0.25) for x, (m2, _) in pairs)
    agree_back = sum(within(x[1], m2, 0.25) for x, (m2, _) in pairs)
    both = sum(max(x[1], m2) <= 1.25 / 0.75 * min(x[1], m2) for x, (m2, _) in pairs)
    own1 = sum(within(x[3]["D"], x[1], 0.25) for x, _ in pairs)
    own2 = sum(within(p2, m2, 0.25) for _, (m2, p2) in pairs)
    mean = sum(within((x[3]["D"] + p2) / 2, (x[1] + m2) / 2, 0.25) for x, (m2, p2) in pairs)
    print(f"\nRepeated: {other.name} (probe {other_probe.name}), {n} settings in both campaigns. Within 25%:")
    print(f"- the second campaign's measured exposed time of the first's: {agree} of {n} (the first's of the "
          f"second's: {agree_back}); a value within 25% of both exists in {both}")
    print(f"- D (each campaign's own compute and probe): of the first {own1}, of the second {own2}, of their mean "
          f"(D's mean) {mean}")


def within(p: float, m: float, frac: float, floor: float = 0.0) -> bool:
    return abs(p - m) <= max(frac * m, floor)


def main() -> None:
    here = Path(__file__).resolve().parent / "results" / "plan" / "cluster"
    ap = argparse.ArgumentParser(description="plan's exposed exchange against the test cluster's runs")
    ap.add_argument("--runs", type=Path, default=here / "runs", help="a campaign's runs (default: those of 2026-12-03)")
    ap.add_argument("--probe", type=Path, default=here / "probe.jsonl", help="probe.sh's file (calibration D)")
    ap.add_argument("--probe_stat", default="median_s", choices=["median_s", "best_s"])
    ap.add_argument("--bench", nargs="*", default=[], metavar="JSON", help="hvdlm bench allreduce files of the "
                    "free link (calibration E, per dtype)")
    ap.add_argument("--against", nargs=2, type=Path, metavar=("RUNS", "PROBE"), help="another campaign of the "
                    "same settings and its probe: how far the measured exposed time repeats")
    args = ap.parse_args()
    check.RUNS = args.runs.resolve()
    runs = check.all_runs()
    if not runs:
        sys.exit(f"no runs under {check.RUNS}")
    runs.sort(key=lambda r: (r["flags"]["preset"] != "tiny", r["hosts"], ORDER[r["flags"]["link"]],
                             r["flags"]["method"] not in EVERY_STEP, r["flags"]["method"]))
    free2 = [r for r in runs if r["hosts"] == 2 and r["flags"]["link"] == "free"]
    fitted = {"A": (*check.fit([r for r in runs if r["hosts"] == 2]), 0.0), "B": fit(free2, False),
              "C": fit(free2, True)}
    probe = probed(args.probe, args.probe_stat)
    cals = {k: (lambda r, c=c: c) for k, c in fitted.items()}
    cals["D"] = lambda r: probe.get(r["hosts"], probe[None])
    print(f"Fitted on the {len(free2)} two-host free-link rows (per-message/per-hop latency, free link, "
          "per-collective overhead):\n")
    for k, (lat, bw, o) in fitted.items():
        print(f"- {k}: latency {lat * 1e6:.0f} us, free link {bw * 8 / 1e9:.2g} Gbit/s, overhead {o * 1e6:.0f} us")
    print(f"\nD, from {args.probe.name} ({args.probe_stat[:-2]} of each size), by plan's --calibrate fit:\n")
    for n, (lat, bw, o) in sorted(probe.items(), key=lambda kv: kv[0] or 99):
        print(f"- {f'{n} hosts' if n else 'other host counts (the fit over all)'}: hop latency {lat * 1e6:.0f} us, "
              f"bus bandwidth {bw * 8 / 1e9:.2g} Gbit/s, overhead {o * 1e6:.0f} us")
    print(f"\nRuns: {check.RUNS.relative_to(Path.cwd()) if check.RUNS.is_relative_to(Path.cwd()) else check.RUNS}\n")

    print("| model | hosts | link | method | steps | measured exposed ms | 2 x noise ms | A ms | A / meas "
          "| B ms | B / meas | C ms | C / meas | D ms | D / meas | of which the slowest rank ms |")
    print("|" + "---|" * 16)
    res = []  # (run, measured, noise, {cal: predicted}, straggler, D's printed +-)
    for r in runs:
        f, m, n = r["flags"], measured(r), noise(r)
        p = {k: predicted(r, cal(r)) for k, cal in cals.items()}
        res.append((r, m, n, p, stragglers(r), printed_error(r, p["D"])))

        def cell(k):
            mark = "" if within(p[k], m, 0.25) else (" ~" if within(p[k], m, 0.25, 2 * n) else " **")
            return f"{p[k] * 1e3:.1f} | {p[k] / m:.2f}{mark}"
        print(f"| {f['preset']} | {r['hosts']} | {f['link']} | {f['method']} | {r['steps']} | {m * 1e3:.1f} "
              f"| {2 * n * 1e3:.1f} | {cell('A')} | {cell('B')} | {cell('C')} | {cell('D')} | {res[-1][4] * 1e3:.1f} |")
    print("\n(** outside 25% and outside 2 x noise; ~ outside 25% but within 2 x noise)\n")

    def counts(rows, k, extra=lambda x: 0.0):
        """(within 25%, within max(25%, 2 x noise), within 20%, rows) of calibration k's predictions."""
        out = [0, 0, 0]
        for x in rows:
            _, m, n, p, _, _ = x
            q = p[k] + extra(x)
            out[0] += within(q, m, 0.25)
            out[1] += within(q, m, 0.25, 2 * n)
            out[2] += within(q, m, 0.20)
        return (*out, len(rows))

    def group(key):
        out = {}
        for x in res:
            out.setdefault(key(x[0]), []).append(x)
        return out
    print("Within 25% / within max(25%, 2 x noise) / within 20%, of the rows, by calibration:\n")
    print("| rows | n | A | B | C | D |\n|---|---|---|---|---|---|")
    for title, key in (("hosts", lambda r: f"{r['flags']['preset']} {r['hosts']}h"),
                       ("link", lambda r: r["flags"]["link"]), ("method", lambda r: r["flags"]["method"])):
        for name, rows in sorted(group(key).items(), key=lambda kv: ORDER.get(kv[0], 0)):
            print(f"| {title} {name} | {len(rows)} | "
                  + " | ".join("{}/{}/{}".format(*counts(rows, k)[:3]) for k in cals) + " |")
    held_out = [x for x in res if x[0]["hosts"] > 2]
    for k in cals:
        a, b, c, n = counts(res, k)
        h = counts(held_out, k)
        print(f"\n{k}: {a} of {n} within 25% (plain); {b} of {n} within max(25%, 2 x noise); {c} of {n} within 20%; "
              f"3-4 hosts: {h[0]} of {h[3]} within 25%, {h[1]} within noise")
    inside = sum(abs(x[3]["D"] - x[1]) <= x[5] for x in res)
    print(f"\nD within the +- plan prints (20% of the exposed time, half a cycle per blocking collective): "
          f"{inside} of {len(res)}.")
    a, b, _, n = counts(res, "D", extra=lambda x: -x[4])
    print(f"\nWithout plan's wait for the slowest rank (D less the last column): {a} of {n} within 25%, "
          f"{b} within max(25%, 2 x noise).")
    if args.bench:
        bench_check(res, args.bench)
    if args.against:
        repeat_check(res, *args.against)


if __name__ == "__main__":
    main()
