"""hvdlm bench train runs hvdlm and the DDP baseline for real and reports comparable figures."""

import json
import math
import os

import pytest

from hvdlm.bench.output import read_csv
from support.launch import HVDLM, TINY, check, launch


def test_bench_train_compares_horovod_with_ddp_and_one_rank(corpus, tmp_path):
    out = tmp_path / "bench"
    run = check(launch("single", [HVDLM, "bench", "train", "--data_dir", str(corpus), "--preset", "tiny",
                                  "--block_size", "32", "--global_batch_size", "4", "--steps", "4", "--warmup", "2",
                                  "--repeats", "1", "--runs", "single,single-1,side-by-side,bare,horovod-gloo,ddp",
                                  "--out_dir", str(out)], timeout=400))
    # the rows, named for what ran on this machine: all the cores this process may use, and 2 ranks
    # each with half of them
    cores = len(os.sched_getaffinity(0))
    half = max(1, cores // 2)
    all_cores, one_slice = f"1 rank x {cores} threads", f"1 rank x {half} thread(s)"
    hvd_name, ddp_name, bare_name = f"Horovod Gloo 2 x {half}", f"DDP gloo 2 x {half}", f"bare PyTorch 1 x {cores}"
    beside = f"2 x (1 rank x {half}) side by side"
    table = read_csv(out / "train.csv")
    rows = {r["run"]: r for r in table}
    assert [r["run"] for r in table] == [all_cores, one_slice, beside, bare_name, hvd_name, ddp_name], run.output
    for r in table:
        assert r["global_batch"] == 4, r
        for figure in ("tokens_per_s", "step_ms", "compute_ms", "wall_s", "cpu_s"):
            assert math.isfinite(r[figure]) and r[figure] > 0, (figure, r)
        # the loop's tokens/s against the documented step: --global_batch sequences of --block_size
        # tokens (side by side is two runs of half the batch, their tokens/s summed)
        if r["run"] != beside:
            assert r["tokens_per_s"] * r["step_ms"] / 1e3 == pytest.approx(4 * 32, rel=1e-3), r
        # a run's 4 steps happen within its wall time, and its children's CPU time within its cores
        assert r["wall_s"] >= 4 * r["step_ms"] / 1e3, r
        assert r["cpu_s"] <= r["wall_s"] * cores * 1.05 + 0.5, (r, cores)
    hvd, ddp = rows[hvd_name], rows[ddp_name]
    # the ceiling of 2 ranks: two one-rank runs at once, each with half the batch
    two = rows[beside]
    assert (two["ranks"], two["micro_batch"], two["threads_per_rank"]) == (2, 2, half), two
    assert math.isnan(rows[one_slice]["vs_side_by_side"])  # 1 rank is not compared with 2
    assert (hvd["ranks"], hvd["micro_batch"], ddp["ranks"], ddp["micro_batch"]) == (2, 2, 2, 2)
    assert (rows[all_cores]["threads_per_rank"], rows[one_slice]["threads_per_rank"], hvd["threads_per_rank"]) == \
        (cores, half, half)
    # Horovod reports how long each step waited for its allreduce, within the step; DDP overlaps
    # the allreduce with backward and reports no wait
    assert math.isfinite(hvd["allreduce_wait_ms"]) and 0 < hvd["allreduce_wait_ms"] < hvd["step_ms"], hvd
    assert math.isnan(ddp["allreduce_wait_ms"]), ddp
    # every run of every repeat is kept beside the table, and the table is printed and plotted
    meta = json.loads((out / "train.json").read_text())
    assert sorted(r["run"] for r in meta["meta"]["all_runs"]) == sorted(rows), meta
    # the bare PyTorch loop beside hvdlm on one rank with the same threads: step, wall and CPU time
    # (the ratios' arithmetic: test_figures_and_ratios_by_hand)
    assert math.isfinite(rows[all_cores]["bare_step_ratio"]) and math.isnan(rows[hvd_name]["bare_step_ratio"])
    assert (out / "train.png").stat().st_size > 1000
    printed = run.stdout.split("scaling eff.", 1)
    assert len(printed) == 2 and all(name in printed[1] for name in rows), run.stdout


def test_a_horovod_timeline_of_a_training_run_can_be_recorded(corpus, tmp_path):
    timeline = tmp_path / "timeline.json"
    check(launch("horovodrun-mpi", ["--timeline-filename", str(timeline), HVDLM, "train", "--data_dir", str(corpus),
                                    "--out_dir", str(tmp_path / "run"), *TINY, "--max_steps", "3"]))
    text = timeline.read_text()
    assert '"ph"' in text and "allreduce" in text.lower()  # Chrome trace events of the gradient allreduces


def test_figures_and_ratios_by_hand(tmp_path):
    """A run's row from its metrics.jsonl, and the ratios between rows, against values worked out by
    hand from made-up runs."""
    from hvdlm.bench.train import RunSpec, add_ratios, figures

    # 128 tokens a step; after 1 warm-up step: step times 0.1 and 0.3 s (mean 0.2), waits 0.02 and 0.08 (mean 0.05)
    lines = [{"kind": "train", "step": 1, "step_time": 9.0, "tokens_per_s": 128 / 9.0, "allreduce_wait": 1.0},
             {"kind": "train", "step": 2, "step_time": 0.1, "tokens_per_s": 1280.0, "allreduce_wait": 0.02},
             {"kind": "train", "step": 3, "step_time": 0.3, "tokens_per_s": 128 / 0.3, "allreduce_wait": 0.08},
             {"kind": "summary", "global_batch": 4, "micro_batch": 2, "grad_accum": 1}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    row = figures(RunSpec("r", [], 2, 1), tmp_path, warmup=1, wall=2.0, cpu=3.0)
    assert row["step_ms"] == pytest.approx(200) and row["compute_ms"] == pytest.approx(150)
    assert row["allreduce_wait_ms"] == pytest.approx(50) and row["tokens_per_s"] == pytest.approx(640)
    assert row["tokens_per_s_per_rank"] == pytest.approx(320)

    def r(run, ranks, threads, tps, repeat=1, step_ms=10.0, wall=10.0, cpu=20.0):
        return {"run": run, "ranks": ranks, "threads_per_rank": threads, "tokens_per_s": tps, "repeat": repeat,
                "step_ms": step_ms, "wall_s": wall, "cpu_s": cpu}

    # 4 cores, 2 ranks: all cores 1000 tokens/s, one rank of 2 cores 600, 2 ranks 1000, side by side
    # 1100 and 900 in two repeats where the 2 ranks did 1000 and 990; bare (4 threads) 8 ms, 9 s wall
    rows = [r("all", 1, 4, 1000), r("slice", 1, 2, 600), r("2 ranks", 2, 2, 1000), r("2 ranks", 2, 2, 990, 2),
            r("2 x side by side", 2, 2, 1100), r("2 x side by side", 2, 2, 900, 2),
            r("bare PyTorch", 1, 4, 1250, step_ms=8.0, wall=9.0, cpu=18.0)]
    table = [dict(x) for x in rows if x["repeat"] == 1]
    add_ratios(table, rows, cores=4, ranks=2)
    got = {x["run"]: x for x in table}
    assert got["2 ranks"]["vs_1_rank_all_cores"] == pytest.approx(1.0)
    assert got["2 ranks"]["scaling_efficiency"] == pytest.approx(1000 / 1200)
    assert got["2 ranks"]["vs_side_by_side"] == pytest.approx((1000 / 1100 + 990 / 900) / 2)  # the median of 2
    assert got["slice"]["vs_1_rank_all_cores"] == pytest.approx(0.6) and math.isnan(got["slice"]["vs_side_by_side"])
    assert got["all"]["bare_step_ratio"] == pytest.approx(0.8) and got["all"]["bare_wall_ratio"] == pytest.approx(0.9)
    assert got["all"]["bare_cpu_ratio"] == pytest.approx(0.9) and math.isnan(got["2 ranks"]["bare_step_ratio"])
