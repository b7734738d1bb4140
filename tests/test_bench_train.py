"""hvdlm bench train runs hvdlm and the DDP baseline for real and reports comparable figures."""

import json
import math
import os

import pytest

from hvdlm.bench.report import read_csv
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
    # the ratios take the right baseline row: 1 rank with all the cores, 1 rank with one rank's share
    assert hvd["vs_1_rank_all_cores"] == pytest.approx(hvd["tokens_per_s"] / rows[all_cores]["tokens_per_s"], rel=1e-6)
    assert hvd["scaling_efficiency"] == pytest.approx(hvd["tokens_per_s"] / (2 * rows[one_slice]["tokens_per_s"]),
                                                      rel=1e-6)
    # the ceiling of 2 ranks: two one-rank runs at once, each with half the batch
    two = rows[beside]
    assert (two["ranks"], two["micro_batch"], two["threads_per_rank"]) == (2, 2, half), two
    assert ddp["vs_side_by_side"] == pytest.approx(ddp["tokens_per_s"] / two["tokens_per_s"], rel=1e-6), ddp
    assert math.isnan(rows[one_slice]["vs_side_by_side"])  # 1 rank is not compared with 2
    assert (hvd["ranks"], hvd["micro_batch"], ddp["ranks"], ddp["micro_batch"]) == (2, 2, 2, 2)
    assert (rows[all_cores]["threads_per_rank"], rows[one_slice]["threads_per_rank"], hvd["threads_per_rank"]) == \
        (cores, half, half)
    # Horovod reports how long each step waited for its allreduce, within the step; DDP overlaps
    # the allreduce with backward and reports no wait
    assert math.isfinite(hvd["allreduce_wait_ms"]) and 0 < hvd["allreduce_wait_ms"] < hvd["step_ms"], hvd
    assert hvd["compute_ms"] < hvd["step_ms"], hvd
    assert math.isnan(ddp["allreduce_wait_ms"]), ddp
    # every run of every repeat is kept beside the table, and the table is printed and plotted
    meta = json.loads((out / "train.json").read_text())
    assert sorted(r["run"] for r in meta["meta"]["all_runs"]) == sorted(rows), meta
    # the bare PyTorch loop beside hvdlm on one rank with the same threads: step, wall and CPU time
    single, bare = rows[all_cores], rows[bare_name]
    assert single["bare_wall_ratio"] == pytest.approx(bare["wall_s"] / single["wall_s"], rel=1e-6)
    assert single["bare_step_ratio"] == pytest.approx(bare["step_ms"] / single["step_ms"], rel=1e-6)
    assert math.isnan(rows[hvd_name]["bare_step_ratio"])  # compared only at one rank
    assert (out / "train.png").stat().st_size > 1000
    printed = run.stdout.split("scaling eff.", 1)
    assert len(printed) == 2 and all(name in printed[1] for name in rows), run.stdout


def test_a_horovod_timeline_of_a_training_run_can_be_recorded(corpus, tmp_path):
    timeline = tmp_path / "timeline.json"
    check(launch("horovodrun-mpi", ["--timeline-filename", str(timeline), HVDLM, "train", "--data_dir", str(corpus),
                                    "--out_dir", str(tmp_path / "run"), *TINY, "--max_steps", "3"]))
    text = timeline.read_text()
    assert '"ph"' in text and "allreduce" in text.lower()  # Chrome trace events of the gradient allreduces
