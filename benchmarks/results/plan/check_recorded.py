"""A first look (not the calibration): `hvdlm plan` against the shaped-link runs already recorded on
the 2-host test cluster (benchmarks/results/sync/runs/, RESULTS.md "Communication on a slow link":
mini, 2 hosts x 1 rank, Gloo, global batch 12). Each run's compute is its own (step time minus its
allreduce wait, from its metrics.jsonl: the shared cores do not blur the check); the link is the
tc rate it ran at, with an assumed 100 us per message. Those runs predate hvdlm's 20 ms periodic
cycle: Horovod's 1 ms was in force. Pure computation. Run from the repository root:
    python benchmarks/results/plan/check_recorded.py > benchmarks/results/plan/check_recorded.md
"""

from pathlib import Path

from hvdlm.bench.train import RunSpec, figures
from hvdlm.cli import build_parser
from hvdlm.plan.command import setting
from hvdlm.plan.methods import Method, predict

RUNS = Path("benchmarks/results/sync/runs")
METHODS = {"none": Method("none"), "fp16": Method("fp16"), "bf16": Method("bf16"),
           "powersgd": Method("powersgd", rank=4), "local_sgd": Method("local_sgd", every=50),
           "diloco": Method("diloco", every=50), "diloco-bf16": Method("diloco", every=50, wire="bf16")}
RATES = {"100mbit": "100mbit", "10mbit": "10mbit"}

print("| link | method | steps | measured step ms | its compute ms | predicted exposed ms | predicted step ms "
      "| predicted / measured |")
print("|" + "---|" * 8)
for rate_name, rate in RATES.items():
    for name, method in METHODS.items():
        run = RUNS / f"{rate_name}-{name}"
        if not run.is_dir():
            continue
        # PowerSGD's first 50 steps (the lr warmup) are a plain fp32 allreduce: measured after them
        warmup = 52 if name == "powersgd" else 2
        measured = figures(RunSpec(name, [], 2, 1), run, warmup=warmup, wall=0, cpu=0)
        args = build_parser().parse_args([
            "plan", "--preset", "mini", "--vocab_size", "256", "--ranks", "2", "--ranks_per_host", "1",
            "--global_batch", "12", "--metrics", str(run), "--link", f"{rate},100us", "--cycle_ms", "1",
            "--periodic_cycle_ms", "1"])
        s, _, _ = setting(args)
        row = predict(s, method)
        steps = sum(1 for line in open(run / "metrics.jsonl") if '"train"' in line)
        print(f"| {rate_name} | {method.label} | {steps} | {measured['step_ms']:.0f} | {row.compute * 1e3:.0f} | "
              f"{row.exposed * 1e3:.0f} | {row.step * 1e3:.0f} | {row.step * 1e3 / measured['step_ms']:.2f} |")
